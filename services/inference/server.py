"""The Inference gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc

from protos import (
    common_pb2,
    dataprep_pb2,
    dataprep_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from services.inference import events, store
from services.inference.completion_log import CompletionLog, choice_id, new_completion_id
from services.inference.deployments import Deployment, Deployments
from services.inference.fine_tuned import FineTuned, read_fine_tuned
from services.inference.generation import Generation, Generator, check_choices, check_request
from services.inference.remote import OpenAIBackend, TgiBackend
from services.inference.settings import InferenceSettings
from services.inference.streaming import Mailbox, Piece, Pieces
from services.inference.vllm_backend import VllmGenerator
from services.shared.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.shared.models import ModelStore
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import error_from_rpc, open_channel, tenant_metadata, tenant_of

log = logging.getLogger(__name__)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, runtime: Runtime, generator: Generator | VllmGenerator, registry: training_pb2_grpc.TrainingStub,
                 dataprep: dataprep_pb2_grpc.DataPrepStub | None = None):
        self._db = runtime.db
        self._models = ModelStore(runtime.settings)
        self.deployments = Deployments(runtime.db, self._check_version, runtime.relay.poke)
        self._settings: InferenceSettings = runtime.settings  # type: ignore[assignment]
        self._generator = generator
        self._registry = registry
        self._dataprep = dataprep  # redacts the texts the completion log keeps (log_texts "redacted")
        settings = self._settings
        self._log = CompletionLog(runtime.db, texts=settings.log_texts, price_per_hour_usd=settings.price_per_hour_usd,
                                  redact=self._redact)
        self._remotes = {model_id: (TgiBackend if remote.backend == "tgi" else OpenAIBackend)(
                             remote.base_url, remote.api_key.get_secret_value())
                         for model_id, remote in settings.remote_models.items()}
        self._provider = (OpenAIBackend(settings.provider_base_url, settings.provider_api_key.get_secret_value())
                          if settings.provider_base_url else None)
        self._admitted = 0  # requests generating or waiting for their model
        # Each admitted request waits for its answer in a thread of its own: asyncio's default pool
        # (cores + 4 threads) would keep requests past that out of the batch.
        self._threads = ThreadPoolExecutor(max_workers=settings.max_queued_requests, thread_name_prefix="generate")
        self._pending_logs: set[asyncio.Task] = set()  # log writes of streams whose client left
        self._mailbox = Mailbox(asyncio.get_running_loop())  # made in build(): the loop that serves the streams

    def remotes(self) -> list[OpenAIBackend | TgiBackend]:
        return list(self._remotes.values())

    @property
    def provider(self) -> OpenAIBackend | None:
        return self._provider

    async def _route(self, model_id: str, tenant: str) -> FineTuned | tuple[OpenAIBackend | TgiBackend, str] | None:
        """Who answers `model_id`: a remote (the backend and its name for the model there), a
        fine-tuned model served here, or (None) a base model served here. Fine-tuned models are
        asked of the training service's registry for the caller's tenant (another tenant's model
        is not found there)."""
        if model_id in self._remotes:
            return self._remotes[model_id], self._settings.remote_models[model_id].model
        if not model_id.startswith("ft:"):
            return None
        try:
            response = await self._registry.GetModel(training_pb2.GetModelRequest(model_id=model_id),
                                                     metadata=tenant_metadata(tenant), timeout=30)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, service="training") from None
        model = response.model
        if model.provider_model:
            if self._provider is None:
                raise FailedPrecondition(f"{model_id} was tuned on a provider, which serves it as "
                                         f"{model.provider_model}; set TUNELOOP_PROVIDER_BASE_URL and "
                                         "TUNELOOP_PROVIDER_API_KEY for the inference service to call it",
                                         param="model", code="provider_not_configured")
            return self._provider, model.provider_model
        if not model.available:
            raise FailedPrecondition(f"{model_id} cannot be served: {model.unavailable_reason}", param="model",
                                     code="model_not_available")
        return await asyncio.to_thread(read_fine_tuned, model.id, model.base_model, model.path)

    @contextlib.contextmanager
    def _admission(self):
        """A place among the requests this process serves at once, or RESOURCE_EXHAUSTED."""
        if self._admitted >= self._settings.max_queued_requests:
            raise ResourceExhausted(f"{self._admitted} requests are already being served or waiting; try again "
                                    "shortly", code="queue_full")
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def _generate(self, request, context, **streaming) -> tuple[str, list[Generation]]:
        """(the deployment asked for, or "", the n choices); `request.model` becomes the version that answers."""
        with self._admission():
            return await self._admitted_generate(request, context, **streaming)

    async def _check_version(self, version: str, tenant: str) -> None:
        """A version a deployment may serve: a base model, or an available fine-tuned model of the tenant."""
        if version.startswith("ft:") or version in self._remotes:
            await self._route(version, tenant)
        else:
            self._models.check_known(version)

    async def _resolve(self, request, tenant: str) -> tuple[str, str]:
        """(deployment, model version) of a request: a deployment's name picks one of its versions."""
        name = request.model
        if name.startswith("ft:") or name in self._remotes or name in self._models.base_model_ids():
            return "", name
        version = await self.deployments.resolve(tenant, name, request.user)
        return (name, version) if version is not None else ("", name)  # not a deployment: the model is unknown

    async def _admitted_generate(self, request, context, **streaming) -> tuple[str, list[Generation]]:
        tenant, choices = tenant_of(context), request.n or 1  # n 0: the field left unset
        options = dict(
            messages=[{"role": m.role, "content": m.content} for m in request.messages] or None,
            prompt=request.prompt or None,
            max_tokens=request.max_tokens or self._settings.default_max_tokens,
            temperature=request.temperature,
            top_p=request.top_p or 1.0,  # 0 means no nucleus cut-off (inference.proto)
            seed=request.seed if request.HasField("seed") else None,
            stop=list(request.stop),
        )
        check_request(**options)  # a bad request never waits for the registry, a remote or a model
        check_choices(choices, self._settings.max_choices)
        deployment, version = await self._resolve(request, tenant)
        request.model = version  # what answers, and what the response and the log name
        route = await self._route(version, tenant)
        options.update(streaming, n=choices)
        if isinstance(route, tuple):
            backend, remote_model = route
            call = functools.partial(backend.generate, version, remote_model, **options)
        else:
            call = functools.partial(self._generator.generate_choices, version, fine_tuned=route, **options)
        return deployment, await asyncio.get_running_loop().run_in_executor(self._threads, call)

    @property
    def generator(self) -> Generator | VllmGenerator:
        return self._generator

    def close(self) -> None:
        """Stop the engines (requests still in flight fail) and the threads waiting for them."""
        self._generator.close()
        self._threads.shutdown(wait=True)

    async def _redact(self, tenant: str, texts: list[str]) -> list[str] | None:
        """`texts` with personal data replaced, by the data-prep service; None when it cannot now."""
        try:
            redacted = await self._dataprep.AnonymizeTexts(dataprep_pb2.AnonymizeTextsRequest(texts=texts),
                                                           metadata=tenant_metadata(tenant), timeout=30)
        except grpc.aio.AioRpcError as error:
            log.warning("completion log: data-prep could not redact (%s); the texts are not kept", error.code())
            return None
        return list(redacted.texts)

    async def _record(self, tenant: str, request, generations: list[Generation], started: float, *,
                      deployment: str, completion_id: str, created: int, stream: bool = False) -> None:
        await self._log.record(tenant, completion_id=completion_id, created=created, model=request.model,
                               deployment=deployment, generations=generations, started=started, stream=stream,
                               messages=[{"role": m.role, "content": m.content} for m in request.messages],
                               prompt=request.prompt)

    async def Generate(self, request, context):
        started = time.perf_counter()
        deployment, generations = await self._generate(request, context)
        completion_id, created = new_completion_id(), int(time.time())
        await self._record(tenant_of(context), request, generations, started, deployment=deployment,
                           completion_id=completion_id, created=created)
        first = generations[0]
        return inference_pb2.GenerateResponse(
            completion_id=completion_id, model=request.model, text=first.text, finish_reason=first.finish_reason,
            usage=_usage(generations), created=created, tokens=_tokens(first.tokens),
            stop_sequence=first.stop_sequence,
            choices=[inference_pb2.Choice(index=index, completion_id=choice_id(completion_id, index), text=g.text,
                                          finish_reason=g.finish_reason, tokens=_tokens(g.tokens),
                                          stop_sequence=g.stop_sequence, completion_tokens=g.completion_tokens)
                     for index, g in enumerate(generations)],
        )

    # ---- deployments ------------------------------------------------------------------------

    async def CreateDeployment(self, request, context):
        deployment = await self.deployments.create(tenant_of(context), request.name, request.model_version,
                                                   request.auto_promote, [*self._models.base_model_ids(), *self._remotes])
        return inference_pb2.CreateDeploymentResponse(deployment=_deployment_message(deployment))

    async def GetDeployment(self, request, context):
        deployment = await self.deployments.get(tenant_of(context), request.name)
        return inference_pb2.GetDeploymentResponse(deployment=_deployment_message(deployment))

    async def ListDeployments(self, request, context):
        deployments = await self.deployments.list(tenant_of(context))
        return inference_pb2.ListDeploymentsResponse(deployments=[_deployment_message(d) for d in deployments])

    async def PromoteDeployment(self, request, context):
        deployment = await self.deployments.promote(tenant_of(context), request.name, request.model_version,
                                                    request.reason)
        return inference_pb2.PromoteDeploymentResponse(deployment=_deployment_message(deployment))

    async def SetCanary(self, request, context):
        deployment = await self.deployments.set_canary(tenant_of(context), request.name, request.model_version,
                                                       request.percent)
        return inference_pb2.SetCanaryResponse(deployment=_deployment_message(deployment))

    async def RollbackDeployment(self, request, context):
        deployment = await self.deployments.rollback(tenant_of(context), request.name, request.reason)
        return inference_pb2.RollbackDeploymentResponse(deployment=_deployment_message(deployment))

    async def DeleteDeployment(self, request, context):
        await self.deployments.delete(tenant_of(context), request.name)
        return inference_pb2.DeleteDeploymentResponse(name=request.name, deleted=True)

    async def Score(self, request, context):
        tenant = tenant_of(context)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        check_request(messages, None, 0, 0, 1, None, ())
        route = await self._route(request.model, tenant)
        if isinstance(route, tuple):
            raise FailedPrecondition(f"{request.model} is served by a remote endpoint, which does not score answers",
                                     param="model", code="score_not_available")
        with self._admission():
            logprob, tokens = await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(
                self._generator.score, request.model, messages=messages, answer=request.answer, fine_tuned=route))
        return inference_pb2.ScoreResponse(logprob=logprob, tokens=tokens)

    async def GetCompletion(self, request, context):
        completion = await self._log.find(tenant_of(context), request.completion_id)
        return inference_pb2.GetCompletionResponse(
            completion_id=completion.id, model=completion.model, deployment=completion.deployment,
            created=completion.created, texts=completion.texts, prompt=completion.prompt, text=completion.text,
            messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"])
                      for m in completion.messages])

    async def ListRemoteModels(self, request, context):
        return inference_pb2.ListRemoteModelsResponse(models=[
            inference_pb2.RemoteModel(id=model_id, backend=remote.backend)
            for model_id, remote in sorted(self._settings.remote_models.items())])

    async def GetUsage(self, request, context):
        if request.since < 0:
            raise InvalidArgument("since must be epoch seconds, or 0 for the whole log", param="since")
        async with self._db.transaction() as session:
            rows = await store.usage(session, tenant_of(context), list(request.models), request.since)
        return inference_pb2.GetUsageResponse(usage=[inference_pb2.ModelUsage(**row) for row in rows])

    async def GenerateStream(self, request, context):
        """Text pieces of each choice as the generator decides them; the id, logged at the end, is chosen first."""
        started = time.perf_counter()
        completion_id, created = new_completion_id(), int(time.time())
        tenant, logged = tenant_of(context), False
        pieces, cancel = Pieces(self._mailbox), threading.Event()

        def chunk(piece: Piece, **last) -> inference_pb2.GenerateChunk:
            index, text, tokens = piece
            return inference_pb2.GenerateChunk(completion_id=completion_id, model=request.model, created=created,
                                               index=index, text=text, tokens=_tokens(tokens), **last)

        generating = asyncio.ensure_future(self._generate(request, context, on_text=pieces.put, cancel=cancel))
        try:
            async for piece in pieces.until(generating):
                yield chunk(piece)
            deployment, generations = generating.result()  # a failure is raised here, before or between chunks
            for piece in pieces.rest():  # the generator's last pieces came before its result
                yield chunk(piece)
            logged = True
            await self._record(tenant, request, generations, started, deployment=deployment, stream=True,
                               completion_id=completion_id, created=created)
            for index, generation in enumerate(generations):  # each choice's end; the stream's last has the usage
                usage = {"usage": _usage(generations)} if index == len(generations) - 1 else {}
                yield chunk((index, "", []), finish_reason=generation.finish_reason,
                            stop_sequence=generation.stop_sequence, **usage)
        finally:
            cancel.set()  # the client went away (or we are done): free the model for the next request
            generating.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no warning
            if not logged:  # the client left mid-stream: what it was sent is logged once generation stops
                task = asyncio.ensure_future(self._log_abandoned(generating, tenant, request, started,
                                                                 completion_id, created))
                self._pending_logs.add(task)
                task.add_done_callback(self._pending_logs.discard)

    async def _log_abandoned(self, generating: asyncio.Future, tenant: str, request, started: float,
                             completion_id: str, created: int) -> None:
        try:
            deployment, generations = await generating
        except Exception:  # it failed: the client got the error, there is nothing to log
            return
        try:
            await self._record(tenant, request, [replace(g, finish_reason="cancelled") for g in generations],
                               started, deployment=deployment, stream=True, completion_id=completion_id,
                               created=created)
        except Exception:
            log.exception("completion log: the abandoned stream %s could not be logged", completion_id)


def _deployment_message(deployment: Deployment) -> inference_pb2.Deployment:
    return inference_pb2.Deployment(
        name=deployment.name, model_version=deployment.model_version, previous_version=deployment.previous_version,
        canary_version=deployment.canary_version, canary_percent=deployment.canary_percent,
        auto_promote=deployment.auto_promote, created_at=deployment.created_at, updated_at=deployment.updated_at,
        history=[inference_pb2.DeploymentChange(action=c.action, from_version=c.from_version, to_version=c.to_version,
                                                percent=c.percent, reason=c.reason, at=c.at)
                 for c in deployment.history])


def _tokens(tokens) -> list[inference_pb2.GeneratedToken]:
    return [inference_pb2.GeneratedToken(id=t.id, text=t.text, logprob=t.logprob, special=t.special) for t in tokens]


def _usage(generations: list[Generation]) -> common_pb2.Usage:
    """A response's usage: every choice read the same prompt, counted once; their completions summed."""
    prompt = generations[0].prompt_tokens
    completion = sum(g.completion_tokens for g in generations)
    return common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def build(runtime: Runtime) -> ServiceParts:
    settings: InferenceSettings = runtime.settings  # type: ignore[assignment]
    if settings.inference_backend == "vllm":  # starting vLLM's engine takes minutes: not on the event loop
        generator = await asyncio.to_thread(VllmGenerator.from_settings, settings)
    else:
        generator = Generator(ModelStore(settings), max_batch_size=settings.max_batch_size,
                              max_adapters=settings.max_adapters, dtype=settings.inference_dtype,
                              prefix_cache_size=settings.prefix_cache_prompts, engine_nice=settings.engine_nice,
                              compiled_decode=(settings.compiled_decode_rows, settings.compiled_decode_capacity))
    channels = [open_channel(settings.training_addr, settings)]
    registry = training_pb2_grpc.TrainingStub(channels[0])
    dataprep = None
    if settings.log_texts == "redacted":
        channels.append(open_channel(settings.dataprep_addr, settings))
        dataprep = dataprep_pb2_grpc.DataPrepStub(channels[-1])

    servicer = InferenceServicer(runtime, generator, registry, dataprep)

    def register(server: grpc.aio.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
        return [inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name]

    async def sweep_completion_log() -> None:
        """Delete completions past their retention."""
        if not settings.log_retention_days:
            return
        cutoff = int(time.time()) - settings.log_retention_days * 86400
        async with runtime.db.transaction() as session:
            deleted = await store.delete_completions_before(session, cutoff)
        if deleted:
            log.info("completion log: deleted %d completions older than %d days", deleted,
                     settings.log_retention_days)

    async def close() -> None:
        await asyncio.to_thread(servicer.close)
        for channel in channels:
            await channel.close()
        for backend in {*servicer.remotes(), servicer.provider} - {None}:
            if isinstance(backend, OpenAIBackend):  # TGI's client holds no connection between calls
                await asyncio.to_thread(backend.close)

    background = [_every(settings.log_sweep_s, sweep_completion_log),
                  _every(settings.canary_check_s, servicer.deployments.promote_finished_canaries)]
    return ServiceParts(register=register, background=background, on_close=close,
                        subscriptions=events.subscriptions(servicer.deployments, settings), servicer=servicer)


def _every(seconds: float, work: Callable[[], Awaitable[None]]) -> Callable[[asyncio.Event], Awaitable[None]]:
    """A background task: `work` now and then every `seconds` until stopping. A pass that fails (the
    database away for a moment) is logged and the next one tries again."""
    async def loop(stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await work()
            except Exception:
                log.exception("%s failed; trying again in %ss", work.__name__, seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)

    loop.__name__ = work.__name__  # the task's name
    return loop


DEFINITION = ServiceDefinition(
    name="inference",
    settings_class=InferenceSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
