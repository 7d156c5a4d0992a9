"""The Inference gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import grpc

from protos import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference import store
from services.inference.generation import Generator
from services.inference.settings import InferenceSettings
from services.shared.models import ModelStore
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import tenant_of


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, runtime: Runtime, generator: Generator):
        self._db = runtime.db
        self._settings: InferenceSettings = runtime.settings  # type: ignore[assignment]
        self._generator = generator

    async def Generate(self, request, context):
        started = time.perf_counter()
        generation = await asyncio.to_thread(
            self._generator.generate,
            request.model,
            messages=[{"role": m.role, "content": m.content} for m in request.messages] or None,
            prompt=request.prompt or None,
            max_tokens=request.max_tokens or self._settings.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p or 1.0,  # 0 means no nucleus cut-off (inference.proto)
            seed=request.seed if request.HasField("seed") else None,
            stop=list(request.stop),
        )
        completion_id = f"cmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        async with self._db.transaction() as session:
            await store.log_completion(
                session,
                id=completion_id,
                tenant=tenant_of(context),
                model=request.model,
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                finish_reason=generation.finish_reason,
                latency_ms=(time.perf_counter() - started) * 1000,
                created_at=created,
            )
        return inference_pb2.GenerateResponse(
            completion_id=completion_id,
            model=request.model,
            text=generation.text,
            finish_reason=generation.finish_reason,
            usage=common_pb2.Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                total_tokens=generation.prompt_tokens + generation.completion_tokens,
            ),
            created=created,
        )


async def build(runtime: Runtime) -> ServiceParts:
    generator = Generator(ModelStore(runtime.settings))

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(runtime, generator), server)
        return [inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name]

    return ServiceParts(register=register)


DEFINITION = ServiceDefinition(
    name="inference",
    settings_class=InferenceSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
