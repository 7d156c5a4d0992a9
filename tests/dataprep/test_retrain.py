"""Retraining sets through the data-prep service: real NATS, real gRPC, SQLite / PostgreSQL, tokenizer, Presidio.

The feedback and training services are STAND-INS here: one small gRPC server implementing only
Feedback.GetRetrainBatch and Training.GetModel on the generated servicer base classes, because both
services are being changed while this is written. What data-prep asks of them is the contract in
protos/feedback.proto and protos/training.proto.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from contextlib import asynccontextmanager

import pytest
import sqlalchemy as sa

from protos import (
    common_pb2,
    dataprep_pb2,
    dataprep_pb2_grpc,
    events_pb2,
    feedback_pb2,
    feedback_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from services.dataprep import store
from services.dataprep.server import DEFINITION
from services.shared.bus import new_envelope
from services.shared.errors import NotFound
from services.shared.rpc import start_server
from services.shared.subjects import DATASET_PREPARED, RETRAIN_REQUESTED, subject_for
from tests.dataprep.test_datasets import content_of, prepare, report_of, upload
from tests.fixtures.services import INTERNAL_TOKEN, call_metadata, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID

PARENT = f"ft:{TINY_MODEL_ID}:acme:support:ftjob-1"
WORDS = [
    "parcel", "invoice", "refund", "router", "screen", "battery", "cable", "charger", "warranty", "kettle",
    "toaster", "blender", "printer", "scanner", "ticket", "account", "password", "voucher", "courier",
    "locker", "pallet", "label", "sticker", "folder",
]


class StandInFeedback(feedback_pb2_grpc.FeedbackServicer):
    """Stand-in for the feedback service: serves the batches the test gives it, NOT_FOUND for others."""

    def __init__(self) -> None:
        self.batches: dict[str, feedback_pb2.GetRetrainBatchResponse] = {}
        self.calls = 0

    async def GetRetrainBatch(self, request, context):
        self.calls += 1
        if request.retrain_request_id not in self.batches:
            raise NotFound(f"No retrain request {request.retrain_request_id}", param="retrain_request_id")
        return self.batches[request.retrain_request_id]


class StandInRegistry(training_pb2_grpc.TrainingServicer):
    """Stand-in for the training service's model registry: the models the test gives it."""

    def __init__(self) -> None:
        self.models: dict[str, training_pb2.Model] = {}

    async def GetModel(self, request, context):
        if request.model_id not in self.models:
            raise NotFound(f"The model {request.model_id!r} does not exist", param="model_id")
        return training_pb2.GetModelResponse(model=self.models[request.model_id])


@asynccontextmanager
async def stand_ins(port: int = 0):
    """(feedback, registry, address): both stand-ins on one server, behind the internal token."""
    feedback, registry = StandInFeedback(), StandInRegistry()

    def register(server):
        feedback_pb2_grpc.add_FeedbackServicer_to_server(feedback, server)
        training_pb2_grpc.add_TrainingServicer_to_server(registry, server)
        return [feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name,
                training_pb2.DESCRIPTOR.services_by_name["Training"].full_name]

    server = await start_server(host="127.0.0.1", port=port, internal_token=INTERNAL_TOKEN, register=register)
    try:
        yield feedback, registry, f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings_for(tmp_path, database_url, nats_url, tiny_model_dir, peers: str):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                            base_models={TINY_MODEL_ID: tiny_model_dir}, default_base_model=TINY_MODEL_ID,
                            feedback_addr=peers, training_addr=peers, retrain_retry_max_s=0.5)


def ask(question: str) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role="user", content=question)]


def correction(feedback_id: str, question: str, answer: str) -> feedback_pb2.RetrainExample:
    return feedback_pb2.RetrainExample(feedback_id=feedback_id, kind="correction", prompt=ask(question), answer=answer,
                                       rejected="I am not sure.", user="agent-7")


def positive(feedback_id: str, question: str, answer: str) -> feedback_pb2.RetrainExample:
    return feedback_pb2.RetrainExample(feedback_id=feedback_id, kind="positive", prompt=ask(question), answer=answer)


def retrain_requested(request_id: str, model_version: str = PARENT, event_id: str = "") -> events_pb2.Envelope:
    return new_envelope(RETRAIN_REQUESTED, events_pb2.RetrainRequested(
        request_id=request_id, deployment="acme-support", model_version=model_version, corrections=9,
        trigger="corrections", base_model=TINY_MODEL_ID, positives=2), source="feedback", tenant="acme",
        event_id=event_id or f"{RETRAIN_REQUESTED}:{request_id}")


async def retrain_events(service, count: int, timeout: float = 180.0) -> list[events_pb2.DatasetPrepared]:
    """The retraining sets' `dataset.prepared` events once `count` are published (the relay marked them sent)."""
    outbox = service.runtime.tables.outbox
    for _ in range(int(timeout / 0.1)):
        async with service.runtime.db.transaction() as session:
            rows = (await session.execute(sa.select(outbox.c.payload, outbox.c.sent_at)
                                          .where(outbox.c.event_type == DATASET_PREPARED)
                                          .order_by(outbox.c.created_at))).all()
        events = [events_pb2.Envelope.FromString(row.payload).dataset_prepared for row in rows if row.sent_at]
        retrain = [event for event in events if event.retrain_request_id]
        if len(retrain) >= count:
            return retrain
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} retraining sets announced after {timeout}s")


async def rows(service, table: sa.Table) -> list:
    async with service.runtime.db.transaction() as session:
        return list((await session.execute(sa.select(table))).mappings())


@pytest.fixture
def chats() -> list[tuple[str, str]]:
    rng = random.Random(3)
    return [(" ".join(rng.sample(WORDS, 6)) + "?", " ".join(rng.sample(WORDS, 3)) + ".") for _ in range(30)]


async def test_a_retrain_request_becomes_one_prepared_set_of_corrections_positives_and_replay(
        tmp_path, database_url, nats_url, tiny_model_dir, chats):
    async with stand_ins() as (feedback, registry, peers):
        settings = settings_for(tmp_path, database_url, nats_url, tiny_model_dir, peers)
        async with running(DEFINITION, settings) as (service, channel):
            stub = dataprep_pb2_grpc.DataPrepStub(channel)
            # The parent version's training data; its first question gets corrected in this round.
            parent_file = await upload(stub, "".join(json.dumps({"messages": [
                {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n" for q, a in chats).encode())
            parent = await prepare(stub, parent_file, base_model=TINY_MODEL_ID, validation_fraction=0.0,
                                   anonymize_pii=False)
            assert parent.status == "ready" and parent.train_examples == 30, parent.error
            registry.models[PARENT] = training_pb2.Model(id=PARENT, kind="fine-tuned", base_model=TINY_MODEL_ID,
                                                         training_dataset=parent.id)
            fixes = {f"fb-{i}": pair for i, pair in enumerate([
                ("How long does the warranty on a toaster last?", "Two years from the date on the receipt."),
                ("Which courier delivers on Saturdays?", "Only the express courier, before noon."),
                ("Why was my voucher refused at checkout?", "Vouchers cannot be combined with sale prices."),
                ("Can the printer scan to a shared folder?", "Yes: set the folder under Network, then Scan."),
                ("How do I reset my account password?", "Use the reset link; it is valid for one hour."),
                ("Do pallets need a delivery slot?", "Yes, book one at least two days ahead."),
                ("What does the blender's red light mean?", "The jug is not locked in place."),
            ])}
            fixes["fb-parent"] = (chats[0][0], "The corrected answer to the parent's first question.")
            fixes["fb-mail"] = ("Where do I send a complaint?", "Write to complaints@example.com within 30 days.")
            examples = [correction("fb-old", "Can I return an opened kettle?", "No.")]  # superseded below
            examples += [correction(fid, question, answer) for fid, (question, answer) in fixes.items()]
            fixes["fb-new"] = ("can I return an OPENED kettle?", "Yes, within 14 days.")  # newer: it wins
            examples.append(correction("fb-new", *fixes["fb-new"]))
            examples += [positive("fb-up-1", "Do you sell gift cards?", "Yes, from 10 to 200 euros."),
                         positive("fb-up-2", "Is there a student discount?", "Ten percent with a valid card.")]
            feedback.batches["rtr-1"] = feedback_pb2.GetRetrainBatchResponse(
                retrain_request_id="rtr-1", deployment="acme-support", model_version=PARENT, base_model=TINY_MODEL_ID,
                examples=examples)

            envelope = retrain_requested("rtr-1")
            bus = service.runtime.bus
            for _ in range(2):  # the same envelope twice, past JetStream's duplicate check (no Nats-Msg-Id)
                await bus.js.publish(subject_for(RETRAIN_REQUESTED), envelope.SerializeToString())
            await bus.publish(retrain_requested("rtr-1", event_id="republished-by-a-restored-outbox"))

            [event] = await retrain_events(service, 1)
            train = await content_of(stub, event.dataset_id, "train")
            validation = await content_of(stub, event.dataset_id, "validation")
            report = await report_of(stub, event.dataset_id)
            # What a training job for this event asks, with the deployment's root base model.
            again = await stub.PrepareDataset(dataprep_pb2.PrepareDatasetRequest(
                file_id=event.file_id, options=dataprep_pb2.PrepareOptions(
                    base_model=TINY_MODEL_ID, validation_fraction=0.1, seed=0)), metadata=call_metadata())
            processed = await rows(service, service.runtime.tables.processed_events)
            for _ in range(50):  # the three deliveries are handled in order; wait for the last
                if len(processed) == 2:
                    break
                await asyncio.sleep(0.1)
                processed = await rows(service, service.runtime.tables.processed_events)
            sets = await rows(service, store.retrain_sets)
            files = [f for f in await rows(service, store.files) if f["id"] != parent_file]
            datasets = [d for d in await rows(service, store.datasets) if d["id"] != parent.id]
            [announced] = await retrain_events(service, 1)

    assert (event.retrain_request_id, event.deployment, event.parent_version, event.base_model) == (
        "rtr-1", "acme-support", PARENT, TINY_MODEL_ID)
    assert not event.error and event.train_examples + event.validation_examples == len(train) + len(validation)
    assert [f["filename"] for f in files] == ["retrain-rtr-1.jsonl"] and event.file_id == files[0]["id"]
    assert [d["id"] for d in datasets] == [event.dataset_id] and datasets[0]["status"] == "ready"
    assert [(s["request_id"], s["status"], s["dataset_id"]) for s in sets] == [("rtr-1", "ready", event.dataset_id)]
    assert announced == event and len(processed) == 2 and feedback.calls == 1
    assert again.dataset.id == event.dataset_id and not again.created

    records = train + validation
    corrected = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in records if r.get("corrected")}
    assert set(corrected) == {question for question, _ in fixes.values()}
    assert corrected["Where do I send a complaint?"] == "Write to [EMAIL] within 30 days."  # anonymised as any file
    assert corrected["can I return an OPENED kettle?"] == "Yes, within 14 days."
    assert all("corrected" not in r for r in records if r["messages"][0]["content"] not in corrected)
    answers = {r["messages"][-1]["content"] for r in records}
    assert "No." not in answers and chats[0][1] not in answers  # the superseded fix, the parent's corrected answer
    assert {"Yes, from 10 to 200 euros.", "Ten percent with a valid card."} <= answers
    replayed = [r for r in records if (r["messages"][0]["content"], r["messages"][-1]["content"]) in set(chats)]
    assert len(replayed) == round(1.0 * len(fixes)) == len(records) - len(fixes) - 2
    assert report["retrain"]["superseded_corrections"] == 1 and report["retrain"]["superseded"] == ["fb-old"]
    assert report["retrain"]["replay_from"] == parent.id and report["retrain"]["replay_replaced_by_corrections"] == 1


async def test_a_set_waits_for_the_feedback_service_and_is_built_once_it_is_back(
        tmp_path, database_url, nats_url, tiny_model_dir):
    port = free_port()
    settings = settings_for(tmp_path, database_url, nats_url, tiny_model_dir, f"127.0.0.1:{port}")
    async with running(DEFINITION, settings) as (service, channel):
        # The deployment serves the base model: no lineage to ask for, no replay.
        await service.runtime.bus.publish(retrain_requested("rtr-2", model_version=TINY_MODEL_ID))
        await asyncio.sleep(3)  # several tries with nobody listening
        waiting = await rows(service, store.retrain_sets)
        async with stand_ins(port) as (feedback, _registry, _peers):
            feedback.batches["rtr-2"] = feedback_pb2.GetRetrainBatchResponse(
                retrain_request_id="rtr-2", deployment="acme-support", model_version=TINY_MODEL_ID,
                base_model=TINY_MODEL_ID, examples=[correction("fb-1", "Do you ship on Sundays?", "Only in summer."),
                                                    correction("fb-2", "Can I pay by invoice?", "Yes, for annual plans.")])
            [event] = await retrain_events(service, 1)
            report = await report_of(dataprep_pb2_grpc.DataPrepStub(channel), event.dataset_id)
    assert [(s["request_id"], s["status"]) for s in waiting] == [("rtr-2", "building")]
    assert event.retrain_request_id == "rtr-2" and not event.error and event.dataset_id
    assert feedback.calls == 1
    assert report["retrain"]["replay"] == 0 and report["retrain"]["replay_from"] == ""


async def test_an_unknown_request_an_empty_batch_and_a_failed_dataset_are_announced_as_failed_once(
        tmp_path, database_url, nats_url, tiny_model_dir):
    async with stand_ins() as (feedback, _registry, peers):
        settings = settings_for(tmp_path, database_url, nats_url, tiny_model_dir, peers)
        feedback.batches["rtr-empty"] = feedback_pb2.GetRetrainBatchResponse(
            retrain_request_id="rtr-empty", deployment="acme-support", model_version=TINY_MODEL_ID,
            base_model=TINY_MODEL_ID)
        async with running(DEFINITION, settings) as (service, _channel):
            # What a crash leaves when a set's dataset failed before the set was recorded as waiting on it.
            async with service.runtime.db.transaction() as session:
                await session.execute(store.datasets.insert().values(
                    id="ds-failed", tenant="acme", file_id="file-1", file_sha256="0" * 64, status="failed", format="chat",
                    options="{}", created_at=1, finished_at=2, lines_processed=3, train_sha256=None,
                    validation_sha256=None, review_sha256=None, train_examples=0, validation_examples=0,
                    error="the file has no usable examples", report=None))
                await session.execute(store.retrain_sets.insert().values(
                    request_id="rtr-failed", tenant="acme", deployment="acme-support", parent_version=TINY_MODEL_ID,
                    base_model=TINY_MODEL_ID, status="processing", file_id="file-1", dataset_id="ds-failed", error="",
                    summary=None, created_at=1, finished_at=None))
            for request_id in ("rtr-unknown", "rtr-empty"):
                await service.runtime.bus.publish(retrain_requested(request_id, model_version=TINY_MODEL_ID))
            events = await retrain_events(service, 3)
            await asyncio.sleep(1.5)  # the worker keeps looking: nothing more may be announced
            later = await retrain_events(service, 3)
            sets = await rows(service, store.retrain_sets)
            files = await rows(service, store.files)
    by_request = {event.retrain_request_id: event for event in events}
    assert len(later) == 3 and set(by_request) == {"rtr-unknown", "rtr-empty", "rtr-failed"}
    assert "No retrain request rtr-unknown" in by_request["rtr-unknown"].error
    assert "holds no examples" in by_request["rtr-empty"].error
    assert by_request["rtr-failed"].error == "the file has no usable examples"
    assert (by_request["rtr-failed"].dataset_id, by_request["rtr-failed"].file_id) == ("ds-failed", "file-1")
    for event in events:
        assert (event.deployment, event.parent_version, event.base_model) == ("acme-support", TINY_MODEL_ID,
                                                                             TINY_MODEL_ID)
        assert event.train_examples == 0
    assert not by_request["rtr-empty"].dataset_id and not by_request["rtr-unknown"].file_id
    assert {(s["request_id"], s["status"]) for s in sets} == {
        ("rtr-unknown", "failed"), ("rtr-empty", "failed"), ("rtr-failed", "failed")}
    assert files == [] and feedback.calls == 2
