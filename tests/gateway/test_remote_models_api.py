"""Remote models (TUNELOOP_REMOTE_MODELS) through a second whole stack whose remotes are the session
stack itself, over its OpenAI API and its TGI API: listed by `/v1/models`, retrieved, answering the
official `openai` SDK (n passed on to an OpenAI-compatible remote, refused for TGI)."""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY, UpProcess, clean_env
from tests.fixtures.tiny_model import TINY_MODEL_ID

QUESTION = [{"role": "user", "content": "What colour is item 4?"}]


@pytest.fixture(scope="module")
def outsourcing(stack, tmp_path_factory, tiny_model_dir):
    remote = {"remote-tiny": {"backend": "openai", "base_url": f"{stack.url}/v1", "model": TINY_MODEL_ID,
                              "api_key": API_KEY},
              "remote-tgi": {"backend": "tgi", "base_url": stack.url, "model": TINY_MODEL_ID, "api_key": API_KEY}}
    up = UpProcess(tmp_path_factory.mktemp("outsourcing"), clean_env(
        TUNELOOP_API_KEY=API_KEY, TUNELOOP_BASE_MODELS=json.dumps({TINY_MODEL_ID: str(tiny_model_dir)}),
        TUNELOOP_DEFAULT_BASE_MODEL=TINY_MODEL_ID, TUNELOOP_REMOTE_MODELS=json.dumps(remote)))
    try:
        up.wait_healthy()
        yield OpenAI(base_url=f"{up.url}/v1", api_key=API_KEY, max_retries=0)
    finally:
        up.stop()


@pytest.fixture(scope="module")
def direct(stack):
    return OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)


def test_remote_models_are_listed_after_the_registrys_and_retrieved(outsourcing):
    listed = [(model.id, model.owned_by) for model in outsourcing.models.list()]
    registry, remote = listed[:-2], listed[-2:]
    assert (TINY_MODEL_ID, "tuneloop") in registry and {owner for _, owner in registry} == {"tuneloop"}
    assert remote == [("remote-tgi", "tgi"), ("remote-tiny", "openai")]
    assert [(model.id, model.owned_by) for model in outsourcing.models.list()] == listed  # a stable order
    retrieved = outsourcing.models.retrieve("remote-tiny")
    assert (retrieved.id, retrieved.owned_by, retrieved.object) == ("remote-tiny", "openai", "model")
    assert outsourcing.models.retrieve(TINY_MODEL_ID).owned_by == "tuneloop"
    with pytest.raises(openai.BadRequestError) as refused:
        outsourcing.models.delete("remote-tgi")
    assert refused.value.body["param"] == "model" and "TUNELOOP_REMOTE_MODELS" in refused.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        outsourcing.models.retrieve("remote-nothing")


def test_a_remote_openai_model_answers_n_choices_as_the_remote_does(outsourcing, direct):
    request = {"messages": QUESTION, "max_tokens": 5, "temperature": 1.0, "seed": 8, "n": 2}
    expected = direct.chat.completions.create(model=TINY_MODEL_ID, **request)
    reply = outsourcing.chat.completions.create(model="remote-tiny", **request)
    assert reply.model == "remote-tiny" and [choice.index for choice in reply.choices] == [0, 1]
    assert [c.message.content for c in reply.choices] == [c.message.content for c in expected.choices]
    assert reply.usage.model_dump() == expected.usage.model_dump()
    chunks = list(outsourcing.chat.completions.create(model="remote-tiny", **request, stream=True))
    streamed = ["".join(c.delta.content or "" for chunk in chunks for c in chunk.choices if c.index == index)
                for index in range(2)]
    assert streamed == [c.message.content for c in expected.choices]


def test_a_remote_tgi_model_counts_the_prompts_tokens_and_refuses_n(outsourcing, direct):
    expected = direct.completions.create(model=TINY_MODEL_ID, prompt="Once upon a time", max_tokens=4, temperature=0)
    reply = outsourcing.completions.create(model="remote-tgi", prompt="Once upon a time", max_tokens=4, temperature=0)
    assert reply.choices[0].text == expected.choices[0].text
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError) as refused:
        outsourcing.chat.completions.create(model="remote-tgi", messages=QUESTION, max_tokens=2, n=2)
    assert refused.value.body["param"] == "n" and "TGI" in refused.value.body["message"]
