"""A distillation job end to end through the real data-prep and training services, on the tiny model.

The teacher is a FAKE OpenAI-compatible server (real HTTP and wire format, answers from a fixed
mapping): no real model can be reached from here. It answers "What colour is item N?" with the
colour of N mod 3, while the training file only has placeholder answers, so whatever the student
learns can only have come from the teacher.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from contextlib import asynccontextmanager

import pytest
import yaml

from protos import dataprep_pb2_grpc, training_pb2, training_pb2_grpc
from services.dataprep.server import DEFINITION as DATAPREP
from services.training.server import DEFINITION as TRAINING
from services.training.settings import TeacherKey
from tests.dataprep.test_datasets import chat, upload
from tests.fixtures.fake_openai import FakeHTTPError, fake_openai_server
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID

COLOURS = ("red", "blue", "green")
TEACHER_KEY = "sk-fake-teacher-5f3c9a"  # what the fake demands; must never be stored
FINISHED = ("succeeded", "failed", "cancelled")
TRAINING_FILE = "\n".join(chat(f"What colour is item {i}?", "?") for i in range(24)).encode()


class Teacher:
    """The fake teacher's answers, and a count of the prompts it was asked."""

    def __init__(self, fail_with: int | None = None):
        self.asked: Counter[str] = Counter()
        self.conversations: list[list[dict]] = []
        self._fail_with = fail_with

    def __call__(self, messages: list[dict], model: str) -> str:
        question = messages[-1]["content"]
        self.asked[question] += 1
        self.conversations.append(messages)
        if self._fail_with:
            raise FakeHTTPError(self._fail_with, "the teacher is broken", code="internal_error")
        if question == "What colour is item 0?" and self.asked[question] == 1:
            raise FakeHTTPError(429, "Rate limit reached for requests", code="rate_limit_exceeded")
        return COLOURS[int(re.search(r"\d+", question).group()) % 3]


@asynccontextmanager
async def services(tmp_path, nats_url, tiny_model_dir, **training):
    base_models = {TINY_MODEL_ID: tiny_model_dir}
    dataprep_settings = service_settings(DATAPREP, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 'd.db'}",
                                         nats_url=nats_url, base_models=base_models, default_base_model=TINY_MODEL_ID)
    async with running(DATAPREP, dataprep_settings) as (dataprep, dataprep_channel):
        training_settings = service_settings(
            TRAINING, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 't.db'}", nats_url=nats_url,
            base_models=base_models, default_base_model=TINY_MODEL_ID, dataprep_addr=f"127.0.0.1:{dataprep.grpc.port}",
            teacher_max_retries=1, **training)
        async with running(TRAINING, training_settings) as (_training, channel):
            yield dataprep_pb2_grpc.DataPrepStub(dataprep_channel), training_pb2_grpc.TrainingStub(channel)


def _keys(base_url: str) -> dict[str, TeacherKey]:
    return {"fake-teacher": TeacherKey(base_url=base_url, api_key=TEACHER_KEY)}


def _request(file_id: str, base_url: str, key_name: str = "fake-teacher") -> training_pb2.CreateJobRequest:
    hyperparameters = training_pb2.Hyperparameters()
    hyperparameters.n_epochs.number, hyperparameters.batch_size.number = 3, 4
    hyperparameters.learning_rate_multiplier.number = 10
    return training_pb2.CreateJobRequest(
        model=TINY_MODEL_ID, training_file=file_id, suffix="distilled", seed=3, hyperparameters=hyperparameters,
        method=training_pb2.Method(type="distillation", replay_fraction=0.0, teacher=training_pb2.Teacher(
            base_url=base_url, model="teacher-1", api_key_name=key_name)))


async def _finish(stub, job_id: str, timeout: float = 240.0) -> training_pb2.Job:
    for _ in range(int(timeout / 0.25)):
        job = (await stub.GetJob(training_pb2.GetJobRequest(job_id=job_id), metadata=call_metadata())).job
        if job.status in FINISHED:
            return job
        await asyncio.sleep(0.25)
    raise AssertionError(f"job {job_id} still {job.status}")


async def _events(stub, job_id: str) -> list[training_pb2.JobEvent]:
    response = await stub.ListJobEvents(training_pb2.ListJobEventsRequest(job_id=job_id, limit=100),
                                        metadata=call_metadata())
    return list(reversed(response.events))


def _stored_bytes(tmp_path) -> bytes:
    """Everything the services wrote: databases, job specs and logs, the answer cache, adapters."""
    return b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


async def test_the_student_learns_the_teachers_answers_asked_once_each_then_from_the_cache(
        tmp_path, nats_url, tiny_model_dir):
    teacher = Teacher()
    with fake_openai_server(teacher, api_key=TEACHER_KEY) as base_url:
        async with services(tmp_path, nats_url, tiny_model_dir, teacher_api_keys=_keys(base_url)) as (dataprep, stub):
            file_id = await upload(dataprep, TRAINING_FILE, filename="colours.jsonl")
            created = (await stub.CreateJob(_request(file_id, base_url), metadata=call_metadata())).job
            assert created.method.teacher.api_key_name == "fake-teacher"
            job = await _finish(stub, created.id)
            assert job.status == "succeeded", job.error
            events = await _events(stub, job.id)

            # every prompt went to the teacher once (item 0 twice: its 429 was retried), without the placeholder
            assert set(teacher.asked) == {f"What colour is item {i}?" for i in range(24)}
            assert teacher.asked.pop("What colour is item 0?") == 2 and set(teacher.asked.values()) == {1}
            assert all(c[-1]["role"] == "user" and all(m["role"] != "assistant" for m in c) for c in teacher.conversations)
            messages = [e.message for e in events]
            distilled = [m for m in messages if m.startswith("distillation:")]
            assert len(distilled) == 2  # the training and the validation split
            assert sum(int(re.search(r"(\d+) asked now", m).group(1)) for m in distilled) == 24
            losses = [e.data["train_loss"] for e in events if e.type == "metrics" and "train_loss" in e.data]
            per_epoch = len(losses) // 3
            assert per_epoch >= 2 and sum(losses[-per_epoch:]) < sum(losses[:per_epoch]), losses
            valid = [e.data["valid_loss"] for e in events if e.type == "metrics" and "valid_loss" in e.data]
            assert len(valid) == 3 and valid[-1] < valid[0], valid  # closer to the teacher's held-out answers

            # the same prompts again: nothing is asked, every answer comes from the cache
            calls = len(teacher.conversations)
            again = (await stub.CreateJob(_request(file_id, base_url), metadata=call_metadata())).job
            again = await _finish(stub, again.id)
            assert again.status == "succeeded", again.error
            assert len(teacher.conversations) == calls
            cached = [e.message for e in await _events(stub, again.id) if "asked now" in e.message]
            assert cached and all("0 asked now" in m for m in cached)
    assert TEACHER_KEY.encode() not in _stored_bytes(tmp_path)  # not in the job records, specs or logs


async def test_a_failing_teacher_fails_the_job_with_its_error(tmp_path, nats_url, tiny_model_dir):
    teacher = Teacher(fail_with=500)
    with fake_openai_server(teacher, api_key=TEACHER_KEY) as base_url:
        async with services(tmp_path, nats_url, tiny_model_dir, teacher_api_keys=_keys(base_url)) as (dataprep, stub):
            file_id = await upload(dataprep, TRAINING_FILE)
            job = (await stub.CreateJob(_request(file_id, base_url), metadata=call_metadata())).job
            job = await _finish(stub, job.id)
    assert job.status == "failed" and job.error.code == "teacher_error"
    assert f"the teacher at {base_url} answered HTTP 500" in job.error.message
    assert "the teacher is broken" in job.error.message
    assert 2 <= len(teacher.conversations) < 24  # retried, then the rest was not asked


async def test_a_wrong_configured_key_fails_the_job_naming_the_key(tmp_path, nats_url, tiny_model_dir):
    with fake_openai_server(Teacher(), api_key=TEACHER_KEY) as base_url:
        keys = {"fake-teacher": TeacherKey(base_url=base_url, api_key="revoked-key")}
        async with services(tmp_path, nats_url, tiny_model_dir, teacher_api_keys=keys) as (dataprep, stub):
            file_id = await upload(dataprep, TRAINING_FILE)
            job = (await stub.CreateJob(_request(file_id, base_url), metadata=call_metadata())).job
            job = await _finish(stub, job.id)
    assert job.status == "failed" and job.error.code == "teacher_error"
    assert "refused the API key" in job.error.message


async def test_requests_naming_an_unusable_teacher_are_refused_before_anything_runs(tmp_path, nats_url,
                                                                                     tiny_model_dir):
    import grpc

    async with services(tmp_path, nats_url, tiny_model_dir,
                        teacher_api_keys=_keys("http://teacher.example/v1")) as (_dataprep, stub):
        for request, param in (
            (_request("file-1", "http://teacher.example/v1", key_name="unknown"), "method.teacher.api_key_name"),
            (_request("file-1", "http://elsewhere.example/v1"), "method.teacher.base_url"),
            (training_pb2.CreateJobRequest(model=TINY_MODEL_ID, training_file="file-1",
                                           method=training_pb2.Method(type="distillation")), "method.teacher"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.CreateJob(request, metadata=call_metadata())
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(error.value) == param
        listed = await stub.ListJobs(training_pb2.ListJobsRequest(), metadata=call_metadata())
        assert not listed.jobs


async def test_the_kubernetes_runner_writes_the_manifest_and_says_no_cluster_is_configured(
        tmp_path, nats_url, tiny_model_dir):
    import kubernetes_validate

    teacher = Teacher()
    with fake_openai_server(teacher, api_key=TEACHER_KEY) as base_url:
        async with services(tmp_path, nats_url, tiny_model_dir, teacher_api_keys=_keys(base_url), runner="kubernetes",
                            kubernetes={"image": "registry.example/tuneloop-gpu:0.1.0", "gpus_per_node": 2}
                            ) as (dataprep, stub):
            file_id = await upload(dataprep, TRAINING_FILE)
            job = (await stub.CreateJob(_request(file_id, base_url), metadata=call_metadata())).job
            job = await _finish(stub, job.id)
    assert job.status == "failed" and job.error.code == "no_cluster"
    assert job.error.message.startswith("no cluster configured")
    manifest = tmp_path / "training" / "jobs" / job.id / "kubernetes.yaml"
    assert str(manifest) in job.error.message
    documents = list(yaml.safe_load_all(manifest.read_text()))
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    config_map, batch_job = documents
    spec = json.loads(config_map["data"]["spec.json"])
    assert spec["job_id"] == job.id and spec["train_path"].startswith("/data/artifacts/sha256/")
    assert spec["method"]["teacher"]["api_key_name"] == "fake-teacher"
    assert batch_job["metadata"]["labels"]["tuneloop/job-id"] == job.id
    assert not teacher.conversations  # nothing ran here
    assert TEACHER_KEY.encode() not in manifest.read_bytes()
