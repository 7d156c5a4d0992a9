"""The gateway's channels to the five services, and the one wrapper every call goes through."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from operator import attrgetter
from typing import Any, TypeVar

import grpc

from protos import (
    dataprep_pb2_grpc,
    evaluation_pb2_grpc,
    feedback_pb2_grpc,
    inference_pb2_grpc,
    training_pb2_grpc,
)
from services.shared.rpc import error_from_rpc, open_channel, tenant_metadata
from services.shared.settings import SERVICE_NAMES, Settings

T = TypeVar("T")


class ServiceClients:
    """One channel per service, opened at start-up and shared by every request."""

    def __init__(self, settings: Settings, timeout: float):
        self.timeout = timeout
        self.channels: dict[str, grpc.aio.Channel] = {
            name: open_channel(settings.service_addr(name), settings) for name in SERVICE_NAMES
        }
        self.dataprep = dataprep_pb2_grpc.DataPrepStub(self.channels["dataprep"])
        self.training = training_pb2_grpc.TrainingStub(self.channels["training"])
        self.evaluation = evaluation_pb2_grpc.EvaluationStub(self.channels["evaluation"])
        self.feedback = feedback_pb2_grpc.FeedbackStub(self.channels["feedback"])
        self.inference = inference_pb2_grpc.InferenceStub(self.channels["inference"])

    def options(self, tenant: str) -> dict:
        """The keyword arguments of a call made for a tenant."""
        return {"metadata": tenant_metadata(tenant), "timeout": self.timeout}

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def call(service: str, pending: Awaitable[T]) -> T:
    """Await a service call, turning a gRPC failure into the platform error it stands for."""
    try:
        return await pending
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error, service=service) from None


async def stream(service: str, responses, pick: Callable[[Any], Any] = attrgetter("data")) -> AsyncIterator:
    """`pick` of a server-streaming call's messages (their `data`), with errors raised before the first byte.

    The first message is awaited here, so a NOT_FOUND becomes a proper HTTP error instead of a
    stream that breaks after its 200 status has been sent.
    """
    iterator = responses.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error, service=service) from None

    async def rest() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield pick(first)
        async for message in iterator:
            yield pick(message)

    return rest()
