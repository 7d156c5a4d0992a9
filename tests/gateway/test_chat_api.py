"""The official `openai` SDK chatting with tuneloop: the base model and a model fine-tuned on the stack."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY
from tests.fixtures.tiny_model import TINY_MODEL_ID
from tests.gateway.test_fine_tuning_api import _task_file, _wait

QUESTION = [{"role": "user", "content": "What colour is item 4?"}]


@pytest.fixture(scope="module")
def client(stack):
    return OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)


def test_the_sdk_chats_with_the_base_model(client):
    reply = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("cmpl-") and reply.model == TINY_MODEL_ID
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 5 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    again = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=5, temperature=0)
    assert again.choices[0].message.content == choice.message.content and again.id != reply.id
    # seeded sampling repeats itself
    sampled = [client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=6, seed=11,
                                              temperature=1.0).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_the_sdk_completes_a_prompt(client):
    reply = client.completions.create(model=TINY_MODEL_ID, prompt="Once upon a time", max_tokens=4, temperature=0)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.usage.completion_tokens <= 4 and isinstance(reply.choices[0].text, str)


def test_the_sdk_chats_with_a_model_it_fine_tuned(client):
    file = _task_file(client, n=24)
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id, suffix="chat",
                                         hyperparameters={"n_epochs": 1})
    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=4, temperature=0)
    assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens > 0
    client.models.delete(job.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=QUESTION, max_tokens=4)


@pytest.mark.parametrize(("fields", "error", "param"), [
    ({"model": "gpt-9"}, openai.NotFoundError, "model"),
    ({"model": "ft:tiny-llama:default:x:ftjob-0123456789abcdef01234567"}, openai.NotFoundError, "model"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "messages.0.role"),
    ({"messages": []}, openai.BadRequestError, "messages"),
    ({"temperature": 3}, openai.BadRequestError, "temperature"),
    ({"max_tokens": 100_000}, openai.BadRequestError, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop"),
    ({"presence_penalty": 0.5}, openai.BadRequestError, "presence_penalty"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, "tools"),
    ({"stream_options": {"include_usage": True}}, openai.BadRequestError, "stream_options"),
    ({"stream": True, "model": "gpt-9"}, openai.NotFoundError, "model"),
    ({"n": 0}, openai.BadRequestError, "n"),
    ({"n": 9}, openai.BadRequestError, "n"),  # past the inference service's max_choices (8)
    ({"n": 129}, openai.BadRequestError, "n"),  # past OpenAI's own limit
    ({"n": 1.5}, openai.BadRequestError, "n"),
])
def test_bad_requests_get_openai_errors_naming_the_field(client, fields, error, param):
    arguments = {"model": TINY_MODEL_ID, "messages": QUESTION, "max_tokens": 2, **fields}
    with pytest.raises(error) as raised:
        client.chat.completions.create(**arguments)
    assert raised.value.body["param"] == param, raised.value.body
    assert raised.value.status_code in (400, 404)
    if param == "n":
        assert raised.value.status_code == 400 and raised.value.body["type"] == "invalid_request_error"


def test_the_readme_chat_example_works(stack, capsys):
    import re

    from tests.fixtures.stack import ROOT

    readme = (ROOT / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.+?)```", readme, flags=re.DOTALL)
                   if "chat.completions.create" in block)
    snippet = snippet.replace("http://localhost:8000/v1", f"{stack.url}/v1").replace(
        '"smollm2-135m-instruct"', f'"{TINY_MODEL_ID}"')
    exec(compile(snippet, "README.md", "exec"), {"TUNELOOP_API_KEY": API_KEY})  # noqa: S102 - the README's own example
    assert capsys.readouterr().out.startswith("cmpl-")


def test_the_sdk_streams_the_same_text_it_gets_whole(client):
    whole = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=12,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it did arrive in pieces

    pieces = list(client.completions.create(model=TINY_MODEL_ID, prompt="Once upon a time", max_tokens=8,
                                            temperature=0, stream=True))
    plain = client.completions.create(model=TINY_MODEL_ID, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert "".join(p.choices[0].text for p in pieces) == plain.choices[0].text
    assert pieces[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_a_client_that_leaves_mid_stream_does_not_hold_the_model(client, stack):
    import httpx

    body = {"model": TINY_MODEL_ID, "messages": QUESTION, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: ")).startswith("data: {")
    # gone after one chunk; the next request is served at once
    reply = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=2, temperature=0,
                                           timeout=30)
    assert reply.usage.completion_tokens > 0


def test_tuneloop_chat_streams_answers_keeps_the_conversation_and_shows_errors(stack):
    import os
    import subprocess
    import sys

    from tests.fixtures.stack import ROOT

    env = dict(os.environ, TUNELOOP_API_KEY=API_KEY, TUNELOOP_URL=stack.url, COLUMNS="200")
    typed = "What colour is item 4?\n/reset\nAnd item 5?\n/exit\n"
    session = subprocess.run([sys.executable, "-m", "tuneloop", "chat", TINY_MODEL_ID, "--temperature", "0",
                              "--max-tokens", "5"], input=typed, capture_output=True, text=True, timeout=120,
                             cwd=ROOT, env=env)
    assert session.returncode == 0, session.stdout + session.stderr
    assert session.stdout.count("(cmpl-") == 2 and "(conversation forgotten)" in session.stdout
    # the first answer is what the API gives for that one question
    first = session.stdout.split(f"{TINY_MODEL_ID}> ", 2)[1].split("\n(cmpl-")[0]
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)
    expected = client.chat.completions.create(model=TINY_MODEL_ID, messages=QUESTION, max_tokens=5, temperature=0)
    assert first == expected.choices[0].message.content

    unknown = subprocess.run([sys.executable, "-m", "tuneloop", "chat", "gpt-9"], input="hello\n", capture_output=True,
                             text=True, timeout=60, cwd=ROOT, env=env)
    assert unknown.returncode == 0 and "404" in unknown.stdout and "gpt-9" in unknown.stdout


def test_deployments_over_rest_decide_which_model_answers_the_sdk(client, stack):
    import httpx

    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as http:
        file = _task_file(client, n=24)
        job = _wait(client, client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id, suffix="dep",
                                                           hyperparameters={"n_epochs": 1}).id)
        assert job.status == "succeeded", job.error
        created = http.post("/v1/deployments", json={"name": "acme-support", "model": TINY_MODEL_ID})
        assert created.status_code == 200, created.text
        assert client.chat.completions.create(model="acme-support", messages=QUESTION, max_tokens=2).model == TINY_MODEL_ID

        promoted = http.post("/v1/deployments/acme-support/promote", json={"model": job.fine_tuned_model}).json()
        assert (promoted["model"], promoted["previous_model"]) == (job.fine_tuned_model, TINY_MODEL_ID)
        streamed = list(client.chat.completions.create(model="acme-support", messages=QUESTION, max_tokens=2,
                                                       stream=True))
        assert {chunk.model for chunk in streamed} == {job.fine_tuned_model}

        canary = http.post("/v1/deployments/acme-support/canary", json={"model": TINY_MODEL_ID, "percent": 50}).json()
        assert canary["canary"] == {"model": TINY_MODEL_ID, "percent": 50}
        seen = {client.chat.completions.create(model="acme-support", messages=QUESTION, max_tokens=1,
                                               user=f"agent-{i}").model for i in range(16)}
        assert seen == {TINY_MODEL_ID, job.fine_tuned_model}

        rolled = http.post("/v1/deployments/acme-support/rollback", json={"reason": "quality dropped"}).json()
        assert rolled["model"] == TINY_MODEL_ID and rolled["canary"] is None
        assert [c["action"] for c in rolled["history"]] == ["created", "promoted", "canary", "rolled_back"]
        assert http.get("/v1/deployments").json()["data"][0]["id"] == "acme-support"

        bad = http.post("/v1/deployments", json={"name": "Bad Name", "model": TINY_MODEL_ID})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
        missing = http.post("/v1/deployments/nope/rollback", json={})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "deployment_not_found"
        assert http.delete("/v1/deployments/acme-support").json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="acme-support", messages=QUESTION, max_tokens=1)


def test_tuneloop_deploy_creates_promotes_rolls_back_and_shows_history(stack):
    import os
    import subprocess
    import sys

    from tests.fixtures.stack import ROOT

    env = dict(os.environ, TUNELOOP_API_KEY=API_KEY, TUNELOOP_URL=stack.url, COLUMNS="200")

    def tuneloop(*args):
        return subprocess.run([sys.executable, "-m", "tuneloop", "deploy", *args], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, env=env)

    created = tuneloop("create", "cli-support", TINY_MODEL_ID)
    assert created.returncode == 0 and f"cli-support: {TINY_MODEL_ID}" in created.stdout, created.stdout + created.stderr
    canary = tuneloop("canary", "cli-support", TINY_MODEL_ID, "30")
    assert canary.returncode == 2 and "already serves" in canary.stdout
    promoted = tuneloop("promote", "cli-support", TINY_MODEL_ID, "--reason", "same again")
    assert promoted.returncode == 0 and "previous: -" in promoted.stdout  # already served: nothing changes
    refused = tuneloop("rollback", "cli-support")
    assert refused.returncode == 2 and "no earlier version" in refused.stdout
    shown = tuneloop("show", "cli-support")
    assert shown.returncode == 0 and "created" in shown.stdout
    assert "cli-support" in tuneloop("list").stdout
    assert tuneloop("delete", "cli-support").returncode == 0
    assert tuneloop("show", "cli-support").returncode == 2
