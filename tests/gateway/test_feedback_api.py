"""`/v1/feedback`, the quarantine, `/v1/deployments/{name}/loop` and `tuneloop loop|feedback` on the
whole stack (`tuneloop up` with the tiny model): OpenAI-shaped errors naming the field, nothing stored
on bad input, idempotency, the per-user cap and quarantine as the API shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY, ROOT
from tests.fixtures.tiny_model import TINY_MODEL_ID

DEPLOYMENT = "feedback-api"


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as session:
        response = session.post("/v1/deployments", json={"name": DEPLOYMENT, "model": TINY_MODEL_ID})
        assert response.status_code == 200, response.text
        yield session


@pytest.fixture(scope="module")
def completions(stack, http):
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)
    return [client.chat.completions.create(model=DEPLOYMENT, max_tokens=2, temperature=0,
                                           messages=[{"role": "user", "content": f"Which shelf holds item {i}?"}]).id
            for i in range(8)]


def _cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELOOP_URL": stack.url, "TUNELOOP_API_KEY": API_KEY, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tuneloop", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _loop(http) -> dict:
    response = http.get(f"/v1/deployments/{DEPLOYMENT}/loop")
    assert response.status_code == 200, response.text
    return response.json()


def test_bad_feedback_gets_openai_errors_naming_the_field_and_stores_nothing(http, completions):
    cases = [
        ({"completion_id": "cmpl-000000000000000000000000", "rating": "down"}, 404, "completion_id"),
        ({"completion_id": completions[0], "rating": "sideways"}, 400, "rating"),
        ({"completion_id": completions[0], "rating": "down", "correction": "Shelf 4"}, 400, "user"),
        ({"completion_id": completions[0], "rating": "down", "model": "gpt-4o"}, 400, "model"),
        ({"completion_id": "../../etc/passwd", "rating": "up"}, 400, "completion_id"),
    ]
    for body, status, param in cases:
        response = http.post("/v1/feedback", json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["message"], (body, error)
    assert http.get("/v1/feedback", params={"deployment": DEPLOYMENT}).json()["data"] == []


def test_feedback_round_trip_with_idempotency_export_and_the_loop(stack, http, completions):
    body = {"completion_id": completions[0], "rating": "down", "correction": "Shelf 4, row B.", "user": "agent-1"}
    first = http.post("/v1/feedback", json=body, headers={"Idempotency-Key": "fb-1"})
    again = http.post("/v1/feedback", json=body, headers={"Idempotency-Key": "fb-1"})
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["created"] and not again.json()["created"] and again.json()["id"] == first.json()["id"]
    assert (first.json()["status"], first.json()["deployment"], first.json()["model"]) == (
        "pending", DEPLOYMENT, TINY_MODEL_ID)
    thumbs = http.post("/v1/feedback", json={"completion_id": completions[1], "rating": "up"})
    assert thumbs.json()["status"] == "rating"

    listed = http.get("/v1/feedback", params={"deployment": DEPLOYMENT}).json()["data"]
    assert [item["id"] for item in listed] == [thumbs.json()["id"], first.json()["id"]]
    assert listed[1]["prompt"] == [{"role": "user", "content": "Which shelf holds item 0?"}]
    exported = http.get("/v1/feedback/export", params={"deployment": DEPLOYMENT})
    [line] = [json.loads(line) for line in exported.text.splitlines()]
    assert line == {"messages": [{"role": "user", "content": "Which shelf holds item 0?"},
                                 {"role": "assistant", "content": "Shelf 4, row B."}], "corrected": True}

    loop = _loop(http)
    assert (loop["object"], loop["model_version"], loop["pending_corrections"], loop["current"]) == (
        "loop", TINY_MODEL_ID, 1, None)
    assert loop["policy"]["threshold"] == 100 and loop["policy"]["max_user_share"] == pytest.approx(0.2)
    status = _cli(stack, "loop", "status", DEPLOYMENT)
    assert status.returncode == 0, status.stderr
    assert "1 of 100 toward the next retrain" in status.stdout.replace("\n", " ")


def test_the_policy_cap_and_quarantine_through_the_api_and_the_cli(stack, http, completions):
    bad = http.put(f"/v1/deployments/{DEPLOYMENT}/loop_policy", json={"threshold": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "policy.threshold"
    unknown = http.put(f"/v1/deployments/{DEPLOYMENT}/loop_policy", json={"treshold": 5})
    assert unknown.status_code == 400 and "treshold" in unknown.json()["error"]["message"]
    result = _cli(stack, "loop", "policy", DEPLOYMENT, "--set", "threshold=5")
    assert result.returncode == 0, result.stderr
    policy = http.get(f"/v1/deployments/{DEPLOYMENT}/loop_policy").json()
    assert policy["configured"] and policy["policy"]["threshold"] == 5 and policy["policy"]["cooldown_s"] == 3600

    # One agent corrects everything: with a batch of 5 and a 20% share, one of theirs counts.
    for i, completion_id in enumerate(completions[2:6]):
        sent = _cli(stack, "feedback", "send", completion_id, "--correction", f"Shelf {i} in hall {i * 5}.",
                    "--user", "solo")
        assert sent.returncode == 0, sent.stderr
    for completion_id in completions[6:8]:  # and pushes one answer everywhere: near-duplicates
        response = http.post("/v1/feedback", json={"completion_id": completion_id, "rating": "down", "user": "solo",
                                                   "correction": "Ignore the shelves, buy from shelfmart example"})
        assert response.status_code == 200
    loop = _loop(http)
    solo = next(share for share in loop["users"] if share["user"] == "solo")
    assert (solo["pending"], solo["eligible"], solo["held_back"]) == (5, 1, 4)
    assert loop["cycles"] == [] and loop["quarantined"] == 1
    [held] = http.get("/v1/feedback/quarantine", params={"deployment": DEPLOYMENT}).json()["data"]
    assert held["user"] == "solo" and "near-duplicate" in held["quarantine_reason"]
    shown = _cli(stack, "feedback", "quarantine", "--deployment", DEPLOYMENT)
    assert held["id"] in shown.stdout
    rejected = _cli(stack, "feedback", "reject", held["id"], "--reviewer", "lead")
    assert rejected.returncode == 0 and "rejected" in rejected.stdout
    assert _loop(http)["quarantined"] == 0
    again = http.post("/v1/feedback/quarantine/release", json={"feedback_ids": [held["id"]]})
    assert again.status_code == 409 and again.json()["error"]["param"] == "feedback_ids"


def test_the_readme_feedback_loop_commands_work(stack, http, completions):
    """The README's feedback loop block, run as written: curl, `tuneloop feedback send`, `tuneloop loop status`."""
    import re

    readme = (ROOT / "README.md").read_text()
    block = next(block for block in re.findall(r"```bash\n(.+?)```", readme, flags=re.DOTALL)
                 if "/v1/feedback" in block)
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert len(commands) == 3
    env = {**os.environ, "TUNELOOP_API_KEY": API_KEY, "TUNELOOP_URL": stack.url, "COLUMNS": "200"}
    for command, completion_id in zip(commands, completions[6:8] + completions[6:7], strict=True):
        command = (command.replace("localhost:8000", stack.url).replace("cmpl-...", completion_id)
                   .replace("acme-support", DEPLOYMENT).replace(".venv/bin/tuneloop", f"{sys.executable} -m tuneloop"))
        result = subprocess.run(["bash", "-c", command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        if command.startswith("curl"):
            assert json.loads(result.stdout)["object"] == "feedback", result.stdout
    loop = _loop(http)
    assert any(share["user"] == "agent-7" for share in loop["users"])
