"""The feedback service on a real gRPC port, a real NATS and SQLite / PostgreSQL."""

import asyncio

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
    fields = {"completion_id": "cmpl-1", "model": "smollm2-135m-instruct", "rating": feedback_pb2.RATING_DOWN,
              "correction": "Paris", "user": "agent-7"}
    fields.update(overrides)
    return feedback_pb2.SubmitFeedbackRequest(**fields)


async def _count_rows(service) -> int:
    async with service.runtime.db.transaction() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(store.feedback))).scalar_one()


async def test_feedback_is_stored_counted_and_idempotent(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = feedback_pb2_grpc.FeedbackStub(channel)
        first = await stub.SubmitFeedback(_feedback(idempotency_key="k1"), metadata=call_metadata())
        again = await stub.SubmitFeedback(_feedback(idempotency_key="k1"), metadata=call_metadata())
        await stub.SubmitFeedback(_feedback(completion_id="cmpl-2", rating=feedback_pb2.RATING_UP, correction=""),
                                  metadata=call_metadata())
        # another tenant's feedback never shows in acme's counts
        await stub.SubmitFeedback(_feedback(completion_id="cmpl-3"), metadata=call_metadata("other"))
        stats = await stub.GetFeedbackStats(feedback_pb2.GetFeedbackStatsRequest(model="smollm2-135m-instruct"),
                                            metadata=call_metadata())
    assert first.created and not again.created
    assert again.feedback_id == first.feedback_id
    assert (stats.thumbs_up, stats.thumbs_down, stats.corrections) == (1, 1, 1)


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"rating": feedback_pb2.RATING_UNSPECIFIED}, "rating"),
        ({"completion_id": "../etc/passwd"}, "completion_id"),
        ({"model": ""}, "model"),
        ({"correction": "   "}, "correction"),
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
        version = None
        for _ in range(100):
            async with service.runtime.db.transaction() as session:
                version = await store.deployed_version(session, "acme", "acme-support")
            if version:
                break
            await asyncio.sleep(0.05)
        assert version == "v2"
