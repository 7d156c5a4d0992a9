"""The feedback service on a real gRPC port, a real NATS and SQLite / PostgreSQL."""

import asyncio
import contextlib

import grpc
import pytest
import sqlalchemy as sa

from protos import events_pb2, feedback_pb2, feedback_pb2_grpc
from services.feedback import store
from services.feedback.server import DEFINITION
from services.shared.bus import new_envelope
from services.shared.subjects import MODEL_DEPLOYED
from tests.fixtures.services import call_metadata, error_param, running, service_settings


@pytest.fixture
def settings(tmp_path, database_url, nats_url):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url)


def _feedback(**overrides):
    fields = {"completion_id": "cmpl-1", "rating": feedback_pb2.RATING_DOWN, "correction": "Paris", "user": "agent-7"}
    fields.update(overrides)
    return feedback_pb2.SubmitFeedbackRequest(**fields)


async def _count_rows(service) -> int:
    async with service.runtime.db.transaction() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(store.feedback))).scalar_one()


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"rating": feedback_pb2.RATING_UNSPECIFIED}, "rating"),
        ({"completion_id": "../etc/passwd"}, "completion_id"),
        ({"correction": "   "}, "correction"),
        ({"user": ""}, "user"),
    ],
)
async def test_bad_feedback_is_refused_naming_the_field_and_stores_nothing(settings, overrides, param):
    async with running(DEFINITION, settings) as (service, channel):
        stub = feedback_pb2_grpc.FeedbackStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SubmitFeedback(_feedback(**overrides), metadata=call_metadata())
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_param(error.value) == param
        assert await _count_rows(service) == 0


async def test_calls_without_the_internal_token_are_refused(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = feedback_pb2_grpc.FeedbackStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SubmitFeedback(_feedback())
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await _count_rows(service) == 0


async def test_model_deployed_events_reach_the_durable_consumer(settings):
    async with running(DEFINITION, settings) as (service, _channel):
        envelope = new_envelope(
            MODEL_DEPLOYED,
            events_pb2.ModelDeployed(deployment="acme-support", model_version="v2", traffic_percent=100),
            source="test",
            tenant="acme",
        )
        await service.runtime.bus.publish(envelope)
        await service.runtime.bus.publish(envelope)  # a repeat is dropped or ignored
        stub = feedback_pb2_grpc.FeedbackStub(_channel)
        version = None
        for _ in range(100):
            with contextlib.suppress(grpc.aio.AioRpcError):  # NOT_FOUND until the event is applied
                loop = await stub.GetLoop(feedback_pb2.GetLoopRequest(deployment="acme-support"),
                                          metadata=call_metadata())
                version = loop.model_version
            if version:
                break
            await asyncio.sleep(0.05)
        assert version == "v2"
