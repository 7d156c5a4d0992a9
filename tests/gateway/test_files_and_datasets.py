"""/v1/files and /v1/datasets over real HTTP on the whole stack, with the official openai SDK where OpenAI has the route."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY, ROOT

SAMPLE = ROOT / "tuneloop" / "samples" / "support.jsonl"


@pytest.fixture(scope="module")
def client(stack):
    return OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as session:
        yield session


def _wait(http, dataset_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dataset = http.get(f"/v1/datasets/{dataset_id}").json()
        if dataset["status"] != "processing":
            return dataset
        time.sleep(0.2)
    raise AssertionError("dataset still processing")


def test_openai_sdk_uploads_lists_reads_and_deletes_files(client):
    uploaded = client.files.create(file=("train.jsonl", SAMPLE.read_bytes()), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == SAMPLE.stat().st_size
    assert uploaded.filename == "train.jsonl" and uploaded.purpose == "fine-tune"
    assert uploaded.id in [f.id for f in client.files.list(purpose="fine-tune")]
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    assert client.files.content(uploaded.id).read() == SAMPLE.read_bytes()
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError) as error:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert error.value.body["param"] == "purpose"


def test_a_dataset_is_prepared_and_read_over_rest(client, http):
    file_id = client.files.create(file=("support.jsonl", SAMPLE.read_bytes()), purpose="fine-tune").id
    created = http.post("/v1/datasets", json={"file_id": file_id, "drop_invalid": True, "seed": 3})
    assert created.status_code == 200 and created.json()["object"] == "dataset"
    dataset = _wait(http, created.json()["id"])
    assert dataset["status"] == "ready", dataset
    report = http.get(f"/v1/datasets/{dataset['id']}/report").json()["report"]
    assert report["invalid"]["total_lines"] == 1 and report["duplicates"]["exact"] == 1
    assert report["pii"]["replacements"]["EMAIL_ADDRESS"] == 1
    train = http.get(f"/v1/datasets/{dataset['id']}/content", params={"split": "train"})
    validation = http.get(f"/v1/datasets/{dataset['id']}/content", params={"split": "validation"})
    examples = [json.loads(line) for line in (train.text + validation.text).splitlines()]
    removed = report["invalid"]["total_lines"] + report["duplicates"]["exact"] + report["duplicates"]["near"]
    assert len(examples) == dataset["train_examples"] + dataset["validation_examples"] == 63 - removed
    assert "maria.lopez@example.com" not in train.text + validation.text
    sample = http.get(f"/v1/datasets/{dataset['id']}/review_sample", params={"size": 10, "format": "csv"})
    assert sample.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(sample.text)))) == 10
    assert dataset["id"] in [d["id"] for d in http.get("/v1/datasets").json()["data"]]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"file_id": "file-000000000000000000000000"}, 404, "file_id"),
        ({"file_id": "FILE", "validation_fraction": 2}, 400, "validation_fraction"),
        ({"file_id": "FILE", "colour": "blue"}, 400, "colour"),
        ({}, 400, "file_id"),
    ],
)
def test_bad_dataset_requests_get_openai_errors(client, http, body, status, param):
    if body.get("file_id") == "FILE":
        body["file_id"] = client.files.create(file=("a.jsonl", SAMPLE.read_bytes()), purpose="fine-tune").id
    before = len(http.get("/v1/datasets").json()["data"])
    response = http.post("/v1/datasets", json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param
    assert len(http.get("/v1/datasets").json()["data"]) == before


def test_reading_a_dataset_that_is_not_there(http):
    for path in ("/v1/datasets/ds-nope", "/v1/datasets/ds-nope/report", "/v1/datasets/ds-nope/content"):
        response = http.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "dataset_not_found"


def test_cli_data_prepare_prints_the_report(stack):
    result = subprocess.run(
        [sys.executable, "-m", "tuneloop", "data", "prepare", str(SAMPLE), "--drop-invalid", "--url", stack.url],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=dict(os.environ, TUNELOOP_API_KEY=API_KEY),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"dataset ds-\w+: ready", result.stdout)
    assert "invalid lines: 1" in result.stdout and "duplicates removed" in result.stdout
    strict = subprocess.run(
        [sys.executable, "-m", "tuneloop", "data", "prepare", str(SAMPLE), "--url", stack.url],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=dict(os.environ, TUNELOOP_API_KEY=API_KEY),
    )
    assert strict.returncode == 1 and "failed" in strict.stdout and "line 63" in strict.stdout


def test_readme_data_commands_work(stack):
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(\.venv/bin/tuneloop data .+)$", readme, flags=re.MULTILINE)
    assert commands
    for command in commands:
        argv = command.split()[1:]
        result = subprocess.run([sys.executable, "-m", "tuneloop", *argv, "--url", stack.url], capture_output=True,
                                text=True, timeout=180, cwd=ROOT, env=dict(os.environ, TUNELOOP_API_KEY=API_KEY))
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"


def test_synthetic_data_over_rest(client, http):
    """The teacher is a FAKE OpenAI-compatible server (real HTTP and wire format, canned answers)."""
    from tests.dataprep.test_synthetic import SEEDS, teacher_answer
    from tests.fixtures.fake_openai import fake_openai_server

    seed_id = client.files.create(file=("seeds.jsonl", SEEDS), purpose="fine-tune").id
    with fake_openai_server(teacher_answer) as base_url:
        response = http.post("/v1/datasets/synthetic", json={
            "seed_file_id": seed_id, "count": 12,
            "teacher": {"base_url": base_url, "api_key": "teacher-key", "model": "teacher-1"},
            "options": {"anonymize_pii": False},
        }, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["generated"] == 12 and body["file"]["filename"] == "synthetic-seeds.jsonl"
    assert _wait(http, body["dataset"]["id"])["status"] == "ready"
    bad = http.post("/v1/datasets/synthetic", json={"seed_file_id": seed_id, "count": 0,
                                                   "teacher": {"base_url": "http://x", "model": "m"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "count"
