"""The training service over gRPC: the model registry, and jobs paused and resumed."""

import asyncio
import json
import time

import grpc
import psutil
import pytest
import sqlalchemy as sa

from protos import dataprep_pb2, dataprep_pb2_grpc, events_pb2, training_pb2, training_pb2_grpc
from services.dataprep.server import DEFINITION as DATAPREP
from services.training.server import DEFINITION
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID


@pytest.fixture
def settings(tmp_path, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 't.db'}",
                            nats_url=nats_url, base_models={"tiny-llama": tiny_model_dir})


async def test_lists_the_default_and_configured_base_models(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = training_pb2_grpc.TrainingStub(channel)
        models = (await stub.ListModels(training_pb2.ListModelsRequest(), metadata=call_metadata())).models
        tiny = (await stub.GetModel(training_pb2.GetModelRequest(model_id="tiny-llama"), metadata=call_metadata())).model
    assert [m.id for m in models] == ["smollm2-135m-instruct", "tiny-llama"]
    assert all(m.kind == "base" and m.owned_by == "tuneloop" for m in models)
    assert tiny.available and tiny.created > 0


@pytest.mark.parametrize("model_id", ["gpt-9", "../../etc", "ft:tiny-llama:acme:x:ftjob-1"])
async def test_unknown_model_ids_are_not_found(settings, model_id):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = training_pb2_grpc.TrainingStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetModel(training_pb2.GetModelRequest(model_id=model_id), metadata=call_metadata())
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(error.value.trailing_metadata())["x-tuneloop-error-param"] == "model"


# ---- jobs: pause and resume, through the real service (with data-prep beside it) -------------

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def job_settings(tmp_path, database_url, nats_url, tiny_model_dir):
    """Training and data-prep sharing a data directory (the artifact store) and a database."""
    common = {"tmp_path": tmp_path, "database_url": database_url, "nats_url": nats_url,
              "base_models": {TINY_MODEL_ID: tiny_model_dir}}
    return service_settings(DEFINITION, **common), service_settings(DATAPREP, **common)


def _colour_file(n: int) -> bytes:
    colours = ["red", "blue", "green"]
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"What colour is item {i}?"},
                                            {"role": "assistant", "content": colours[i % 3]}]}) + "\n"
                   for i in range(n)).encode()


async def _upload(dataprep: dataprep_pb2_grpc.DataPrepStub, content: bytes) -> str:
    async def chunks():
        yield dataprep_pb2.UploadFileRequest(header=dataprep_pb2.UploadFileHeader(filename="t.jsonl",
                                                                                  purpose="fine-tune"))
        yield dataprep_pb2.UploadFileRequest(data=content)

    return (await dataprep.UploadFile(chunks(), metadata=call_metadata())).file.id


async def _job(stub, job_id: str) -> training_pb2.Job:
    return (await stub.GetJob(training_pb2.GetJobRequest(job_id=job_id), metadata=call_metadata())).job


async def _wait_for(stub, job_id: str, done, timeout: float = 240.0) -> training_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await _job(stub, job_id)
        if await done(job):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} is still {job.status}")


async def _events(stub, job_id: str) -> list[training_pb2.JobEvent]:
    response = await stub.ListJobEvents(training_pb2.ListJobEventsRequest(job_id=job_id, limit=100),
                                        metadata=call_metadata())
    events, after = list(response.events), None
    while response.has_more:
        after = events[-1].id
        response = await stub.ListJobEvents(training_pb2.ListJobEventsRequest(job_id=job_id, after=after, limit=100),
                                            metadata=call_metadata())
        events += response.events
    return events[::-1]  # oldest first


def _steps(events) -> list[int]:
    return [int(e.data["step"]) for e in events if e.type == "metrics" and e.message.startswith("step ")]


def _trainers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "services.training.job_process" in p.cmdline()]


async def test_a_paused_job_stops_its_process_stays_paused_across_a_restart_and_resumes_losing_no_step(job_settings):
    training_settings, dataprep_settings = job_settings
    async with running(DATAPREP, dataprep_settings) as (dataprep_service, dataprep_channel):
        training_settings = training_settings.model_copy(
            update={"dataprep_addr": f"127.0.0.1:{dataprep_service.grpc.port}"})
        file_id = await _upload(dataprep_pb2_grpc.DataPrepStub(dataprep_channel), _colour_file(24))
        async with running(DEFINITION, training_settings) as (_service, channel):
            stub = training_pb2_grpc.TrainingStub(channel)
            hp = training_pb2.Hyperparameters()
            hp.n_epochs.number, hp.batch_size.number = 3, 1
            job = (await stub.CreateJob(training_pb2.CreateJobRequest(
                model=TINY_MODEL_ID, training_file=file_id, hyperparameters=hp, seed=5,
                method=training_pb2.Method(type="supervised", replay_fraction=0.0)), metadata=call_metadata())).job

            async def mid_epoch_two(current) -> bool:  # past the first epoch checkpoint, before the end
                assert current.status not in TERMINAL, current.error
                steps = [e.data for e in await _events(stub, job.id) if e.type == "metrics" and "total_steps" in e.data]
                return len(steps) > 0 and steps[-1]["step"] > steps[-1]["total_steps"] // 3 + 1

            await _wait_for(stub, job.id, mid_epoch_two)
            paused = (await stub.PauseJob(training_pb2.PauseJobRequest(job_id=job.id), metadata=call_metadata())).job
            assert paused.status == "paused"
            assert _trainers() == []
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.PauseJob(training_pb2.PauseJobRequest(job_id=job.id), metadata=call_metadata())
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is paused" in error.value.details()
            paused_at = _steps(await _events(stub, job.id))[-1]

        async with running(DEFINITION, training_settings) as (_service, channel):  # a restart keeps it paused
            stub = training_pb2_grpc.TrainingStub(channel)
            await asyncio.sleep(1.5)  # a supervisor tick or more
            assert (await _job(stub, job.id)).status == "paused" and _trainers() == []
            resumed = (await stub.ResumeJob(training_pb2.ResumeJobRequest(job_id=job.id), metadata=call_metadata())).job
            assert resumed.status == "queued"

            async def finished(current) -> bool:
                return current.status in TERMINAL

            done = await _wait_for(stub, job.id, finished)
            assert done.status == "succeeded", done.error
            events = await _events(stub, job.id)
            for verb in ("pause", "resume"):
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    method = stub.PauseJob if verb == "pause" else stub.ResumeJob
                    request = training_pb2.PauseJobRequest if verb == "pause" else training_pb2.ResumeJobRequest
                    await method(request(job_id=job.id), metadata=call_metadata())
                assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "is succeeded" in error.value.details()

    messages = [e.message for e in events]
    assert "Job paused." in messages and "Job resumed." in messages
    assert f"Fine-tuning job resumed from the checkpoint of step {paused_at}, where it was paused." in messages
    total = int(next(e for e in events if e.type == "metrics" and "total_steps" in e.data).data["total_steps"])
    assert _steps(events) == list(range(1, total + 1))  # every step once: none redone, none skipped
    assert total > paused_at > total // 3 + 1


async def test_pause_and_resume_refuse_unknown_jobs_and_jobs_in_the_wrong_state(job_settings):
    training_settings, _ = job_settings
    async with running(DEFINITION, training_settings) as (_service, channel):
        stub = training_pb2_grpc.TrainingStub(channel)
        for method, request in ((stub.PauseJob, training_pb2.PauseJobRequest),
                                (stub.ResumeJob, training_pb2.ResumeJobRequest)):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await method(request(job_id="ftjob-nope"), metadata=call_metadata())
            assert error.value.code() == grpc.StatusCode.NOT_FOUND and error_param(error.value) == "fine_tuning_job_id"
        # data-prep is not running: the job stays validating_files, which is neither pausable nor resumable
        job = (await stub.CreateJob(training_pb2.CreateJobRequest(model=TINY_MODEL_ID, training_file="file-x"),
                                    metadata=call_metadata())).job
        for method, request in ((stub.PauseJob, training_pb2.PauseJobRequest),
                                (stub.ResumeJob, training_pb2.ResumeJobRequest)):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await method(request(job_id=job.id), metadata=call_metadata())
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "is validating_files" in error.value.details()
        assert (await _job(stub, job.id)).status == "validating_files"
        # another tenant cannot pause it
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.PauseJob(training_pb2.PauseJobRequest(job_id=job.id), metadata=call_metadata("other"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("allowed", [True, False])
async def test_a_qlora_job_trains_on_a_4bit_base_where_the_operator_allows_it_on_a_cpu(job_settings, allowed):
    training_settings, dataprep_settings = job_settings
    async with running(DATAPREP, dataprep_settings) as (dataprep_service, dataprep_channel):
        training_settings = training_settings.model_copy(update={
            "dataprep_addr": f"127.0.0.1:{dataprep_service.grpc.port}", "qlora_on_cpu": allowed})
        file_id = await _upload(dataprep_pb2_grpc.DataPrepStub(dataprep_channel), _colour_file(12))
        async with running(DEFINITION, training_settings) as (_service, channel):
            stub = training_pb2_grpc.TrainingStub(channel)
            hp = training_pb2.Hyperparameters()
            hp.n_epochs.number = 1
            request = training_pb2.CreateJobRequest(model=TINY_MODEL_ID, training_file=file_id, hyperparameters=hp,
                                                    suffix="q", method=training_pb2.Method(type="qlora"),
                                                    metadata={"deployment": "acme-support"})
            if not allowed:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.CreateJob(request, metadata=call_metadata())
                assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "CUDA GPU" in error.value.details() and error_param(error.value) == "method.type"
                return
            job = (await stub.CreateJob(request, metadata=call_metadata())).job

            async def finished(current) -> bool:
                return current.status in TERMINAL

            done = await _wait_for(stub, job.id, finished)
            runtime = _service.runtime
            async with runtime.db.transaction() as session:
                payloads = (await session.execute(sa.select(runtime.tables.outbox.c.payload).where(
                    runtime.tables.outbox.c.event_type == "training.completed"))).scalars().all()
    assert done.status == "succeeded", done.error
    # for the evaluation service: the deployment it is for and the examples it held out
    [completed] = [events_pb2.Envelope.FromString(payload).training_completed for payload in payloads]
    assert (completed.job_id, completed.model_version, completed.deployment) == (job.id, done.fine_tuned_model,
                                                                                 "acme-support")
    assert (completed.dataset_id, completed.dataset_split) == (done.validation_dataset, "validation")
    manifest = json.loads((training_settings.models_path / "adapters" / job.id / "tuneloop-adapter.json").read_text())
    assert (manifest["kind"], manifest["method"], manifest["base_model"]) == ("lora", "qlora", TINY_MODEL_ID)
