"""Generation over gRPC from the tiny model, with every completion logged (SQLite and PostgreSQL)."""

import grpc
import pytest
import sqlalchemy as sa

from protos import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference import store
from services.inference.server import DEFINITION
from tests.fixtures.services import call_metadata, error_param, running, service_settings


@pytest.fixture
def settings(tmp_path, database_url, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                            base_models={"tiny-llama": tiny_model_dir})


async def _logged(service):
    async with service.runtime.db.transaction() as session:
        return (await session.execute(sa.select(store.completions))).mappings().all()


async def test_generate_chat_and_prompt_and_log_each_completion(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        chat = await stub.Generate(
            inference_pb2.GenerateRequest(model="tiny-llama", max_tokens=4,
                                          messages=[common_pb2.ChatMessage(role="user", content="Hi")]),
            metadata=call_metadata(),
        )
        again = await stub.Generate(
            inference_pb2.GenerateRequest(model="tiny-llama", max_tokens=4,
                                          messages=[common_pb2.ChatMessage(role="user", content="Hi")]),
            metadata=call_metadata(),
        )
        plain = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hello", max_tokens=3),
                                    metadata=call_metadata("other"))
        rows = await _logged(service)
    assert chat.text == again.text  # greedy by default: deterministic
    assert chat.completion_id != again.completion_id
    assert chat.usage.completion_tokens == 4 and chat.usage.total_tokens == chat.usage.prompt_tokens + 4
    assert plain.usage.completion_tokens == 3 and plain.finish_reason == "length"
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {chat.completion_id, again.completion_id, plain.completion_id}
    assert by_id[plain.completion_id]["tenant"] == "other"
    assert by_id[chat.completion_id]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("request_fields", "code", "param"),
    [
        ({"model": "gpt-9", "prompt": "x"}, grpc.StatusCode.NOT_FOUND, "model"),
        ({"model": "tiny-llama"}, grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        ({"model": "tiny-llama", "prompt": "x", "max_tokens": -1}, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ],
)
async def test_bad_requests_name_the_field_and_log_nothing(settings, request_fields, code, param):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Generate(inference_pb2.GenerateRequest(**request_fields), metadata=call_metadata())
        assert error.value.code() == code
        assert error_param(error.value) == param
        assert await _logged(service) == []
