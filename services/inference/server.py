"""The Inference gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path

import grpc

from protos import common_pb2, inference_pb2, inference_pb2_grpc, training_pb2, training_pb2_grpc
from services.inference import store
from services.inference.fine_tuned import FineTuned, read_fine_tuned
from services.inference.generation import GeneratedToken, Generation, Generator
from services.inference.settings import InferenceSettings
from services.shared.errors import FailedPrecondition, NotImplementedYet
from services.shared.models import ModelStore
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import error_from_rpc, open_channel, tenant_metadata, tenant_of


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, runtime: Runtime, generator: Generator, registry: training_pb2_grpc.TrainingStub):
        self._db = runtime.db
        self._settings: InferenceSettings = runtime.settings  # type: ignore[assignment]
        self._generator = generator
        self._registry = registry

    async def _fine_tuned(self, model_id: str, tenant: str) -> FineTuned | None:
        """A fine-tuned model's registry entry, asked of the training service for the caller's
        tenant (another tenant's model is not found there)."""
        if not model_id.startswith("ft:"):
            return None
        try:
            response = await self._registry.GetModel(training_pb2.GetModelRequest(model_id=model_id),
                                                     metadata=tenant_metadata(tenant), timeout=30)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, service="training") from None
        model = response.model
        if model.provider_model:
            raise NotImplementedYet(f"{model_id} was trained on a provider, which serves it as "
                                    f"{model.provider_model}; the 'openai' backend that would call it is not "
                                    "built yet", param="model")
        if not model.available:
            raise FailedPrecondition(f"{model_id} cannot be served: {model.unavailable_reason}", param="model",
                                     code="model_not_available")
        return await asyncio.to_thread(read_fine_tuned, model.id, model.base_model, model.path)

    async def _generate(self, request, context, **streaming) -> Generation:
        fine_tuned = await self._fine_tuned(request.model, tenant_of(context))
        return await asyncio.to_thread(
            self._generator.generate,
            request.model,
            fine_tuned=fine_tuned,
            messages=[{"role": m.role, "content": m.content} for m in request.messages] or None,
            prompt=request.prompt or None,
            max_tokens=request.max_tokens or self._settings.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p or 1.0,  # 0 means no nucleus cut-off (inference.proto)
            seed=request.seed if request.HasField("seed") else None,
            stop=list(request.stop),
            **streaming,
        )

    async def _log(self, context, model: str, generation: Generation, started: float, *,
                   completion_id: str | None = None, created: int | None = None) -> tuple[str, int]:
        completion_id = completion_id or f"cmpl-{secrets.token_hex(12)}"
        created = created or int(time.time())
        async with self._db.transaction() as session:
            await store.log_completion(
                session,
                id=completion_id,
                tenant=tenant_of(context),
                model=model,
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                finish_reason=generation.finish_reason,
                latency_ms=(time.perf_counter() - started) * 1000,
                created_at=created,
            )
        return completion_id, created

    async def Generate(self, request, context):
        started = time.perf_counter()
        generation = await self._generate(request, context)
        completion_id, created = await self._log(context, request.model, generation, started)
        return inference_pb2.GenerateResponse(
            completion_id=completion_id, model=request.model, text=generation.text,
            finish_reason=generation.finish_reason, usage=_usage(generation), created=created,
            tokens=_tokens(generation.tokens), stop_sequence=generation.stop_sequence,
        )

    async def GenerateStream(self, request, context):
        """Text pieces as the generator decides them; the id, logged at the end, is chosen first."""
        started = time.perf_counter()
        completion_id, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[str, list[GeneratedToken]]] = asyncio.Queue()
        cancel = threading.Event()

        def on_text(text: str, tokens: list[GeneratedToken]) -> None:  # the generator's thread
            loop.call_soon_threadsafe(pieces.put_nowait, (text, tokens))

        def chunk(piece: tuple[str, list[GeneratedToken]], **last) -> inference_pb2.GenerateChunk:
            text, tokens = piece
            return inference_pb2.GenerateChunk(completion_id=completion_id, model=request.model, created=created,
                                               text=text, tokens=_tokens(tokens), **last)

        generating = asyncio.ensure_future(self._generate(request, context, on_text=on_text, cancel=cancel))
        try:
            while not generating.done():
                waiting = asyncio.ensure_future(pieces.get())
                await asyncio.wait({waiting, generating}, return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    yield chunk(waiting.result())
                else:
                    waiting.cancel()
            generation = generating.result()  # a failure is raised here, before or between chunks
            while not pieces.empty():  # the generator's last pieces came before its result
                yield chunk(pieces.get_nowait())
            await self._log(context, request.model, generation, started, completion_id=completion_id,
                            created=created)
            yield chunk(("", []), finish_reason=generation.finish_reason, usage=_usage(generation),
                        stop_sequence=generation.stop_sequence)
        finally:
            cancel.set()  # the client went away (or we are done): free the model for the next request
            generating.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no warning


def _tokens(tokens) -> list[inference_pb2.GeneratedToken]:
    return [inference_pb2.GeneratedToken(id=t.id, text=t.text, logprob=t.logprob, special=t.special) for t in tokens]


def _usage(generation: Generation) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                            total_tokens=generation.prompt_tokens + generation.completion_tokens)


async def build(runtime: Runtime) -> ServiceParts:
    generator = Generator(ModelStore(runtime.settings))
    training = open_channel(runtime.settings.training_addr, runtime.settings)
    registry = training_pb2_grpc.TrainingStub(training)

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(runtime, generator, registry), server)
        return [inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name]

    return ServiceParts(register=register, on_close=training.close)


DEFINITION = ServiceDefinition(
    name="inference",
    settings_class=InferenceSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
