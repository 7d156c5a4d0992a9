"""Jobs run on a remote OpenAI-compatible fine-tuning API. The remote is a real tuneloop gateway (the
session stack), spoken to with the official `openai` SDK; here, data-prep and training run in this
test's event loop, training configured with that gateway as its provider."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from openai import AsyncOpenAI
from pydantic import SecretStr

from protos import dataprep_pb2, dataprep_pb2_grpc, training_pb2, training_pb2_grpc
from services.dataprep.server import DEFINITION as DATAPREP
from services.training.server import DEFINITION
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.stack import API_KEY
from tests.fixtures.tiny_model import TINY_MODEL_ID

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def settings(tmp_path, nats_url, tiny_model_dir):
    common = {"tmp_path": tmp_path, "database_url": f"sqlite:///{tmp_path / 'local.db'}", "nats_url": nats_url,
              "base_models": {TINY_MODEL_ID: tiny_model_dir}}
    return service_settings(DEFINITION, **common), service_settings(DATAPREP, **common)


def _colour_file(n: int) -> bytes:
    colours = ["red", "blue", "green"]
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"What colour is item {i}?"},
                                            {"role": "assistant", "content": colours[i % 3]}]}) + "\n"
                   for i in range(n)).encode()


async def _upload(channel, content: bytes) -> str:
    async def chunks():
        yield dataprep_pb2.UploadFileRequest(header=dataprep_pb2.UploadFileHeader(filename="t.jsonl",
                                                                                  purpose="fine-tune"))
        yield dataprep_pb2.UploadFileRequest(data=content)

    return (await dataprep_pb2_grpc.DataPrepStub(channel).UploadFile(chunks(), metadata=call_metadata())).file.id


def _create(n_epochs: int, batch_size: int, file_id: str, **fields) -> training_pb2.CreateJobRequest:
    hp = training_pb2.Hyperparameters()
    hp.n_epochs.number, hp.batch_size.number = n_epochs, batch_size
    return training_pb2.CreateJobRequest(model=TINY_MODEL_ID, training_file=file_id, hyperparameters=hp, **fields)


async def _job(stub, job_id: str) -> training_pb2.Job:
    return (await stub.GetJob(training_pb2.GetJobRequest(job_id=job_id), metadata=call_metadata())).job


async def _events(stub, job_id: str) -> list[training_pb2.JobEvent]:
    events, after = [], ""
    while True:
        response = await stub.ListJobEvents(training_pb2.ListJobEventsRequest(job_id=job_id, after=after, limit=100),
                                            metadata=call_metadata())
        events += response.events
        if not response.has_more:
            return events[::-1]  # oldest first
        after = events[-1].id


async def _until(check, timeout: float = 240.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _steps(events) -> list[int]:
    return [int(e.data["step"]) for e in events if e.type == "metrics" and e.message.startswith("step ")]


async def test_a_provider_job_trains_remotely_is_mirrored_here_and_survives_a_restart(stack, settings):
    training_settings, dataprep_settings = settings
    remote = AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)
    async with running(DATAPREP, dataprep_settings) as (dataprep_service, dataprep_channel):
        training_settings = training_settings.model_copy(update={
            "dataprep_addr": f"127.0.0.1:{dataprep_service.grpc.port}", "provider_base_url": f"{stack.url}/v1",
            "provider_api_key": SecretStr(API_KEY), "provider_poll_s": 0.3})
        file_id = await _upload(dataprep_channel, _colour_file(30))
        async with running(DEFINITION, training_settings) as (_service, channel):
            stub = training_pb2_grpc.TrainingStub(channel)
            job = (await stub.CreateJob(_create(3, 2, file_id, provider="openai", suffix="remote", seed=3),
                                        metadata=call_metadata())).job
            assert job.provider == "openai" and job.status == "validating_files"

            async def mirrored_a_step():
                current = await _job(stub, job.id)
                assert current.status not in TERMINAL, current.error
                return current if current.provider_job_id and _steps(await _events(stub, job.id)) else None

            remote_id = (await _until(mirrored_a_step, what="a mirrored step")).provider_job_id
        # the service is down while the remote job goes on; started again, it follows the same job
        await asyncio.sleep(1.0)
        async with running(DEFINITION, training_settings) as (_service, channel):
            stub = training_pb2_grpc.TrainingStub(channel)

            async def finished():
                current = await _job(stub, job.id)
                return current if current.status in TERMINAL else None

            done = await _until(finished, what="the job to finish")
            events = await _events(stub, job.id)
            checkpoints = (await stub.ListJobCheckpoints(training_pb2.ListJobCheckpointsRequest(job_id=job.id),
                                                         metadata=call_metadata())).checkpoints
            model = (await stub.GetModel(training_pb2.GetModelRequest(model_id=done.fine_tuned_model),
                                         metadata=call_metadata())).model
        remote_job = await remote.fine_tuning.jobs.retrieve(remote_id)
        remote_events = [e async for e in remote.fine_tuning.jobs.list_events(remote_id, limit=100)][::-1]
        remote_jobs = [j async for j in remote.fine_tuning.jobs.list(limit=100)]
        remote_checkpoints = [c async for c in remote.fine_tuning.jobs.checkpoints.list(remote_id)]
    await remote.close()

    assert done.status == "succeeded", done.error
    assert remote_job.status == "succeeded" and remote_id != job.id
    # our model id is ours; the remote's is kept beside it
    assert done.fine_tuned_model == f"ft:{TINY_MODEL_ID}:acme:remote:{job.id}"
    assert done.provider_model == remote_job.fine_tuned_model == f"ft:{TINY_MODEL_ID}:default:remote:{remote_id}"
    assert done.trained_tokens == remote_job.trained_tokens > 0
    assert model.available and model.kind == "fine-tuned"
    # created once, whatever the restart
    assert [j.id for j in remote_jobs if (j.metadata or {}).get("tuneloop_job_id") == job.id] == [remote_id]
    # every remote step mirrored exactly once, in order; the remote's messages too
    remote_steps = [int(e.data["step"]) for e in remote_events if e.type == "metrics" and e.message.startswith("step ")]
    assert _steps(events) == remote_steps == list(range(1, remote_steps[-1] + 1))
    messages = [e.message for e in events]
    for remote_message in (e.message for e in remote_events if e.type == "message"):
        assert messages.count(f"provider: {remote_message}") == 1, remote_message
    assert "The service restarted; following the provider's job again." in messages
    assert sorted(c.step_number for c in checkpoints) == sorted(c.step_number for c in remote_checkpoints)
    assert len(checkpoints) == 3


async def test_cancelling_a_provider_job_cancels_the_remote_job(stack, settings):
    training_settings, dataprep_settings = settings
    remote = AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)
    async with running(DATAPREP, dataprep_settings) as (dataprep_service, dataprep_channel):
        training_settings = training_settings.model_copy(update={
            "dataprep_addr": f"127.0.0.1:{dataprep_service.grpc.port}", "provider_base_url": f"{stack.url}/v1",
            "provider_api_key": SecretStr(API_KEY), "provider_poll_s": 0.3})
        file_id = await _upload(dataprep_channel, _colour_file(30))
        async with running(DEFINITION, training_settings) as (_service, channel):
            stub = training_pb2_grpc.TrainingStub(channel)
            job = (await stub.CreateJob(_create(50, 1, file_id, provider="openai"), metadata=call_metadata())).job

            async def remote_running():
                current = await _job(stub, job.id)
                assert current.status not in TERMINAL, current.error
                if not current.provider_job_id:
                    return None
                return current if (await remote.fine_tuning.jobs.retrieve(current.provider_job_id)).status == "running" \
                    else None

            remote_id = (await _until(remote_running, what="the remote job to run")).provider_job_id
            cancelled = (await stub.CancelJob(training_pb2.CancelJobRequest(job_id=job.id),
                                              metadata=call_metadata())).job
            assert cancelled.status == "cancelled"
            with pytest.raises(grpc.aio.AioRpcError) as error:  # pausing a provider job is refused, by name
                await stub.PauseJob(training_pb2.PauseJobRequest(job_id=job.id), metadata=call_metadata())
            assert error.value.code() in (grpc.StatusCode.UNIMPLEMENTED,)
            messages = [e.message for e in await _events(stub, job.id)]
        assert (await remote.fine_tuning.jobs.retrieve(remote_id)).status == "cancelled"
    await remote.close()
    assert f"The provider's job {remote_id} was cancelled." in messages


@pytest.mark.parametrize(
    ("fields", "configured", "code", "param"),
    [
        ({"provider": "azure"}, True, grpc.StatusCode.INVALID_ARGUMENT, "provider"),
        ({"provider": "openai"}, False, grpc.StatusCode.FAILED_PRECONDITION, "provider"),
        ({"provider": "openai", "method": training_pb2.Method(type="dpo")}, True, grpc.StatusCode.INVALID_ARGUMENT,
         "method.type"),
    ],
)
async def test_provider_requests_that_cannot_run_are_refused_naming_the_field(settings, fields, configured, code, param):
    training_settings, _ = settings
    if configured:  # nothing listens there: a refused request never reaches it
        training_settings = training_settings.model_copy(update={"provider_base_url": "http://127.0.0.1:9/v1",
                                                                       "provider_api_key": SecretStr("unused")})
    async with running(DEFINITION, training_settings) as (_service, channel):
        stub = training_pb2_grpc.TrainingStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.CreateJob(_create(1, 1, "file-x", **fields), metadata=call_metadata())
        listed = await stub.ListJobs(training_pb2.ListJobsRequest(), metadata=call_metadata())
    assert error.value.code() == code and error_param(error.value) == param
    assert list(listed.jobs) == []
