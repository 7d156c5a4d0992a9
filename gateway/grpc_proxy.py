"""The public gRPC door: the tuneloop.v1 services, proxied byte for byte after API-key auth.

The gateway does not decode messages: it checks the caller's key, stamps the tenant on the call
and forwards the serialized request to the service that owns the method, so a new RPC in a
service's proto is public as soon as its stubs are regenerated.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import descriptor_pool

from gateway.auth import KeyRing, bearer_key
from gateway.health import GRPC_SERVICE_NAMES
from services.shared.rpc import tenant_metadata

_PASSTHROUGH_ERRORS_KEYS = ("x-tuneloop-error-code", "x-tuneloop-error-param")


def _method_shapes() -> dict[str, tuple[str, bool, bool]]:
    """'/tuneloop.v1.X/Method' -> (owning service, client streaming, server streaming)."""
    pool = descriptor_pool.Default()
    shapes = {}
    for service, full_name in GRPC_SERVICE_NAMES.items():
        for method in pool.FindServiceByName(full_name).methods:
            shapes[f"/{full_name}/{method.name}"] = (service, method.client_streaming, method.server_streaming)
    return shapes


class PublicServicesProxy(grpc.GenericRpcHandler):
    def __init__(self, channels: dict[str, grpc.aio.Channel], keys: KeyRing, timeout: float):
        self._channels = channels
        self._keys = keys
        self._timeout = timeout
        self._shapes = _method_shapes()

    async def _forward_metadata(self, context: grpc.aio.ServicerContext):
        metadata = dict(context.invocation_metadata() or ())
        tenant = await self._keys.tenant_for(bearer_key(metadata.get("authorization")))
        return tenant_metadata(tenant)

    @staticmethod
    async def _relay_error(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
        trailers = tuple((k, v) for k, v in (error.trailing_metadata() or ()) if k in _PASSTHROUGH_ERRORS_KEYS)
        context.set_trailing_metadata(trailers)
        await context.abort(error.code(), error.details() or "")

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        shape = self._shapes.get(method)
        if shape is None:
            return None
        service, client_streaming, server_streaming = shape
        channel = self._channels[service]
        if not client_streaming and not server_streaming:
            return grpc.unary_unary_rpc_method_handler(self._unary(channel.unary_unary(method)))
        if client_streaming and not server_streaming:
            return grpc.stream_unary_rpc_method_handler(self._unary(channel.stream_unary(method)))
        if server_streaming and not client_streaming:
            return grpc.unary_stream_rpc_method_handler(self._streaming(channel.unary_stream(method)))
        return grpc.stream_stream_rpc_method_handler(self._streaming(channel.stream_stream(method)))

    def _unary(self, callable_: Callable):
        async def forward(request, context):
            metadata = await self._forward_metadata(context)
            try:
                return await callable_(request, metadata=metadata, timeout=self._timeout)
            except grpc.aio.AioRpcError as error:
                await self._relay_error(context, error)

        return forward

    def _streaming(self, callable_: Callable):
        async def forward(request, context):
            metadata = await self._forward_metadata(context)
            try:
                async for response in callable_(request, metadata=metadata, timeout=self._timeout):
                    yield response
            except grpc.aio.AioRpcError as error:
                await self._relay_error(context, error)

        return forward


def public_service_names() -> list[str]:
    return list(GRPC_SERVICE_NAMES.values())
