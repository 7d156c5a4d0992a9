"""gRPC server and client helpers: aio servers with health, reflection and three interceptors.

The interceptors are composed as a list when the server is built, as TGI does: tracing (from
opentelemetry-instrumentation-grpc, health checks left out), internal-token auth, and error
mapping, which turns the platform's error hierarchy into status codes once, for every RPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters

from services.shared.errors import ERRORS_BY_GRPC_STATUS, TuneloopError, Unauthenticated, Unavailable
from services.shared.settings import Settings

log = logging.getLogger(__name__)

INTERNAL_TOKEN_KEY = "x-tuneloop-internal-token"
TENANT_KEY = "x-tuneloop-tenant"
ERROR_CODE_KEY = "x-tuneloop-error-code"
ERROR_PARAM_KEY = "x-tuneloop-error-param"
DEFAULT_TENANT = "default"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# gRPC servers set SO_REUSEPORT by default: a second server on a taken port then binds without an
# error and the kernel splits the connections between the two (seen in CI: the gateway's port was
# also given to the inference service, and reflection answered for inference). Refuse instead.
_SERVER_OPTIONS = [*_CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The tenant the caller acts for, as the gateway stamped it on the call."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_KEY and value:
            return value
    return DEFAULT_TENANT


async def _abort_with(context: grpc.aio.ServicerContext, error: TuneloopError) -> None:
    trailers = [(ERROR_CODE_KEY, error.code or "")]
    if error.param:
        trailers.append((ERROR_PARAM_KEY, error.param))
    context.set_trailing_metadata(tuple(trailers))
    await context.abort(grpc.StatusCode[error.grpc_status], error.message)


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap_unary, wrap_stream) -> grpc.RpcMethodHandler:
    """A copy of `handler` whose behaviour goes through the given wrappers."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
    )


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps TuneloopError to its status code; anything else becomes INTERNAL without leaking details."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_unary(behaviour):
            async def guarded(request, context):
                try:
                    return await behaviour(request, context)
                except TuneloopError as error:
                    await _abort_with(context, error)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception:
                    log.exception("unhandled error in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

            return guarded

        def wrap_stream(behaviour):
            async def guarded(request, context):
                try:
                    async for item in behaviour(request, context):
                        yield item
                except TuneloopError as error:
                    await _abort_with(context, error)
                except (grpc.aio.AbortError, grpc.aio.UsageError):
                    raise
                except Exception:
                    log.exception("unhandled error in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

            return guarded

        return _wrap_handler(handler, wrap_unary, wrap_stream)


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    """Demands the platform's internal token on every call except health checks and reflection."""

    def __init__(self, token: str):
        self._token = token

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not self._token or method.startswith(_OPEN_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get(INTERNAL_TOKEN_KEY) == self._token:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        error = Unauthenticated(f"{method}: missing or wrong internal token", code="invalid_internal_token")

        def refuse_unary(_behaviour):
            async def refuse(request, context):
                await _abort_with(context, error)

            return refuse

        def refuse_stream(_behaviour):
            async def refuse(request, context):
                await _abort_with(context, error)
                yield  # pragma: no cover - makes this an async generator

            return refuse

        return _wrap_handler(handler, refuse_unary, refuse_stream)


@dataclass
class GrpcServer:
    """A started aio server, the port it bound, and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def set_serving(self, serving: bool, names: Iterable[str] = ("",)) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in names:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    *,
    host: str,
    port: int,
    internal_token: str,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    extra_interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    generic_handlers: Iterable[grpc.GenericRpcHandler] = (),
) -> GrpcServer:
    """Build, bind and start a server; `register` adds servicers and returns their full names."""
    interceptors: list[grpc.aio.ServerInterceptor] = [
        aio_server_interceptor(filter_=filters.negate(filters.health_check())),
        *extra_interceptors,
        InternalTokenInterceptor(internal_token),
        ErrorMappingInterceptor(),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=_SERVER_OPTIONS)
    service_names = list(register(server))
    if generic_handlers:
        server.add_generic_rpc_handlers(tuple(generic_handlers))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {host}:{port}")
    await server.start()
    running = GrpcServer(server=server, port=bound, health=health_servicer)
    await running.set_serving(True, ["", *service_names])
    return running


class _AddsToken:
    """Adds the internal token to an outgoing call's metadata."""

    def __init__(self, token: str):
        self._token = token

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(INTERNAL_TOKEN_KEY, self._token)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under the first call type it implements, so one class per type.
class _TokenUnaryUnary(_AddsToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)


class _TokenUnaryStream(_AddsToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)


class _TokenStreamUnary(_AddsToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)


class _TokenStreamStream(_AddsToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)


def open_channel(address: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to a peer service that traces calls and carries the internal token."""
    interceptors: list[grpc.aio.ClientInterceptor] = list(aio_client_interceptors())
    if settings.internal_token:
        token = settings.internal_token
        interceptors += [_TokenUnaryUnary(token), _TokenUnaryStream(token), _TokenStreamUnary(token), _TokenStreamStream(token)]
    return grpc.aio.insecure_channel(address, interceptors=interceptors, options=_CHANNEL_OPTIONS)


def tenant_metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    return ((TENANT_KEY, tenant),)


def error_from_rpc(error: grpc.aio.AioRpcError, *, service: str) -> TuneloopError:
    """The platform error a failed call stands for, so the gateway can map it to HTTP once."""
    code = error.code()
    trailers = dict(error.trailing_metadata() or ())
    raised_by_us = ERROR_CODE_KEY in trailers  # our interceptor stamps every error it maps
    if not raised_by_us and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # A transport failure: its details name internal addresses, so log them, do not pass them on.
        log.warning("%s service unavailable: %s", service, error.details())
        return Unavailable(f"the {service} service is unavailable; try again shortly")
    cls = ERRORS_BY_GRPC_STATUS.get(code.name)
    if cls is None:
        return TuneloopError(f"the {service} service failed: {error.details()}")
    return cls(
        error.details() or code.name,
        param=trailers.get(ERROR_PARAM_KEY) or None,
        code=trailers.get(ERROR_CODE_KEY) or None,
    )


async def check_health(address: str, *, timeout: float = 2.0, service: str = "") -> str:
    """The health status name of a server ("SERVING", "NOT_SERVING", ...) or "UNREACHABLE"."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

