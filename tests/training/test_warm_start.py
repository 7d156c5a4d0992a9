"""Warm start through the real services: a job whose `model` is a fine-tuned model trains from its
weights, and the models that cannot be a parent are refused naming the field."""

from __future__ import annotations

import json

import grpc
import pytest
import sqlalchemy as sa

from protos import dataprep_pb2_grpc, events_pb2, training_pb2, training_pb2_grpc
from services.dataprep.server import DEFINITION as DATAPREP
from services.shared.models import ADAPTER_MANIFEST
from services.training import store
from services.training.server import DEFINITION as TRAINING
from tests.dataprep.test_datasets import upload
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID
from tests.training.test_server import TERMINAL, _colour_file, _events, _wait_for


async def register_model(service, model_id: str, *, tenant: str = "acme", lineage: dict | None = None,
                         manifest: dict | None = None) -> None:
    """A fine-tuned model in the registry, its files only a manifest (enough to be refused or queued)."""
    path = service.runtime.settings.models_path / "adapters" / model_id.rsplit(":", 1)[-1]
    if manifest is not None:
        path.mkdir(parents=True, exist_ok=True)
        (path / ADAPTER_MANIFEST).write_text(json.dumps(manifest))
    async with service.runtime.db.transaction() as session:
        await store.add_model(session, id=model_id, tenant=tenant, base_model=TINY_MODEL_ID,
                              job_id=model_id.rsplit(":", 1)[-1], path=str(path),
                              lineage=json.dumps({"base_model": TINY_MODEL_ID, **(lineage or {})}))


LORA_MANIFEST = {"kind": "lora", "train_config": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                                                  "target_modules": ["q_proj", "v_proj"]}}
FULL_MANIFEST = {"kind": "full"}


def _request(model: str, file_id: str, suffix: str, metadata: dict | None = None,
             **method) -> training_pb2.CreateJobRequest:
    hyperparameters = training_pb2.Hyperparameters()
    hyperparameters.n_epochs.number, hyperparameters.batch_size.number = 1, 2
    hyperparameters.learning_rate_multiplier.number = 10
    return training_pb2.CreateJobRequest(model=model, training_file=file_id, suffix=suffix, seed=0,
                                         hyperparameters=hyperparameters, metadata=metadata,
                                         method=training_pb2.Method(replay_fraction=0.0, **method))


def _first_loss(events) -> float:
    return next(e.data["train_loss"] for e in events if e.type == "metrics" and e.data["step"] == 1)


async def test_a_job_from_a_fine_tuned_model_starts_from_its_weights_and_names_it_as_parent(
        tmp_path, nats_url, learning_store):
    base_models = {TINY_MODEL_ID: learning_store.ensure(TINY_MODEL_ID)}
    common = {"tmp_path": tmp_path, "nats_url": nats_url, "base_models": base_models}
    dataprep_settings = service_settings(DATAPREP, database_url=f"sqlite:///{tmp_path / 'd.db'}", **common)
    async with running(DATAPREP, dataprep_settings) as (dataprep, dataprep_channel):
        training_settings = service_settings(TRAINING, database_url=f"sqlite:///{tmp_path / 't.db'}",
                                             dataprep_addr=f"127.0.0.1:{dataprep.grpc.port}", **common)
        async with running(TRAINING, training_settings) as (training, channel):
            stub = training_pb2_grpc.TrainingStub(channel)
            file_id = await upload(dataprep_pb2_grpc.DataPrepStub(dataprep_channel), _colour_file(24))

            async def finished(job) -> bool:
                return job.status in TERMINAL

            first = (await stub.CreateJob(_request(TINY_MODEL_ID, file_id, "first"), metadata=call_metadata())).job
            first = await _wait_for(stub, first.id, finished)
            assert first.status == "succeeded", first.error
            loop = {"deployment": "acme-support", "retrain_request_id": "rr-9"}
            second = (await stub.CreateJob(_request(first.fine_tuned_model, file_id, "second", loop, lora_r=8),
                                           metadata=call_metadata())).job
            assert second.model == first.fine_tuned_model  # shown as asked, as OpenAI does
            assert second.method.lora_r == 16  # the parent's adapter shape, not the request's
            second = await _wait_for(stub, second.id, finished)
            assert second.status == "succeeded", second.error
            first_events, second_events = await _events(stub, first.id), await _events(stub, second.id)
            parent = (await stub.GetModel(training_pb2.GetModelRequest(model_id=first.fine_tuned_model),
                                          metadata=call_metadata())).model
            child = (await stub.GetModel(training_pb2.GetModelRequest(model_id=second.fine_tuned_model),
                                         metadata=call_metadata())).model
            async with training.runtime.db.transaction() as session:
                outbox = training.runtime.tables.outbox
                payloads = (await session.execute(sa.select(outbox.c.payload).where(
                    outbox.c.event_type == "training.completed"))).scalars().all()

    # the root base stays in the id; the lineage names the parent, the job and its datasets
    assert second.fine_tuned_model == f"ft:{TINY_MODEL_ID}:acme:second:{second.id}"
    assert (child.parent_model, child.job_id, child.base_model) == (first.fine_tuned_model, second.id, TINY_MODEL_ID)
    assert (child.training_dataset, child.validation_dataset) == (second.training_dataset, second.validation_dataset)
    assert second.training_dataset == first.training_dataset  # prepared for the root base, as the first was
    assert (parent.parent_model, parent.job_id) == ("", first.id)
    # it starts where the parent left off: its first step already knows the colours
    assert _first_loss(second_events) < _first_loss(first_events) - 1.0, (_first_loss(second_events),
                                                                         _first_loss(first_events))
    messages = [e.message for e in second_events]
    assert any(m.startswith(f"Warm start: the adapter starts from the weights of {first.fine_tuned_model}")
               and "override the request's lora_r=8" in m for m in messages), messages
    completed = {e.job_id: e for e in (events_pb2.Envelope.FromString(p).training_completed for p in payloads)}
    announced = completed[second.id]
    assert (announced.parent_version, announced.base_model) == (first.fine_tuned_model, TINY_MODEL_ID)
    assert (announced.deployment, announced.retrain_request_id) == ("acme-support", "rr-9")
    assert (completed[first.id].parent_version, completed[first.id].retrain_request_id) == ("", "")


async def test_models_that_cannot_be_a_parent_are_refused_naming_the_field(tmp_path, database_url, nats_url,
                                                                          tiny_model_dir):
    settings = service_settings(TRAINING, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                                base_models={TINY_MODEL_ID: tiny_model_dir})
    async with running(TRAINING, settings) as (training, channel):
        stub = training_pb2_grpc.TrainingStub(channel)
        lora, full = f"ft:{TINY_MODEL_ID}:acme:lora:ftjob-l", f"ft:{TINY_MODEL_ID}:acme:full:ftjob-f"
        remote, theirs = f"ft:{TINY_MODEL_ID}:acme:remote:ftjob-r", f"ft:{TINY_MODEL_ID}:globex:x:ftjob-g"
        missing = f"ft:{TINY_MODEL_ID}:acme:gone:ftjob-m"
        await register_model(training, lora, manifest=LORA_MANIFEST)
        await register_model(training, full, manifest=FULL_MANIFEST)
        await register_model(training, remote, lineage={"provider": "openai", "provider_model": "ft:gpt-4o:x"})
        await register_model(training, theirs, tenant="globex", manifest=LORA_MANIFEST)
        await register_model(training, missing)
        for model, method, status, param, says in (
            (remote, "supervised", grpc.StatusCode.INVALID_ARGUMENT, "model", "trained on the provider 'openai'"),
            (theirs, "supervised", grpc.StatusCode.NOT_FOUND, "model", "does not exist"),
            (f"ft:{TINY_MODEL_ID}:acme:x:ftjob-nope", "supervised", grpc.StatusCode.NOT_FOUND, "model",
             "does not exist"),
            (missing, "supervised", grpc.StatusCode.FAILED_PRECONDITION, "model", "cannot be read"),
            (full, "supervised", grpc.StatusCode.INVALID_ARGUMENT, "method.type", "continue it with method.type 'full'"),
            (lora, "full", grpc.StatusCode.INVALID_ARGUMENT, "method.type", "is a LoRA adapter"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.CreateJob(training_pb2.CreateJobRequest(
                    model=model, training_file="file-1", method=training_pb2.Method(type=method)),
                    metadata=call_metadata())
            assert (error.value.code(), error_param(error.value)) == (status, param), (model, error.value.details())
            assert says in error.value.details()
        assert not (await stub.ListJobs(training_pb2.ListJobsRequest(), metadata=call_metadata())).jobs
        # a full parent continues as "full", on its root base
        job = (await stub.CreateJob(training_pb2.CreateJobRequest(
            model=full, training_file="file-1", suffix="more", method=training_pb2.Method(type="full")),
            metadata=call_metadata())).job
        assert (job.model, job.method.type) == (full, "full")
