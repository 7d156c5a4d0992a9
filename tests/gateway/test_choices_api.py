"""OpenAI's `n` through the official `openai` SDK on the whole stack: n choices with indexes 0..n-1,
whole and streamed, the usage summed, seeded sampling that repeats itself, and feedback on any choice."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY
from tests.fixtures.tiny_model import TINY_MODEL_ID

QUESTION = [{"role": "user", "content": "Which shelf holds item 9?"}]


@pytest.fixture(scope="module")
def client(stack):
    return OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)


def _by_index(chunks, text) -> list[str]:
    """Each choice's streamed text, by index (`text(choice)` reads a chunk's piece)."""
    count = 1 + max(choice.index for chunk in chunks for choice in chunk.choices)
    return ["".join(text(choice) or "" for chunk in chunks for choice in chunk.choices if choice.index == index)
            for index in range(count)]


def test_n_chat_choices_whole_greedy_and_sampled(client):
    single = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=6, temperature=0)
    reply = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=6, temperature=0, n=3)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    # greedy: every choice is the one answer
    assert {choice.message.content for choice in reply.choices} == {single.choices[0].message.content}
    assert {choice.finish_reason for choice in reply.choices} == {single.choices[0].finish_reason}
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counted once
    assert reply.usage.completion_tokens == 3 * single.usage.completion_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    sampled = [client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=6, temperature=1.0,
                                              seed=17, n=3) for _ in range(2)]
    answers = [[choice.message.content for choice in reply.choices] for reply in sampled]
    assert answers[0] == answers[1] and len(set(answers[0])) == 3  # the same seed, three different answers
    alone = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=6, temperature=1.0,
                                           seed=17)
    assert alone.choices[0].message.content == answers[0][0]  # choice 0 is what n = 1 gives


def test_n_chat_choices_streamed_chunk_by_chunk_with_their_index(client):
    request = {"model": TINY_MODEL_ID, "messages": QUESTION, "max_tokens": 8, "temperature": 1.0, "seed": 23, "n": 3}
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks) and len({c.id for c in chunks}) == 1
    assert all(len(chunk.choices) <= 1 for chunk in chunks)  # one choice a chunk, as OpenAI streams them
    assert _by_index(chunks, lambda choice: choice.delta.content) == [c.message.content for c in whole.choices]
    firsts = {}
    for chunk in chunks:
        for choice in chunk.choices:
            firsts.setdefault(choice.index, choice.delta.role)
    assert firsts == {0: "assistant", 1: "assistant", 2: "assistant"}
    ends = sorted((choice.index, choice.finish_reason) for chunk in chunks for choice in chunk.choices
                  if choice.finish_reason)
    assert ends == [(choice.index, choice.finish_reason) for choice in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_n_text_completions_whole_and_streamed(client):
    request = {"model": TINY_MODEL_ID, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 1.0, "seed": 4,
               "n": 2}
    whole = client.completions.create(**request)
    assert [choice.index for choice in whole.choices] == [0, 1]
    assert whole.choices[0].text != whole.choices[1].text
    assert whole.usage.completion_tokens <= 10 and whole.usage.prompt_tokens > 0
    pieces = list(client.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert _by_index(pieces, lambda choice: choice.text) == [choice.text for choice in whole.choices]
    ends = sorted((c.index, c.finish_reason) for piece in pieces for c in piece.choices if c.finish_reason)
    assert ends == [(choice.index, choice.finish_reason) for choice in whole.choices]
    assert pieces[-1].usage.model_dump() == whole.usage.model_dump()


def test_feedback_on_the_response_id_rates_its_first_choice_and_each_choice_has_its_own(client, stack):
    reply = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=4, temperature=1.0,
                                           seed=31, n=2)
    choice_ids = [reply.id, f"{reply.id}.1"]
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        for completion_id, rating in zip(choice_ids, ("up", "down"), strict=True):
            posted = http.post("/v1/feedback", json={"completion_id": completion_id, "rating": rating})
            assert posted.status_code == 200, posted.text
            assert posted.json()["model"] == TINY_MODEL_ID
        listed = http.get("/v1/feedback", params={"limit": 1000}).json()["data"]
    answers = {item["completion_id"]: item["answer"] for item in listed if item["completion_id"] in choice_ids}
    assert answers == {completion_id: choice.message.content
                       for completion_id, choice in zip(choice_ids, reply.choices, strict=True)}
