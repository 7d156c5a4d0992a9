"""The `openai` backend: models answered by a remote OpenAI-compatible server. The remote here is a
real tuneloop gateway (the session stack), spoken to with the official `openai` SDK."""

from __future__ import annotations

import json

import grpc
import pytest
import sqlalchemy as sa
from openai import OpenAI
from pydantic import SecretStr

from protos import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference import store
from services.inference.remote import RemoteModel
from services.inference.server import DEFINITION
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.stack import API_KEY
from tests.fixtures.tiny_model import TINY_MODEL_ID
from tuneloop.nats_server import free_port

CHAT = [common_pb2.ChatMessage(role="user", content="What colour is item 4?")]


@pytest.fixture
def settings(tmp_path, nats_url, tiny_model_dir, stack):
    remote = {"remote-tiny": RemoteModel(base_url=f"{stack.url}/v1", model=TINY_MODEL_ID, api_key=SecretStr(API_KEY)),
              "remote-missing": RemoteModel(base_url=f"{stack.url}/v1", model="gpt-9", api_key=SecretStr(API_KEY)),
              "remote-down": RemoteModel(base_url=f"http://127.0.0.1:{free_port()}/v1", model="x"),
              # TGI's API: the stack's root routes, the model as the adapter id
              "remote-tgi": RemoteModel(backend="tgi", base_url=stack.url, model=TINY_MODEL_ID,
                                        api_key=SecretStr(API_KEY)),
              "remote-tgi-down": RemoteModel(backend="tgi", base_url=f"http://127.0.0.1:{free_port()}")}
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 'i.db'}",
                            nats_url=nats_url, base_models={TINY_MODEL_ID: tiny_model_dir}, remote_models=remote)


async def test_a_remote_model_answers_as_the_remote_does_whole_and_streamed(settings, stack):
    direct = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY).chat.completions.create(
        model=TINY_MODEL_ID, messages=[{"role": "user", "content": "What colour is item 4?"}], max_tokens=6,
        temperature=0)
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = inference_pb2.GenerateRequest(model="remote-tiny", messages=CHAT, max_tokens=6)
        whole = await stub.Generate(request, metadata=call_metadata())
        chunks = [c async for c in stub.GenerateStream(request, metadata=call_metadata())]
        prompt = await stub.Generate(inference_pb2.GenerateRequest(model="remote-tiny", prompt="Once", max_tokens=3),
                                     metadata=call_metadata())
        async with service.runtime.db.transaction() as session:
            rows = list((await session.execute(sa.select(store.completions))).mappings())
    assert whole.text == direct.choices[0].message.content and whole.model == "remote-tiny"
    assert whole.usage.completion_tokens == direct.usage.completion_tokens
    assert whole.usage.prompt_tokens == direct.usage.prompt_tokens
    assert "".join(c.text for c in chunks) == whole.text and chunks[-1].finish_reason == whole.finish_reason
    assert prompt.usage.completion_tokens == 3
    assert {row["model"] for row in rows} == {"remote-tiny"} and all(row["ttft_ms"] for row in rows)
    assert json.loads(rows[0]["request"])["messages"][0]["content"] == "What colour is item 4?"


@pytest.mark.parametrize(("model", "code", "param"), [
    ("remote-missing", grpc.StatusCode.NOT_FOUND, "model"),
    ("remote-down", grpc.StatusCode.UNAVAILABLE, None),
    ("remote-tgi-down", grpc.StatusCode.UNAVAILABLE, None),
])
async def test_remote_failures_come_back_as_errors(settings, model, code, param):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Generate(inference_pb2.GenerateRequest(model=model, prompt="x", max_tokens=1),
                                metadata=call_metadata())
    assert failed.value.code() == code
    if param:
        assert error_param(failed.value) == param


async def test_a_model_tuned_on_a_provider_answers_from_the_provider(settings, stack, tmp_path, tiny_model_dir):
    from services.training import store as training_store
    from services.training.server import DEFINITION as TRAINING

    training_settings = service_settings(TRAINING, tmp_path=tmp_path, database_url=settings.database_url,
                                         nats_url=settings.nats_url, base_models={TINY_MODEL_ID: tiny_model_dir})
    model_id = f"ft:{TINY_MODEL_ID}:acme:remote:ftjob-0123456789abcdef01234567"
    async with running(TRAINING, training_settings) as (training, _channel):
        async with training.runtime.db.transaction() as session:
            # what the provider backend of training records when the remote job succeeds
            await training_store.add_model(session, id=model_id, tenant="acme", base_model=TINY_MODEL_ID,
                                           job_id="ftjob-0123456789abcdef01234567", path="",
                                           lineage=json.dumps({"provider": "openai", "provider_model": TINY_MODEL_ID}))
        unconfigured = settings.model_copy(update={"training_addr": f"127.0.0.1:{training.grpc.port}"})
        configured = unconfigured.model_copy(update={"provider_base_url": f"{stack.url}/v1",
                                                     "provider_api_key": SecretStr(API_KEY)})
        request = inference_pb2.GenerateRequest(model=model_id, prompt="Once", max_tokens=3)
        async with running(DEFINITION, unconfigured) as (_service, channel):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await inference_pb2_grpc.InferenceStub(channel).Generate(request, metadata=call_metadata())
        async with running(DEFINITION, configured) as (_service, channel):
            reply = await inference_pb2_grpc.InferenceStub(channel).Generate(request, metadata=call_metadata())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "TUNELOOP_PROVIDER_BASE_URL" in (
        refused.value.details())
    assert reply.model == model_id and reply.usage.completion_tokens == 3


async def test_a_remote_tgi_model_answers_as_the_tgi_server_does(settings, stack):
    direct = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY)
    plain = direct.completions.create(model=TINY_MODEL_ID, prompt="Once upon a time", max_tokens=6, temperature=0)
    chat = direct.chat.completions.create(model=TINY_MODEL_ID, max_tokens=5, temperature=0,
                                          messages=[{"role": "user", "content": "What colour is item 4?"}])
    async with running(DEFINITION, settings) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = inference_pb2.GenerateRequest(model="remote-tgi", prompt="Once upon a time", max_tokens=6)
        whole = await stub.Generate(request, metadata=call_metadata())
        chunks = [c async for c in stub.GenerateStream(request, metadata=call_metadata())]
        chatted = await stub.Generate(inference_pb2.GenerateRequest(model="remote-tgi", messages=CHAT, max_tokens=5),
                                      metadata=call_metadata())
    assert whole.text == plain.choices[0].text and whole.usage.completion_tokens == 6 == len(whole.tokens)
    # the prompt's tokens as the TGI server counted them (input_length of its stream's last event)
    assert whole.usage.prompt_tokens == plain.usage.prompt_tokens > 0
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(token.logprob <= 0 for token in whole.tokens) and whole.finish_reason == "length"
    assert "".join(c.text for c in chunks) == whole.text and [t.id for c in chunks for t in c.tokens] == [
        t.id for t in whole.tokens]
    assert chatted.text == chat.choices[0].message.content
    assert chatted.usage.prompt_tokens == chat.usage.prompt_tokens > 0


async def test_a_deployment_can_serve_a_remote_model_but_not_take_its_name(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="remote-tiny",
                                                                              model_version=TINY_MODEL_ID),
                                        metadata=call_metadata())
        await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="outsourced", model_version="remote-tiny"),
                                    metadata=call_metadata())
        reply = await stub.Generate(inference_pb2.GenerateRequest(model="outsourced", prompt="Once", max_tokens=2),
                                    metadata=call_metadata())
    assert taken.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(taken.value) == "name"
    assert reply.model == "remote-tiny" and reply.usage.completion_tokens == 2


async def test_a_remote_openai_model_generates_n_choices_itself_whole_and_streamed(settings, stack):
    direct = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY).chat.completions.create(
        model=TINY_MODEL_ID, messages=[{"role": "user", "content": "What colour is item 4?"}], max_tokens=6,
        temperature=1.0, seed=21, n=3)
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = inference_pb2.GenerateRequest(model="remote-tiny", messages=CHAT, max_tokens=6, temperature=1.0,
                                                seed=21, n=3)
        whole = await stub.Generate(request, metadata=call_metadata())
        chunks = [c async for c in stub.GenerateStream(request, metadata=call_metadata())]
        async with service.runtime.db.transaction() as session:
            rows = {row["id"]: row for row in (await session.execute(sa.select(store.completions))).mappings()}
    assert [c.text for c in whole.choices] == [c.message.content for c in direct.choices]
    assert len({c.text for c in whole.choices}) == 3  # the remote sampled each choice with its own seed
    assert whole.usage.prompt_tokens == direct.usage.prompt_tokens
    assert whole.usage.completion_tokens == direct.usage.completion_tokens == sum(
        c.completion_tokens for c in whole.choices)
    assert ["".join(c.text for c in chunks if c.index == i) for i in range(3)] == [c.text for c in whole.choices]
    assert chunks[-1].usage == whole.usage
    assert [rows[c.completion_id]["response"] for c in whole.choices] == [c.text for c in whole.choices]


async def test_a_remote_tgi_model_refuses_more_than_one_choice_naming_n(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        for request in (inference_pb2.GenerateRequest(model="remote-tgi", prompt="Once", max_tokens=2, n=2),
                        inference_pb2.GenerateRequest(model="remote-tgi", messages=CHAT, max_tokens=2, n=2)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Generate(request, metadata=call_metadata())
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(refused.value) == "n"
            assert "TGI" in refused.value.details()
        listed = await stub.ListRemoteModels(inference_pb2.ListRemoteModelsRequest(), metadata=call_metadata())
    assert [(m.id, m.backend) for m in listed.models] == [
        ("remote-down", "openai"), ("remote-missing", "openai"), ("remote-tgi", "tgi"), ("remote-tgi-down", "tgi"),
        ("remote-tiny", "openai")]
