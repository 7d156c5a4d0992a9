"""The autonomous loop end to end: `tuneloop up` (nats-server, the five services and the gateway as
processes), a deployment serving the tiny Llama, 100 corrections posted through the REST API, and
nothing else: the platform retrains, evaluates and redeploys by itself.

The domain task is generated: a support request's verb decides the team that handles it ("Refund
my router, please." -> "billing"). The untrained model answers nonsense; the corrections teach the
rule. On a 2-layer random model only a full fine-tune learns it (LoRA learns the answers' format),
so the loop's jobs are full fine-tunes at a high learning rate, set through the training service's
TUNELOOP_LOOP_* settings; the training service's general replay is off (the tiny model has no
general answers worth keeping) and the gate's forgetting rule relaxed for the same reason.
"""

from __future__ import annotations

import json
import random
import time

import httpx
import psutil
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY, UpProcess, clean_env
from tests.fixtures.tiny_model import TINY_MODEL_ID

pytestmark = pytest.mark.e2e

DEPLOYMENT = "support"
TEAMS = {"Refund": "billing", "Reset": "security", "Track": "shipping", "Cancel": "orders"}
OBJECTS = ["my router", "the invoice", "a parcel", "my password", "the modem", "my receipt", "the login", "an order",
           "my account", "the app", "a payment", "my card", "the printer", "my phone", "a ticket", "the laptop",
           "my tablet", "the camera", "the charger", "my headset", "the cable", "a voucher", "the subscription",
           "my plan", "the gift"]
USERS = [f"agent-{i}" for i in range(5)]  # five agents: none above the 20% share of a batch
CYCLE_S = 600


def _requests() -> list[tuple[str, str]]:
    """100 support requests and the team each belongs to."""
    pairs = [(f"{verb} {thing}, please.", team) for verb, team in TEAMS.items() for thing in OBJECTS]
    random.Random(0).shuffle(pairs)
    return pairs


def _env(model_dir) -> dict[str, str]:
    return clean_env(
        TUNELOOP_API_KEY=API_KEY,
        TUNELOOP_BASE_MODELS=json.dumps({TINY_MODEL_ID: str(model_dir)}),
        TUNELOOP_DEFAULT_BASE_MODEL=TINY_MODEL_ID,
        TUNELOOP_LOOP_METHOD="full",
        TUNELOOP_LOOP_N_EPOCHS="10",
        TUNELOOP_LOOP_BATCH_SIZE="8",
        TUNELOOP_LOOP_LEARNING_RATE_MULTIPLIER="500",  # full fine-tuning's 2e-5 x 500 = 1e-2
        TUNELOOP_LOOP_REPLAY_FRACTION="0",
        TUNELOOP_DEFAULT_MAX_TOKENS="16",
        TUNELOOP_AUTO_CANARY_S="2",
        TUNELOOP_CANARY_CHECK_S="0.5",
        TUNELOOP_MONITOR_INTERVAL_S="1",
    )


@pytest.fixture(scope="module")
def up(learning_model_dir, tmp_path_factory):
    process = UpProcess(tmp_path_factory.mktemp("loop"), _env(learning_model_dir))
    try:
        process.wait_healthy()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def deployed(up):
    """The stack with deployment `support` (the untrained model, auto-promote) and its policies."""
    with _http(up) as http:
        _set_up_deployment(http)
    return up


def _http(up) -> httpx.Client:
    return httpx.Client(base_url=up.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


def _set_up_deployment(http: httpx.Client) -> None:
    created = http.post("/v1/deployments", json={"name": DEPLOYMENT, "model": TINY_MODEL_ID, "auto_promote": True})
    assert created.status_code == 200, created.text
    gate = http.put(f"/v1/deployments/{DEPLOYMENT}/gate_policy", json={"min_examples": 5, "max_forgetting_drop": 1.0})
    assert gate.status_code == 200, gate.text
    policy = http.put(f"/v1/deployments/{DEPLOYMENT}/loop_policy", json={"cooldown_s": 0})
    assert policy.status_code == 200, policy.text


def _served(up, questions: list[str]) -> list[tuple[str, str]]:
    """(completion id, answer) of each question, asked of the deployment."""
    client = OpenAI(base_url=f"{up.url}/v1", api_key=API_KEY, max_retries=2)
    replies = [client.chat.completions.create(model=DEPLOYMENT, max_tokens=8, temperature=0,
                                              messages=[{"role": "user", "content": question}])
               for question in questions]
    return [(reply.id, reply.choices[0].message.content or "") for reply in replies]


def _correct(http: httpx.Client, completion_ids: list[str], answers: list[str], on_post=None) -> list[dict]:
    posted = []
    for i, (completion_id, answer) in enumerate(zip(completion_ids, answers, strict=True)):
        response = http.post("/v1/feedback", json={"completion_id": completion_id, "rating": "down",
                                                   "correction": answer, "user": USERS[i % len(USERS)]},
                             headers={"Idempotency-Key": f"{completion_id}-fix"})
        assert response.status_code == 200, response.text
        posted.append(response.json())
        if on_post is not None:
            on_post(i)
    return posted


def _loop(http: httpx.Client) -> dict | None:
    """The loop's state; None while the feedback service (or the gateway's way to it) is down."""
    try:
        response = http.get(f"/v1/deployments/{DEPLOYMENT}/loop")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _finished_cycle(http: httpx.Client, cycle_id: str) -> dict:
    deadline = time.monotonic() + CYCLE_S
    while time.monotonic() < deadline:
        loop = _loop(http)
        cycle = next((c for c in (loop or {}).get("cycles", []) if c["id"] == cycle_id), None)
        if cycle is not None and cycle["finished"]:
            return cycle
        time.sleep(1)
    raise AssertionError(f"cycle {cycle_id} did not finish in {CYCLE_S}s; last state: {loop}")


def _jobs_for(http: httpx.Client, request_id: str) -> list[dict]:
    jobs = http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
    return [job for job in jobs if (job.get("metadata") or {}).get("retrain_request_id") == request_id]


def _deployment(http: httpx.Client) -> dict:
    return http.get(f"/v1/deployments/{DEPLOYMENT}").json()


def test_100_corrections_retrain_evaluate_and_redeploy_with_no_further_call(deployed):
    up = deployed
    with _http(up) as http:
        requests = _requests()
        served = _served(up, [question for question, _ in requests])
        assert sum(answer.strip() == team for (_, answer), (_, team) in zip(served, requests, strict=True)) < 10

        posted = _correct(http, [cid for cid, _ in served], [team for _, team in requests])
        requested = [p["retrain_request_id"] for p in posted if p["retrain_request_id"]]
        assert len(requested) == 1 and posted[-1]["retrain_request_id"] == requested[0]  # the 100th did it

        cycle = _finished_cycle(http, requested[0])
        assert cycle["stage"] == "deployed", cycle
        candidate = cycle["candidate_version"]
        assert candidate.startswith(f"ft:{TINY_MODEL_ID}:")
        deployment = _deployment(http)
        assert deployment["model"] == candidate and deployment["previous_model"] == TINY_MODEL_ID
        assert [c["action"] for c in deployment["history"]][-2:] == ["canary", "promoted"]

        # The deployment now answers the corrected prompts with the corrected answers, mostly.
        after = _served(up, [question for question, _ in requests])
        right = sum(answer.strip() == team for (_, answer), (_, team) in zip(after, requests, strict=True))
        assert right >= 70, f"{right} of 100 corrected prompts answered as corrected"

        # Exactly one retrain happened, and the lineage runs from each feedback id to the deployed version.
        loop = _loop(http)
        assert [c["id"] for c in loop["cycles"]] == requested and loop["current"] is None
        assert sorted(cycle["feedback_ids"]) == sorted(p["id"] for p in posted)
        [job] = _jobs_for(http, requested[0])
        assert (job["status"], job["fine_tuned_model"], job["id"]) == ("succeeded", candidate, cycle["job_id"])
        assert job["metadata"]["deployment"] == DEPLOYMENT
        dataset = http.get(f"/v1/datasets/{cycle['dataset_id']}").json()
        assert dataset["status"] == "ready" and dataset["train_examples"] + dataset["validation_examples"] >= 95
        evaluation = http.get(f"/v1/evaluations/{cycle['evaluation_id']}").json()
        assert evaluation["candidate"] == candidate and evaluation["verdict"]["passed"]
        fed = http.get("/v1/feedback", params={"retrain_request_id": requested[0], "limit": 1000}).json()["data"]
        assert len(fed) == 100 and {item["status"] for item in fed} == {"used"}


def test_a_candidate_that_fails_the_gate_leaves_production_and_the_cycle_names_the_rule(deployed):
    """Corrections with codes nobody could predict (random per request): the candidate learns them, but
    on the held-out requests it is no better than production, so the gate says no."""
    up = deployed
    with _http(up) as http:
        production = _deployment(http)["model"]
        codes = random.Random(1)
        questions = [f"Which locker code opens parcel {i}?" for i in range(100)]
        answers = [f"{codes.choice('ABCDEFGHJK')}{codes.randrange(1000, 9999)}" for _ in questions]
        served = _served(up, questions)
        posted = _correct(http, [cid for cid, _ in served], answers)
        [request_id] = [p["retrain_request_id"] for p in posted if p["retrain_request_id"]]

        cycle = _finished_cycle(http, request_id)
        assert cycle["stage"] == "failed", cycle
        assert "gate rejected" in cycle["reason"] and "min_gain: " in cycle["reason"], cycle["reason"]
        assert "production stays" in cycle["reason"]
        assert _deployment(http)["model"] == production


@pytest.fixture
def fresh_up(learning_model_dir, tmp_path):
    process = UpProcess(tmp_path, _env(learning_model_dir))
    try:
        process.wait_healthy()
        yield process
    finally:
        process.stop()


def _service_pid(up, service: str) -> int | None:
    return next((p.pid for p in up.children() if p.cmdline()[-2:] == ["-m", f"services.{service}"]), None)


def _kill(up, service: str) -> tuple[str, int]:
    victim = psutil.Process(_service_pid(up, service))
    victim.kill()  # SIGKILL: no shutdown, no flush
    victim.wait(10)
    return service, victim.pid


def test_the_cycle_completes_once_when_feedback_and_training_are_killed_mid_cycle(fresh_up):
    with _http(fresh_up) as http:
        _set_up_deployment(http)
        requests = _requests()
        served = _served(fresh_up, [question for question, _ in requests])
        killed = []

        def kill_feedback_after_the_last_post(i: int) -> None:
            if i == len(requests) - 1:  # the retrain request is in the outbox; maybe not yet published
                killed.append(_kill(fresh_up, "feedback"))

        posted = _correct(http, [cid for cid, _ in served], [team for _, team in requests],
                          on_post=kill_feedback_after_the_last_post)
        [request_id] = [p["retrain_request_id"] for p in posted if p["retrain_request_id"]]

        deadline = time.monotonic() + CYCLE_S
        while not [job for job in _jobs_for(http, request_id) if job["status"] == "running"]:
            assert time.monotonic() < deadline, "the retraining job never ran"
            time.sleep(0.5)
        killed.append(_kill(fresh_up, "training"))  # its job process goes with it

        cycle = _finished_cycle(http, request_id)
        assert cycle["stage"] == "deployed", cycle
        # Both were really killed, and the launcher started new ones.
        assert [service for service, _ in killed] == ["feedback", "training"]
        assert all(_service_pid(fresh_up, service) not in (None, pid) for service, pid in killed)
        loop = _loop(http)
        assert [c["id"] for c in loop["cycles"]] == [request_id]
        assert len(_jobs_for(http, request_id)) == 1
        history = _deployment(http)["history"]
        assert [c["to_model"] for c in history if c["action"] == "promoted"] == [cycle["candidate_version"]]
        after = _served(fresh_up, [question for question, _ in requests])
        right = sum(answer.strip() == team for (_, answer), (_, team) in zip(after, requests, strict=True))
        assert right >= 70, f"{right} of 100 corrected prompts answered as corrected"
