"""GetCompletion over gRPC: what a Generate call logged, read back by its id, for its tenant only."""

import grpc
import pytest

from protos import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.server import DEFINITION
from services.shared.rpc import ERROR_CODE_KEY
from tests.fixtures.services import call_metadata, error_param, running, service_settings


@pytest.fixture
def settings(tmp_path, database_url, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                            base_models={"tiny-llama": tiny_model_dir})


def _get(stub, completion_id: str, tenant: str = "acme"):
    return stub.GetCompletion(inference_pb2.GetCompletionRequest(completion_id=completion_id),
                              metadata=call_metadata(tenant))


async def test_a_completion_reads_back_as_it_was_asked_and_answered(settings):
    chat = [common_pb2.ChatMessage(role="system", content="Be brief."),
            common_pb2.ChatMessage(role="user", content="Hi")]
    async with running(DEFINITION, settings) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="support", model_version="tiny-llama"),
                                    metadata=call_metadata())
        asked_chat = await stub.Generate(inference_pb2.GenerateRequest(model="support", max_tokens=4, messages=chat),
                                         metadata=call_metadata())
        asked_prompt = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hello",
                                                                         max_tokens=3), metadata=call_metadata())
        read_chat = await _get(stub, asked_chat.completion_id)
        read_prompt = await _get(stub, asked_prompt.completion_id)
    assert (read_chat.completion_id, read_chat.model, read_chat.deployment) == (
        asked_chat.completion_id, "tiny-llama", "support")
    assert list(read_chat.messages) == chat and read_chat.prompt == ""
    assert (read_chat.text, read_chat.created, read_chat.texts) == (asked_chat.text, asked_chat.created, "full")
    assert (read_prompt.model, read_prompt.deployment, read_prompt.prompt) == ("tiny-llama", "", "Hello")
    assert list(read_prompt.messages) == [] and read_prompt.text == asked_prompt.text


async def test_a_completion_whose_texts_were_not_kept_reads_back_without_them(settings):
    configured = settings.model_copy(update={"log_texts": "none"})
    async with running(DEFINITION, configured) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        asked = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hello", max_tokens=2),
                                    metadata=call_metadata())
        read = await _get(stub, asked.completion_id)
    assert (read.texts, read.prompt, read.text, list(read.messages)) == ("none", "", "", [])
    assert read.model == "tiny-llama" and read.created == asked.created


async def test_unknown_another_tenants_and_malformed_ids_are_refused_naming_the_field(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        theirs = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hello", max_tokens=1),
                                     metadata=call_metadata("other"))
        refusals = {}
        for label, completion_id in (("unknown", "cmpl-000000000000000000000000"), ("theirs", theirs.completion_id),
                                     ("malformed", "cmpl 1; drop"), ("empty", ""), ("too long", "c" * 129)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _get(stub, completion_id)
            refusals[label] = refused.value
        still_theirs = await _get(stub, theirs.completion_id, tenant="other")
    for label in ("unknown", "theirs"):
        assert refusals[label].code() == grpc.StatusCode.NOT_FOUND, label
        assert dict(refusals[label].trailing_metadata())[ERROR_CODE_KEY] == "completion_not_found"
    for label in ("malformed", "empty", "too long"):
        assert refusals[label].code() == grpc.StatusCode.INVALID_ARGUMENT, label
    assert {error_param(error) for error in refusals.values()} == {"completion_id"}
    assert still_theirs.text == theirs.text
