"""Synthetic data from a teacher model. The teacher is a FAKE OpenAI-compatible server (real HTTP and
wire format, canned answers): no real model can be reached from here."""

from __future__ import annotations

import itertools
import json

import grpc
import pytest

from protos import dataprep_pb2, dataprep_pb2_grpc
from services.dataprep.server import DEFINITION
from tests.dataprep.test_datasets import chat, upload, wait_done
from tests.fixtures.fake_openai import fake_openai_server
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID

SEEDS = "\n".join(chat(f"How do I reset my password on device {i}?", f"Open Settings, then Security, then Reset on device {i}.")
                  for i in range(5)).encode()
counter = itertools.count()


def teacher_answer(messages: list[dict], model: str) -> str:
    """Writes a few new examples per request, plus one broken line and one copy of a seed."""
    assert "Seed examples" in messages[-1]["content"]
    wanted = int(messages[-1]["content"].rsplit("Write ", 1)[1].split()[0])
    lines = [chat(f"Question {n} about billing cycle {n * 3}?", f"Answer {n}: cycles renew monthly.")
             for n in (next(counter) for _ in range(wanted))]
    lines.append('{"messages": [{"role": "user"')  # the teacher sometimes writes broken JSON
    lines.append(chat("How do I reset my password on device 0?", "Open Settings, then Security, then Reset on device 0."))
    return "```jsonl\n" + "\n".join(lines) + "\n```"


@pytest.fixture
def settings(tmp_path, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 'd.db'}",
                            nats_url=nats_url, base_models={TINY_MODEL_ID: tiny_model_dir},
                            default_base_model=TINY_MODEL_ID)


async def test_generated_examples_are_validated_and_prepared_as_a_dataset(settings):
    with fake_openai_server(teacher_answer) as base_url:
        async with running(DEFINITION, settings) as (_service, channel):
            stub = dataprep_pb2_grpc.DataPrepStub(channel)
            seed_id = await upload(stub, SEEDS, filename="seeds.jsonl")
            response = await stub.GenerateSynthetic(dataprep_pb2.GenerateSyntheticRequest(
                seed_file_id=seed_id, count=25, teacher_base_url=base_url, teacher_api_key="teacher-key",
                teacher_model="teacher-1", instructions="Billing questions only.",
                options=dataprep_pb2.PrepareOptions(anonymize_pii=False)), metadata=call_metadata(), timeout=60)
            dataset = await wait_done(stub, response.dataset.id)
            content = b"".join([c.data async for c in stub.GetFileContent(
                dataprep_pb2.GetFileContentRequest(file_id=response.file.id), metadata=call_metadata())])
    lines = [json.loads(line) for line in content.decode().splitlines()]
    assert response.generated == 25 and len(lines) == 25
    assert all(line["messages"][0]["content"].startswith("Question") for line in lines)  # no seed copies
    assert response.file.filename == "synthetic-seeds.jsonl"
    assert dataset.status == "ready" and dataset.train_examples + dataset.validation_examples == 25


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"teacher_api_key": "wrong"}, grpc.StatusCode.FAILED_PRECONDITION, "teacher_api_key"),
        ({"teacher_model": "nope"}, grpc.StatusCode.FAILED_PRECONDITION, "teacher_model"),
        ({"teacher_base_url": "ftp://x"}, grpc.StatusCode.INVALID_ARGUMENT, "teacher_base_url"),
        ({"count": 0}, grpc.StatusCode.INVALID_ARGUMENT, "count"),
    ],
)
async def test_teacher_problems_are_named(settings, fields, code, param):
    with fake_openai_server(teacher_answer) as base_url:
        async with running(DEFINITION, settings) as (_service, channel):
            stub = dataprep_pb2_grpc.DataPrepStub(channel)
            seed_id = await upload(stub, SEEDS)
            request = {"seed_file_id": seed_id, "count": 3, "teacher_base_url": base_url,
                       "teacher_api_key": "teacher-key", "teacher_model": "teacher-1", **fields}
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.GenerateSynthetic(dataprep_pb2.GenerateSyntheticRequest(**request), metadata=call_metadata())
    assert error.value.code() == code and error_param(error.value) == param


async def test_an_unreachable_teacher_is_unavailable(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        seed_id = await upload(stub, SEEDS)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GenerateSynthetic(dataprep_pb2.GenerateSyntheticRequest(
                seed_file_id=seed_id, count=3, teacher_base_url="http://127.0.0.1:1/v1", teacher_model="t"),
                metadata=call_metadata(), timeout=60)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
