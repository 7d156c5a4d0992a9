"""Generation over gRPC from the tiny model, with every completion logged (SQLite and PostgreSQL)."""

import asyncio
import json

import grpc
import pytest
import sqlalchemy as sa

from protos import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference import store
from services.inference.server import DEFINITION
from tests.fixtures.services import call_metadata, error_param, running, service_settings


@pytest.fixture
def settings(tmp_path, database_url, nats_url, tiny_model_dir):
    # float32: a test here compares 12 batched answers with a lone one on the random tiny model, whose
    # near-uniform logits bf16's rounding (the "auto" choice on a CPU with AVX512-BF16) could flip.
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                            base_models={"tiny-llama": tiny_model_dir}, inference_dtype="float32")


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
        # checked before the (unreachable here) registry is asked about the model
        ({"model": "ft:tiny-llama:acme:x:ftjob-0123456789abcdef01234567"}, grpc.StatusCode.INVALID_ARGUMENT,
         "messages"),
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


async def test_a_fine_tuned_model_is_served_to_its_own_tenant_only(settings, tmp_path, tiny_model_dir):
    """The registry (the real training service) resolves `ft:` ids per tenant; inference serves the adapter."""
    import json
    import shutil

    from services.shared.models import ModelStore
    from services.training import store as training_store
    from services.training.server import DEFINITION as TRAINING
    from services.training.trainer import TrainConfig, Trainer

    models = ModelStore(settings)
    examples = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                for i in range(8)]
    trainer = Trainer(TrainConfig(n_epochs=1, batch_size=4, bf16=False), lambda dtype: models.load("tiny-llama", dtype),
                      examples, output_dir=tmp_path / "run", base_model_id="tiny-llama")
    trainer.setup()
    adapter = trainer.train().adapter_dir
    model_id = "ft:tiny-llama:acme:x:ftjob-0123456789abcdef01234567"
    training_settings = service_settings(TRAINING, tmp_path=tmp_path, database_url=settings.database_url,
                                         nats_url=settings.nats_url, base_models={"tiny-llama": tiny_model_dir})
    async with running(TRAINING, training_settings) as (training, _channel):
        async with training.runtime.db.transaction() as session:
            await training_store.add_model(session, id=model_id, tenant="acme", base_model="tiny-llama",
                                           job_id="ftjob-0123456789abcdef01234567", path=str(adapter),
                                           lineage=json.dumps({"base_model": "tiny-llama"}))
        inference_settings = settings.model_copy(update={"training_addr": f"127.0.0.1:{training.grpc.port}"})
        async with running(DEFINITION, inference_settings) as (service, channel):
            stub = inference_pb2_grpc.InferenceStub(channel)
            request = inference_pb2.GenerateRequest(model=model_id, prompt="q1", max_tokens=2)
            served = await stub.Generate(request, metadata=call_metadata("acme"))
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await stub.Generate(request, metadata=call_metadata("other"))
            shutil.rmtree(adapter)
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await stub.Generate(inference_pb2.GenerateRequest(model=model_id, prompt="q2", max_tokens=2),
                                    metadata=call_metadata("acme"))
            rows = await _logged(service)
    assert served.model == model_id and served.usage.completion_tokens == 2
    assert other.value.code() == grpc.StatusCode.NOT_FOUND and error_param(other.value) == "model"
    assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "adapter files missing" in gone.value.details()
    assert [(row["model"], row["tenant"]) for row in rows] == [(model_id, "acme")]


async def test_the_log_keeps_texts_time_to_first_token_and_cost(settings):
    settings = settings.model_copy(update={"price_per_hour_usd": 3.6})
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        chat = await stub.Generate(
            inference_pb2.GenerateRequest(model="tiny-llama", max_tokens=3,
                                          messages=[common_pb2.ChatMessage(role="system", content="Be brief."),
                                                    common_pb2.ChatMessage(role="user", content="Hi")]),
            metadata=call_metadata())
        chunks = [c async for c in stub.GenerateStream(
            inference_pb2.GenerateRequest(model="tiny-llama", prompt="Once upon", max_tokens=4),
            metadata=call_metadata())]
        rows = {row["id"]: row for row in await _logged(service)}
    logged = rows[chat.completion_id]
    assert json.loads(logged["request"]) == {"messages": [{"role": "system", "content": "Be brief."},
                                                          {"role": "user", "content": "Hi"}]}
    assert (logged["response"], logged["texts"], logged["stream"]) == (chat.text, "full", False)
    assert 0 < logged["ttft_ms"] <= logged["latency_ms"]
    assert logged["cost_usd"] == pytest.approx(logged["latency_ms"] / 1000 * 3.6 / 3600)
    streamed = rows[chunks[-1].completion_id]
    assert {c.completion_id for c in chunks} == {streamed["id"]} and streamed["stream"] is True
    assert json.loads(streamed["request"]) == {"prompt": "Once upon"}
    assert streamed["response"] == "".join(c.text for c in chunks) and streamed["completion_tokens"] == 4
    assert [t.id for c in chunks for t in c.tokens] and chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("log_texts", ["none", "redacted"])
async def test_the_log_keeps_no_texts_or_redacted_ones_as_configured(settings, tmp_path, log_texts):
    from services.dataprep.server import DEFINITION as DATAPREP

    dataprep_settings = service_settings(DATAPREP, tmp_path=tmp_path, database_url=settings.database_url,
                                         nats_url=settings.nats_url, base_models=settings.base_models)
    prompt = "Write to jane.doe@example.com or call +44 20 7946 0958."
    async with running(DATAPREP, dataprep_settings) as (dataprep, _channel):
        configured = settings.model_copy(update={"log_texts": log_texts,
                                                 "dataprep_addr": f"127.0.0.1:{dataprep.grpc.port}"})
        async with running(DEFINITION, configured) as (service, channel):
            stub = inference_pb2_grpc.InferenceStub(channel)
            reply = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt=prompt, max_tokens=2),
                                        metadata=call_metadata())
            rows = {row["id"]: row for row in await _logged(service)}
    logged = rows[reply.completion_id]
    assert logged["texts"] == log_texts and logged["prompt_tokens"] > 0
    if log_texts == "none":
        assert logged["request"] is None and logged["response"] is None
    else:
        kept = json.loads(logged["request"])["prompt"]
        assert "jane.doe@example.com" not in kept and "[EMAIL]" in kept and "[PHONE]" in kept
        assert logged["response"] is not None


async def test_without_data_prep_redacted_texts_are_withheld_and_the_answer_still_served(settings):
    from tuneloop.nats_server import free_port

    configured = settings.model_copy(update={"log_texts": "redacted", "dataprep_addr": f"127.0.0.1:{free_port()}"})
    async with running(DEFINITION, configured) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        reply = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="a@b.io", max_tokens=2),
                                    metadata=call_metadata())
        rows = {row["id"]: row for row in await _logged(service)}
    assert reply.usage.completion_tokens == 2
    assert (rows[reply.completion_id]["texts"], rows[reply.completion_id]["request"]) == ("withheld", None)


async def test_completions_past_their_retention_are_swept(settings):
    import time

    configured = settings.model_copy(update={"log_retention_days": 7, "log_sweep_s": 0.2})
    async with running(DEFINITION, configured) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        fresh = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="x", max_tokens=1),
                                    metadata=call_metadata())
        async with service.runtime.db.transaction() as session:
            await store.log_completion(session, id="cmpl-old", tenant="default", model="tiny-llama", prompt_tokens=1,
                                       completion_tokens=1, finish_reason="length", latency_ms=1.0,
                                       created_at=int(time.time()) - 8 * 86400)
        deadline = time.monotonic() + 10
        while "cmpl-old" in {row["id"] for row in await _logged(service)}:
            assert time.monotonic() < deadline, "the old completion was never swept"
            await asyncio.sleep(0.1)
        assert fresh.completion_id in {row["id"] for row in await _logged(service)}


async def test_a_full_queue_refuses_with_resource_exhausted_until_a_place_frees(settings):
    configured = settings.model_copy(update={"max_queued_requests": 1})
    async with running(DEFINITION, configured) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        holding = stub.GenerateStream(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Once", max_tokens=200),
                                      metadata=call_metadata())
        await holding.read()  # generating: the one place is taken
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="x", max_tokens=1),
                                metadata=call_metadata())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "try again" in refused.value.details()
        holding.cancel()  # the client leaves: its generation stops and the place frees
        for _ in range(100):
            try:
                served = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="x", max_tokens=1),
                                             metadata=call_metadata())
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.05)
        assert served.usage.completion_tokens == 1


async def test_a_stream_whose_client_leaves_is_logged_as_cancelled_with_what_was_generated(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = stub.GenerateStream(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Once", max_tokens=200),
                                   metadata=call_metadata())
        first = await call.read()
        call.cancel()
        for _ in range(100):
            rows = {row["id"]: row for row in await _logged(service)}
            if first.completion_id in rows:
                break
            await asyncio.sleep(0.05)
    logged = rows[first.completion_id]
    assert logged["finish_reason"] == "cancelled" and logged["stream"] is True
    assert 0 < logged["completion_tokens"] < 200 and logged["response"].startswith(first.text)


async def test_more_concurrent_requests_than_cores_decode_in_one_batch(settings):
    """Every admitted request reaches the batch at once (none waits for a free thread first)."""
    requests = 12
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        first = await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hi", max_tokens=3),
                                    metadata=call_metadata())
        engine = service.parts.servicer.generator.engine("tiny-llama")
        with engine.paused():
            calls = [asyncio.ensure_future(stub.Generate(
                inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hi", max_tokens=3), metadata=call_metadata()))
                for _ in range(requests)]
            for _ in range(300):
                if engine.waiting == requests:
                    break
                await asyncio.sleep(0.02)
            assert engine.waiting == requests
        answers = await asyncio.gather(*calls)
    assert {answer.text for answer in answers} == {first.text}
    assert engine.stats.max_rows == requests


async def test_usage_per_model_comes_from_the_completion_log(settings):
    configured = settings.model_copy(update={"price_per_hour_usd": 3600.0})  # a dollar a second: costs show
    async with running(DEFINITION, configured) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        served = [await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hi", max_tokens=n),
                                      metadata=call_metadata()) for n in (2, 3)]
        await stub.Generate(inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hi", max_tokens=1),
                            metadata=call_metadata("other"))
        mine = await stub.GetUsage(inference_pb2.GetUsageRequest(), metadata=call_metadata())
        named = await stub.GetUsage(inference_pb2.GetUsageRequest(models=["tiny-llama", "nope"]),
                                    metadata=call_metadata())
        later = await stub.GetUsage(inference_pb2.GetUsageRequest(since=2**40), metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetUsage(inference_pb2.GetUsageRequest(since=-1), metadata=call_metadata())
    [usage] = mine.usage
    assert (usage.model, usage.completions, usage.completion_tokens) == ("tiny-llama", 2, 5)
    assert usage.prompt_tokens == sum(s.usage.prompt_tokens for s in served) and usage.cost_usd > 0
    assert list(named.usage) == list(mine.usage) and list(later.usage) == []
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(refused.value) == "since"


async def test_score_gives_an_answers_log_probability_and_refuses_bad_requests(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        chat = [common_pb2.ChatMessage(role="user", content="Hi")]
        scored = await stub.Score(inference_pb2.ScoreRequest(model="tiny-llama", messages=chat, answer="Hello"),
                                  metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.Score(inference_pb2.ScoreRequest(model="tiny-llama", messages=chat), metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Score(inference_pb2.ScoreRequest(model="gpt-9", messages=chat, answer="x"),
                             metadata=call_metadata())
    assert scored.logprob < 0 and scored.tokens > 1
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(empty.value) == "answer"
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
