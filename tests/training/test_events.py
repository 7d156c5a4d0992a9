"""The training service's consumer: a retraining set the feedback loop asked for (`dataset.prepared`
with a retrain request) becomes one fine-tuning job, announced by `training.requested`."""

from __future__ import annotations

import asyncio

import pytest

from protos import dataprep_pb2_grpc, events_pb2, training_pb2, training_pb2_grpc
from services.dataprep.server import DEFINITION as DATAPREP
from services.shared.bus import new_envelope
from services.shared.subjects import DATASET_PREPARED, TRAINING_FAILED, TRAINING_REQUESTED, subject_for
from services.training.jobs import suffix_for
from services.training.server import DEFINITION as TRAINING
from tests.dataprep.test_datasets import prepare, upload
from tests.fixtures.services import call_metadata, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID
from tests.training.test_server import _colour_file
from tests.training.test_warm_start import FULL_MANIFEST, register_model

LOOP_SETTINGS = {"loop_n_epochs": 1, "loop_batch_size": 4, "loop_replay_fraction": 0.0}


async def _on_stream(bus, event_type: str) -> list[events_pb2.Envelope]:
    """Every event of the type that JetStream kept (duplicates dropped)."""
    subscription = await bus.js.pull_subscribe(subject_for(event_type), stream=bus.settings.stream_name)
    envelopes = []
    try:
        while True:
            try:
                messages = await subscription.fetch(100, timeout=0.5)
            except TimeoutError:  # nats' own, and asyncio's when the fetch's deadline passes first
                return envelopes
            envelopes += [events_pb2.Envelope.FromString(message.data) for message in messages]
    finally:
        await subscription.unsubscribe()


async def _until(check, timeout: float = 30.0):
    for _ in range(int(timeout / 0.2)):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError("timed out")


def _prepared(retrain_request_id: str, **fields) -> events_pb2.Envelope:
    fields = {"deployment": "Acme Support!", "base_model": TINY_MODEL_ID, "parent_version": TINY_MODEL_ID, **fields}
    event = events_pb2.DatasetPrepared(retrain_request_id=retrain_request_id, **fields)
    return new_envelope(DATASET_PREPARED, event, source="dataprep", tenant="acme")


async def _jobs(stub) -> list[training_pb2.Job]:
    return list((await stub.ListJobs(training_pb2.ListJobsRequest(), metadata=call_metadata())).jobs)


async def test_a_retraining_set_becomes_one_job_however_often_it_is_announced(tmp_path, database_url, nats_url,
                                                                             tiny_model_dir):
    common = {"tmp_path": tmp_path, "database_url": database_url, "nats_url": nats_url,
              "base_models": {TINY_MODEL_ID: tiny_model_dir}}
    async with running(DATAPREP, service_settings(DATAPREP, **common)) as (dataprep, dataprep_channel):
        dataprep_stub = dataprep_pb2_grpc.DataPrepStub(dataprep_channel)
        file_id = await upload(dataprep_stub, _colour_file(24))
        # as data-prep prepares a retraining set
        dataset = await prepare(dataprep_stub, file_id, base_model=TINY_MODEL_ID, validation_fraction=0.1, seed=0)
        settings = service_settings(TRAINING, dataprep_addr=f"127.0.0.1:{dataprep.grpc.port}", **common,
                                    **LOOP_SETTINGS)
        async with running(TRAINING, settings) as (training, channel):
            stub, bus = training_pb2_grpc.TrainingStub(channel), training.runtime.bus
            first = _prepared("rr-1", dataset_id=dataset.id, file_id=file_id)
            for envelope in (first, first, _prepared("rr-1", dataset_id=dataset.id, file_id=file_id),  # again
                             _prepared("rr-2", file_id=file_id, error="no corrections left after cleaning"),
                             new_envelope(DATASET_PREPARED, events_pb2.DatasetPrepared(dataset_id=dataset.id,
                                                                                     file_id=file_id),
                                          source="dataprep", tenant="acme"),  # someone's own dataset
                             _prepared("rr-3", file_id="file-gone")):  # a job that fails validating
                await bus.publish(envelope)

            async def both_answered():
                return len(await _on_stream(bus, TRAINING_FAILED)) == 1 and await _on_stream(bus, TRAINING_REQUESTED)

            await _until(both_answered)
            jobs = {job.metadata["retrain_request_id"]: job for job in await _jobs(stub)}
            requested = [e.training_requested for e in await _on_stream(bus, TRAINING_REQUESTED)]
            [failed] = [e.training_failed for e in await _on_stream(bus, TRAINING_FAILED)]

            async def validated():
                job = (await stub.GetJob(training_pb2.GetJobRequest(job_id=jobs["rr-1"].id),
                                         metadata=call_metadata())).job
                return job if job.status != "validating_files" else None

            job = await _until(validated)

    assert sorted(jobs) == ["rr-1", "rr-3"]  # rr-2 had no set to train on; the plain dataset is no one's retrain
    assert dict(job.metadata) == {"deployment": "Acme Support!", "retrain_request_id": "rr-1"}
    assert (job.model, job.training_file, job.suffix, job.seed, job.method.type) == (
        TINY_MODEL_ID, file_id, "acme-support", 0, "supervised")
    assert job.hyperparameters.n_epochs.number == 1 and job.method.replay_fraction == 0.0
    assert job.training_dataset == dataset.id  # the set data-prep prepared, not a second one
    assert len(requested) == 2
    announced = next(e for e in requested if e.retrain_request_id == "rr-1")
    assert (announced.job_id, announced.base_model, announced.dataset_id, announced.deployment,
            announced.parent_version) == (job.id, TINY_MODEL_ID, dataset.id, "Acme Support!", "")
    # the job whose file data-prep does not have failed, saying which loop request it was for
    assert (failed.job_id, failed.code) == (jobs["rr-3"].id, "invalid_training_file")
    assert (failed.deployment, failed.retrain_request_id) == ("Acme Support!", "rr-3")


async def test_a_retraining_job_continues_the_deployed_fine_tuned_model_or_says_why_it_cannot(
        tmp_path, nats_url, tiny_model_dir):
    settings = service_settings(TRAINING, tmp_path=tmp_path, database_url=f"sqlite:///{tmp_path / 't.db'}",
                                nats_url=nats_url, base_models={TINY_MODEL_ID: tiny_model_dir}, **LOOP_SETTINGS)
    async with running(TRAINING, settings) as (training, channel):
        stub, bus = training_pb2_grpc.TrainingStub(channel), training.runtime.bus
        full = f"ft:{TINY_MODEL_ID}:acme:support:ftjob-full"
        await register_model(training, full, manifest=FULL_MANIFEST)
        await bus.publish(_prepared("rr-full", file_id="file-1", dataset_id="ds-1", parent_version=full))
        await bus.publish(_prepared("rr-gone", file_id="file-1", parent_version=f"ft:{TINY_MODEL_ID}:acme:x:ftjob-x"))

        async def answered():
            return await _on_stream(bus, TRAINING_FAILED)

        [failed] = [e.training_failed for e in await _until(answered)]
        [requested] = [e.training_requested for e in await _on_stream(bus, TRAINING_REQUESTED)]
        [job] = await _jobs(stub)
    # a full model trains on as "full", from its weights, its id still naming the root base
    assert (job.model, job.method.type, dict(job.metadata)["retrain_request_id"]) == (full, "full", "rr-full")
    assert (requested.job_id, requested.parent_version, requested.base_model) == (job.id, full, TINY_MODEL_ID)
    # a deployed version that is gone: no job, and the loop hears why
    assert (failed.job_id, failed.code, failed.retrain_request_id) == ("", "model_not_found", "rr-gone")
    assert failed.deployment == "Acme Support!" and "does not exist" in failed.message


@pytest.mark.parametrize(("name", "suffix"), [("Acme Support!", "acme-support"), ("--x__y--", "x-y"), ("", ""),
                                              ("a" * 80, "a" * 64)])
def test_a_deployment_name_becomes_a_valid_suffix(name, suffix):
    assert suffix_for(name) == suffix
