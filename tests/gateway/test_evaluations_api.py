"""`/v1/evaluations` and `tuneloop eval` on the whole stack (`tuneloop up` with the tiny model).

The stack has one base model, so these runs compare the tiny model with itself: the verdict must
fail (no gain) and say so. A candidate that passes is in tests/evaluation/test_service.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY, ROOT
from tests.fixtures.tiny_model import TINY_MODEL_ID

QUESTIONS = [f"What is the status of order {i}?" for i in range(20)]


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as session:
        yield session


@pytest.fixture(scope="module")
def held_out(stack, tmp_path_factory):
    """The tiny model's own greedy answers as references, as a file on disk."""
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)
    lines = []
    for question in QUESTIONS:
        answer = client.chat.completions.create(model=TINY_MODEL_ID, max_tokens=6, temperature=0,
                                                messages=[{"role": "user", "content": question}])
        lines.append({"messages": [{"role": "user", "content": question},
                                   {"role": "assistant", "content": answer.choices[0].message.content}]})
    path = tmp_path_factory.mktemp("held-out") / "held-out.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _upload(http, path) -> str:
    with open(path, "rb") as handle:
        return http.post("/v1/files", files={"file": (path.name, handle)}, data={"purpose": "fine-tune"}).json()["id"]


def _wait(http, evaluation_id: str) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        evaluation = http.get(f"/v1/evaluations/{evaluation_id}").json()
        if evaluation["status"] in ("completed", "failed"):
            return evaluation
        time.sleep(0.2)
    raise AssertionError(f"{evaluation_id} still {evaluation['status']}")


def test_an_evaluation_over_rest_reports_metrics_per_model_and_the_verdict_with_its_rules(http, held_out):
    file_id = _upload(http, held_out)
    created = http.post("/v1/evaluations", json={"candidate": TINY_MODEL_ID, "file_id": file_id, "max_tokens": 6},
                        headers={"Idempotency-Key": "eval-rest-1"})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["object"] == "evaluation" and body["status"] in ("queued", "running") and body["verdict"] is None
    assert http.post("/v1/evaluations", json={"candidate": TINY_MODEL_ID, "file_id": file_id},
                     headers={"Idempotency-Key": "eval-rest-1"}).json()["id"] == body["id"]
    done = _wait(http, body["id"])
    assert done["status"] == "completed" and done["baseline"] == done["base_model"] == TINY_MODEL_ID
    assert set(done["metrics"][TINY_MODEL_ID]) == {"exact_match", "bleu", "rouge1", "rouge2", "rougeL", "token_f1"}
    assert done["metrics"][TINY_MODEL_ID]["exact_match"] == 1.0  # its own answers, greedy
    low, high = done["intervals"][TINY_MODEL_ID]["token_f1"]
    assert low <= done["metrics"][TINY_MODEL_ID]["token_f1"] <= high
    verdict = done["verdict"]
    assert verdict["passed"] is False and {r["name"]: r["passed"] for r in verdict["rules"]}["min_gain"] is False
    assert "gain +0.000" in verdict["reason"]
    assert done["cost"]["serving"][TINY_MODEL_ID]["completions"] >= len(QUESTIONS)
    examples = http.get(f"/v1/evaluations/{body['id']}/examples").json()["data"]
    assert len(examples) == len(QUESTIONS) and examples[0]["answers"][TINY_MODEL_ID] == examples[0]["reference"]
    listed = http.get("/v1/evaluations", params={"limit": 5}).json()
    assert body["id"] in [e["id"] for e in listed["data"]]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"candidate": TINY_MODEL_ID}, 400, "dataset_id"),
        ({"candidate": "gpt-9", "file_id": "file-x"}, 404, "candidate"),
        ({"candidate": TINY_MODEL_ID, "file_id": "file-x", "metrics": ["meteor"]}, 400, "metrics"),
        ({"candidate": TINY_MODEL_ID, "file_id": "file-x", "policy": {"primary_metric": "vibes"}}, 400, "policy"),
        ({"candidate": TINY_MODEL_ID, "file_id": "file-x", "surprise": 1}, 400, "surprise"),
    ],
)
def test_bad_evaluation_requests_get_openai_errors(http, body, status, param):
    response = http.post("/v1/evaluations", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_an_unknown_evaluation_is_404(http):
    response = http.get("/v1/evaluations/eval-0000")
    assert response.status_code == 404 and response.json()["error"]["code"] == "evaluation_not_found"


def test_tuneloop_eval_runs_prints_the_side_by_side_table_and_exits_1_on_a_failed_verdict(stack, held_out, http,
                                                                                         tmp_path):
    env = dict(os.environ, TUNELOOP_API_KEY=API_KEY, TUNELOOP_URL=stack.url, COLUMNS="240")

    def tuneloop(*args):
        return subprocess.run([sys.executable, "-m", "tuneloop", "eval", *args], capture_output=True, text=True,
                              timeout=240, cwd=ROOT, env=env)

    ran = tuneloop("run", TINY_MODEL_ID, "--file", str(held_out), "--metric", "exact_match", "--metric", "rougeL")
    assert ran.returncode == 1, ran.stdout + ran.stderr  # the verdict failed: no gain over itself
    assert "exact_match" in ran.stdout and "rougeL" in ran.stdout and "bleu" not in ran.stdout
    assert "verdict: failed" in ran.stdout and "min_gain" in ran.stdout and "FAIL" in ran.stdout
    assert "worth: exact_match +0.000 for training cost unknown" in ran.stdout
    assert QUESTIONS[0] in ran.stdout  # the examples, side by side
    evaluation_id = ran.stdout.split("evaluation ")[1].split()[0]
    shown = tuneloop("show", evaluation_id, "--examples", "1")
    assert shown.returncode == 0 and "min_gain" in shown.stdout and "1 of 20 examples" in shown.stdout
    listed = tuneloop("list")
    assert listed.returncode == 0 and evaluation_id in listed.stdout
    missing = tuneloop("show", "eval-nope")
    assert missing.returncode == 2 and "No evaluation" in missing.stdout
    both = tuneloop("run", TINY_MODEL_ID)
    assert both.returncode == 2 and "exactly one of --file and --dataset" in both.stdout

    review_file = tmp_path / "review.csv"
    exported = tuneloop("export", evaluation_id, "--out", str(review_file), "--size", "5")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    review_id = exported.stdout.split("review ")[1].split(":")[0]
    rows = list(csv.DictReader(io.StringIO(review_file.read_text())))
    assert len(rows) == 5 and TINY_MODEL_ID not in review_file.read_text()
    for row in rows:
        row.update({"correct_A": "yes", "correct_B": "yes", "helpful_A": "4", "helpful_B": "4",
                    "would_trust_A": "yes", "would_trust_B": "no", "preferred": "tie"})
    with open(review_file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    imported = tuneloop("import", evaluation_id, review_id, str(review_file))
    assert imported.returncode == 0 and "human review: 5 items rated" in imported.stdout, imported.stdout
    human = http.get(f"/v1/evaluations/{evaluation_id}").json()["human"]
    assert human["rated"] == 5 and human["models"][TINY_MODEL_ID]["helpful"] == 4.0  # the same model as A and B
    review_file.write_text("item,correct_A\nitem-x,yes\n")
    broken = tuneloop("import", evaluation_id, review_id, str(review_file))
    assert broken.returncode == 2 and "the header lacks" in broken.stdout


def test_the_readme_eval_command_works(stack):
    """Run as written (the tiny model stands in for SmolLM2): against itself it cannot pass."""
    import re

    readme = (ROOT / "README.md").read_text()
    env = dict(os.environ, TUNELOOP_API_KEY=API_KEY, TUNELOOP_URL=stack.url, COLUMNS="240")
    commands = re.findall(r"^(\.venv/bin/tuneloop eval .+)$", readme, flags=re.MULTILINE)
    assert commands
    for command in commands:
        args = [TINY_MODEL_ID if arg == "smollm2-135m-instruct" else arg for arg in command.split()[1:]]
        result = subprocess.run([sys.executable, "-m", "tuneloop", *args], capture_output=True, text=True,
                                timeout=300, cwd=ROOT, env=env)
        assert result.returncode == 1 and "verdict: failed" in result.stdout, result.stdout + result.stderr


def test_a_deployments_gate_policy_over_rest(http):
    assert http.get("/v1/deployments/rest-gate/gate_policy").json()["configured"] is False
    stored = http.put("/v1/deployments/rest-gate/gate_policy", json={"primary_metric": "token_f1", "min_ratio": 1.5})
    assert stored.status_code == 200, stored.text
    assert stored.json()["policy"]["primary_metric"] == "token_f1" and stored.json()["configured"] is True
    assert http.get("/v1/deployments/rest-gate/gate_policy").json()["policy"]["min_ratio"] == 1.5
    refused = http.put("/v1/deployments/rest-gate/gate_policy", json={"primary_metric": "vibes"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "policy"
