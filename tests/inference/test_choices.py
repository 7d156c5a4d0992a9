"""n choices per request (OpenAI's `n`): one batch in the engine, a seed per choice, one log row per
choice under ids derived from the response's; over the generator and over gRPC, with the tiny model."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
import sqlalchemy as sa

from protos import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference import store
from services.inference.generation import Generator
from services.inference.server import DEFINITION
from services.shared.errors import InvalidArgument
from services.shared.models import ModelStore
from services.shared.settings import Settings
from tests.fixtures.engine import same
from tests.fixtures.services import call_metadata, error_param, running, service_settings

MODEL = "tiny-llama"
CHAT = [{"role": "user", "content": "Hello there"}]
SAMPLED = {"prompt": "Once upon", "max_tokens": 8, "temperature": 1.0, "seed": 11}


# float32, not the machine's "auto" (bf16 where the CPU has it): these tests compare n choices (rows
# of one batch) with n = 1 token for token on a random model whose logits are nearly uniform, and bf16's
# coarser rounding in a batch of another shape could flip such an argmax. test_precision.py
# covers bf16.
EXACT = "float32"


@pytest.fixture
def generator(tiny_settings: Settings) -> Generator:
    return Generator(ModelStore(tiny_settings), dtype=EXACT)


def test_the_choices_of_a_request_read_the_prompt_once_and_decode_side_by_side(generator: Generator) -> None:
    alone = generator.generate(MODEL, messages=CHAT, max_tokens=6, temperature=0)
    engine = generator.engine(MODEL)
    before = replace(engine.stats)
    choices = generator.generate_choices(MODEL, n=3, messages=CHAT, max_tokens=6, temperature=0)
    assert len(choices) == 3
    for choice in choices:  # greedy: every choice is the one answer
        same(choice, alone)
        assert choice.prompt_tokens == alone.prompt_tokens
    # one prefill of one row, then each step decodes the three rows together
    assert engine.stats.steps - before.steps == alone.completion_tokens
    assert engine.stats.rows - before.rows == 1 + 3 * (alone.completion_tokens - 1)
    assert engine.stats.shared_prompts - before.shared_prompts == 2
    assert engine.stats.submitted - before.submitted == 3


def test_seeded_choices_repeat_themselves_differ_from_each_other_and_stream_by_index(generator: Generator) -> None:
    first = generator.generate_choices(MODEL, n=3, **SAMPLED)
    pieces = {index: "" for index in range(3)}

    def on_text(index: int, text: str, _tokens) -> None:
        pieces[index] += text

    again = generator.generate_choices(MODEL, n=3, on_text=on_text, **SAMPLED)
    for choice, repeated in zip(first, again, strict=True):
        same(repeated, choice)
    assert len({choice.text for choice in first}) == 3
    assert [pieces[index] for index in range(3)] == [choice.text for choice in again]
    # choice i samples with seed + i: choice 0 is what n = 1 gives
    same(first[0], generator.generate(MODEL, **SAMPLED))
    same(first[1], generator.generate(MODEL, **{**SAMPLED, "seed": SAMPLED["seed"] + 1}))
    unseeded = generator.generate_choices(MODEL, n=3, **{**SAMPLED, "seed": None})
    assert len({choice.text for choice in unseeded}) == 3


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_n_must_be_a_positive_integer(generator: Generator, n) -> None:
    with pytest.raises(InvalidArgument) as refused:
        generator.generate_choices(MODEL, n=n, prompt="Hi", max_tokens=1)
    assert refused.value.param == "n"


@pytest.fixture
def settings(tmp_path, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 'i.db'}",
                            nats_url=nats_url, base_models={MODEL: tiny_model_dir}, inference_dtype=EXACT)


async def _logged(service) -> dict[str, dict]:
    async with service.runtime.db.transaction() as session:
        return {row["id"]: dict(row) for row in (await session.execute(sa.select(store.completions))).mappings()}


async def test_n_choices_come_back_by_index_and_each_is_logged_and_read_back_under_its_own_id(settings):
    request = inference_pb2.GenerateRequest(model=MODEL, prompt=SAMPLED["prompt"], max_tokens=5, temperature=1.0,
                                            seed=3)
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        single = await stub.Generate(request, metadata=call_metadata())
        request.n = 3
        reply = await stub.Generate(request, metadata=call_metadata())
        read = [await stub.GetCompletion(inference_pb2.GetCompletionRequest(completion_id=choice.completion_id),
                                         metadata=call_metadata()) for choice in reply.choices]
        rows = await _logged(service)
        usage = await stub.GetUsage(inference_pb2.GetUsageRequest(models=[MODEL]), metadata=call_metadata())
    ids = [choice.completion_id for choice in reply.choices]
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert ids == [reply.completion_id, f"{reply.completion_id}.1", f"{reply.completion_id}.2"]
    assert (reply.text, reply.finish_reason, list(reply.tokens)) == (
        reply.choices[0].text, reply.choices[0].finish_reason, list(reply.choices[0].tokens))
    assert reply.choices[0].text == single.text and len({choice.text for choice in reply.choices}) == 3
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens
    assert reply.usage.completion_tokens == sum(choice.completion_tokens for choice in reply.choices) > 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # feedback against the response's id reads its first choice; each choice reads back by its own id
    assert [completion.text for completion in read] == [choice.text for choice in reply.choices]
    assert {completion.prompt for completion in read} == {SAMPLED["prompt"]}
    assert [rows[i]["prompt_tokens"] for i in ids] == [reply.usage.prompt_tokens, 0, 0]
    assert [rows[i]["completion_tokens"] for i in ids] == [choice.completion_tokens for choice in reply.choices]
    [model_usage] = usage.usage
    assert (model_usage.completions, model_usage.prompt_tokens, model_usage.completion_tokens) == (
        4, 2 * single.usage.prompt_tokens, single.usage.completion_tokens + reply.usage.completion_tokens)


async def test_streamed_choices_name_their_index_and_the_last_chunk_has_the_summed_usage(settings):
    request = inference_pb2.GenerateRequest(model=MODEL, messages=[common_pb2.ChatMessage(**m) for m in CHAT],
                                            max_tokens=6, temperature=1.0, seed=5, n=3)
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        whole = await stub.Generate(request, metadata=call_metadata())
        chunks = [chunk async for chunk in stub.GenerateStream(request, metadata=call_metadata())]
        rows = await _logged(service)
    streamed_id = chunks[0].completion_id
    assert {chunk.completion_id for chunk in chunks} == {streamed_id} != {whole.completion_id}
    texts = ["".join(chunk.text for chunk in chunks if chunk.index == index) for index in range(3)]
    assert texts == [choice.text for choice in whole.choices]  # same seed, same three answers
    ends = [(chunk.index, chunk.finish_reason) for chunk in chunks if chunk.finish_reason]
    assert sorted(ends) == [(choice.index, choice.finish_reason) for choice in whole.choices]
    assert [chunk.HasField("usage") for chunk in chunks].count(True) == 1 and chunks[-1].HasField("usage")
    assert chunks[-1].usage == whole.usage
    for index, text in enumerate(texts):
        row = rows[streamed_id if index == 0 else f"{streamed_id}.{index}"]
        assert (row["response"], row["stream"]) == (text, True)


async def test_more_choices_than_the_service_allows_are_refused_naming_n_and_log_nothing(settings):
    configured = settings.model_copy(update={"max_choices": 2})
    async with running(DEFINITION, configured) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        for n in (3, -1):
            request = inference_pb2.GenerateRequest(model=MODEL, prompt="Hi", max_tokens=1, n=n)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Generate(request, metadata=call_metadata())
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_param(refused.value) == "n" and "from 1 to 2" in refused.value.details()
        allowed = await stub.Generate(inference_pb2.GenerateRequest(model=MODEL, prompt="Hi", max_tokens=1, n=2),
                                      metadata=call_metadata())
        rows = await _logged(service)
    assert len(allowed.choices) == 2 and len(rows) == 2


async def test_a_stream_of_choices_whose_client_leaves_logs_every_choice_as_cancelled(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = stub.GenerateStream(inference_pb2.GenerateRequest(model=MODEL, prompt="Once", max_tokens=200,
                                                                 temperature=1.0, seed=2, n=2),
                                   metadata=call_metadata())
        first = await call.read()
        call.cancel()
        ids = [first.completion_id, f"{first.completion_id}.1"]
        for _ in range(100):
            rows = await _logged(service)
            if all(completion_id in rows for completion_id in ids):
                break
            await asyncio.sleep(0.05)
    assert [(rows[i]["finish_reason"], rows[i]["stream"]) for i in ids] == [("cancelled", True)] * 2
    assert all(0 < rows[i]["completion_tokens"] < 200 for i in ids)
    assert rows[ids[first.index]]["response"].startswith(first.text)
