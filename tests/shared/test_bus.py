"""The event bus: envelopes, de-duplication, idempotent consumers, dead letters, and crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry import context, trace
from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.shared.bus import Consumer, EventBus, new_envelope, payload_of
from services.shared.db import Database
from services.shared.subjects import MODEL_DEPLOYED, TRAINING_COMPLETED, TRAINING_REQUESTED, subject_for
from tests.shared.conftest import EFFECTS, TABLES  # noqa: E402  (one set of test tables)
from tests.shared.consumer_process import STREAM, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def _requested(job_id: str = "job-1", **kwargs) -> events_pb2.Envelope:
    return new_envelope(
        TRAINING_REQUESTED,
        events_pb2.TrainingRequested(job_id=job_id, base_model="m"),
        source="test",
        **kwargs,
    )


async def _effects(db: Database, event_id: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(EFFECTS)
    if event_id is not None:
        query = query.where(EFFECTS.c.event_id == event_id)
    async with db.transaction() as session:
        return (await session.execute(query)).scalar_one()


async def _rows(db: Database, table: sa.Table) -> list[sa.Row]:
    async with db.transaction() as session:
        return list((await session.execute(sa.select(table))).all())


async def _settled(consumer: Consumer) -> bool:
    """Everything published so far was delivered and acknowledged (or terminated)."""
    info = await consumer.info()
    return info.num_pending == 0 and info.num_ack_pending == 0


class Recorder:
    """A handler that writes an effect row per call, and fails for chosen job ids."""

    def __init__(self, fail_jobs: tuple[str, ...] = ()):
        self.calls: list[str] = []
        self.fail_jobs = fail_jobs
        self.trace_ids: list[int] = []

    async def __call__(self, session: AsyncSession, envelope: events_pb2.Envelope) -> None:
        self.calls.append(envelope.id)
        self.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        if getattr(payload_of(envelope), "job_id", "") in self.fail_jobs:
            raise RuntimeError(f"handler refuses {envelope.id}")
        await session.execute(sa.insert(EFFECTS).values(event_id=envelope.id, event_type=envelope.type))


# --- envelopes ------------------------------------------------------------------------------


def test_new_envelope_fills_every_field():
    envelope = _requested(tenant="acme")
    assert len(envelope.id) == 32 and envelope.type == TRAINING_REQUESTED
    assert envelope.source == "test" and envelope.tenant == "acme"
    assert envelope.time.seconds > 0
    assert envelope.WhichOneof("payload") == "training_requested"
    assert payload_of(envelope).job_id == "job-1"
    assert _requested(event_id="fixed").id == "fixed"


def test_new_envelope_refuses_a_payload_of_another_type():
    with pytest.raises(ValueError, match="'training.requested' carries a TrainingRequested"):
        new_envelope(TRAINING_REQUESTED, events_pb2.ModelDeployed(deployment="d"), source="test")
    with pytest.raises(ValueError, match="unknown event type 'nope'"):
        new_envelope("nope", events_pb2.ModelDeployed(), source="test")
    with pytest.raises(ValueError, match="carries no payload"):
        payload_of(events_pb2.Envelope(id="x", type=MODEL_DEPLOYED))


def test_new_envelope_carries_the_current_trace():
    parent = trace.SpanContext(
        trace_id=0x1234, span_id=0x99, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
    )
    token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    try:
        envelope = _requested()
    finally:
        context.detach(token)
    assert envelope.trace.traceparent.startswith(f"00-{0x1234:032x}-{0x99:016x}-")
    assert _requested().trace.traceparent == ""  # no trace, nothing to carry


# --- the stream -----------------------------------------------------------------------------


async def test_ensure_stream_is_idempotent(bus: EventBus):
    await bus.ensure_stream()
    info = await bus.js.stream_info(STREAM)
    assert info.config.subjects == ["tuneloop.>"]
    assert info.config.duplicate_window == 120
    assert info.config.num_replicas == 1


async def test_repeated_publish_is_dropped_and_applied_once(db: Database, bus: EventBus):
    envelope = _requested()
    assert await bus.publish(envelope) is False
    assert await bus.publish(envelope) is True
    assert await bus.publish_many([envelope, _requested("job-2")]) == [True, False]

    recorder = Recorder()
    consumer = await bus.subscribe(
        durable="dedupe", event_types=[TRAINING_REQUESTED], handler=recorder, db=db, tables=TABLES
    )
    consumer.start()
    try:
        await wait_until(lambda: _settled(consumer), what="both events to be handled")
        # The same event again under another message id: the stream keeps it, the consumer
        # recognises it from its processed-events table and only acknowledges it.
        await bus.js.publish(
            subject_for(TRAINING_REQUESTED), envelope.SerializeToString(), headers={"Nats-Msg-Id": "other"}
        )
        await wait_until(lambda: _settled(consumer), what="the redelivered event to be acknowledged")
    finally:
        await consumer.stop()

    assert (await bus.js.stream_info(STREAM)).state.messages == 3
    assert recorder.calls.count(envelope.id) == 1
    assert await _effects(db, envelope.id) == 1
    assert len(await _rows(db, TABLES.processed_events)) == 2


async def test_consumer_sees_only_its_event_types_and_keeps_the_trace(db: Database, bus: EventBus):
    parent = trace.SpanContext(
        trace_id=0xABC, span_id=0x1, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
    )
    token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    try:
        wanted = [
            _requested(),
            new_envelope(TRAINING_COMPLETED, events_pb2.TrainingCompleted(job_id="job-1"), source="test"),
        ]
    finally:
        context.detach(token)
    other = new_envelope(MODEL_DEPLOYED, events_pb2.ModelDeployed(deployment="d"), source="test")
    for envelope in [*wanted, other]:
        await bus.publish(envelope)

    recorder = Recorder()
    consumer = await bus.subscribe(
        durable="two-types",
        event_types=[TRAINING_REQUESTED, TRAINING_COMPLETED],
        handler=recorder,
        db=db,
        tables=TABLES,
    )
    consumer.start()
    try:
        await wait_until(lambda: _settled(consumer), what="the two wanted events")
    finally:
        await consumer.stop()
    assert recorder.calls == [envelope.id for envelope in wanted]
    assert recorder.trace_ids == [0xABC, 0xABC]

    # Subscribing again with another configuration updates the durable consumer in place.
    again = await bus.subscribe(
        durable="two-types",
        event_types=[TRAINING_REQUESTED],
        handler=recorder,
        db=db,
        tables=TABLES,
        ack_wait=7,
    )
    info = await again.info()
    assert info.config.ack_wait == 7 and info.config.filter_subject == subject_for(TRAINING_REQUESTED)


# --- failures -------------------------------------------------------------------------------


async def test_failing_handler_ends_in_dead_letter_and_the_next_event_goes_through(
    db: Database, bus: EventBus
):
    poison, healthy = _requested("poison"), _requested("healthy")
    await bus.publish(poison)
    await bus.publish(healthy)

    recorder = Recorder(fail_jobs=("poison",))
    consumer = await bus.subscribe(
        durable="dlq",
        event_types=[TRAINING_REQUESTED],
        handler=recorder,
        db=db,
        tables=TABLES,
        max_deliver=3,
        retry_delay=0.05,
    )
    consumer.start()
    try:
        await wait_until(lambda: _effects(db, healthy.id), what="the healthy event's effect")
        await wait_until(lambda: _rows(db, TABLES.dead_letters), what="the poison event's dead letter")
        await wait_until(lambda: _settled(consumer), what="the poison event to be terminated")
    finally:
        await consumer.stop()

    (letter,) = await _rows(db, TABLES.dead_letters)
    assert letter.consumer == "dlq" and letter.event_id == poison.id
    assert letter.event_type == TRAINING_REQUESTED and letter.deliveries == 3
    assert f"handler refuses {poison.id}" in letter.error
    assert events_pb2.Envelope.FromString(letter.payload) == poison
    assert recorder.calls.count(poison.id) == 3
    assert await _effects(db, poison.id) == 0
    assert [row.event_id for row in await _rows(db, TABLES.processed_events)] == [healthy.id]


async def test_bytes_that_are_not_an_envelope_go_straight_to_dead_letters(db: Database, bus: EventBus):
    await bus.js.publish(
        subject_for(TRAINING_REQUESTED), b"\xffnot protobuf", headers={"Nats-Msg-Id": "junk"}
    )
    recorder = Recorder()
    consumer = await bus.subscribe(
        durable="junk", event_types=[TRAINING_REQUESTED], handler=recorder, db=db, tables=TABLES
    )
    consumer.start()
    try:
        await wait_until(lambda: _settled(consumer), what="the junk message to be terminated")
    finally:
        await consumer.stop()
    (letter,) = await _rows(db, TABLES.dead_letters)
    assert letter.event_id == "junk" and letter.event_type is None and letter.deliveries == 1
    assert letter.payload == b"\xffnot protobuf" and recorder.calls == []


# --- a consumer process killed at the worst moments -----------------------------------------


class ConsumerProcess:
    """tests/shared/consumer_process.py as a child process with its own log and marker files."""

    def __init__(self, tmp_path: Path, nats_url: str, database_url: str):
        self.tmp_path = tmp_path
        self.nats_url = nats_url
        self.database_url = database_url
        self.marker = tmp_path / "marker"
        self.log = tmp_path / "deliveries.log"
        self.output = tmp_path / "consumer-output.log"
        self.process: subprocess.Popen | None = None

    def start(self, mode: str) -> None:
        with self.output.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.shared.consumer_process",
                    "--nats-url",
                    self.nats_url,
                    "--database-url",
                    self.database_url,
                    "--durable",
                    "crash",
                    "--mode",
                    mode,
                    "--marker",
                    str(self.marker),
                    "--log",
                    str(self.log),
                    "--ack-wait",
                    "1",
                ],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(10)

    def lines(self, kind: str) -> list[tuple[str, int]]:
        if not self.log.exists():
            return []
        words = [line.split() for line in self.log.read_text().splitlines()]
        return [(event_id, int(count)) for first, event_id, count in words if first == kind]

    def explain(self) -> str:
        return self.output.read_text() if self.output.exists() else "(no output)"

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def consumer_process(tmp_path: Path, nats_url: str, database_url: str):
    child = ConsumerProcess(tmp_path, nats_url, database_url)
    yield child
    child.cleanup()


@pytest.mark.parametrize("killed", ["after-commit-before-ack", "before-commit"])
async def test_consumer_killed_mid_message_applies_the_effect_exactly_once(
    killed: str, consumer_process: ConsumerProcess, db: Database, bus: EventBus
):
    envelope = _requested()
    await bus.publish(envelope)

    consumer_process.start("block-ack" if killed == "after-commit-before-ack" else "block-commit")
    try:
        await wait_until(
            consumer_process.marker.exists, timeout=20, what="the consumer to reach the kill point"
        )
    except AssertionError:
        pytest.fail(f"consumer never got there:\n{consumer_process.explain()}")
    consumer_process.kill()

    committed = killed == "after-commit-before-ack"
    assert await _effects(db, envelope.id) == (1 if committed else 0)
    assert len(await _rows(db, TABLES.processed_events)) == (1 if committed else 0)

    consumer_process.start("normal")
    try:
        await wait_until(lambda: consumer_process.lines("acked"), timeout=20, what="the redelivery's ack")
    except AssertionError:
        pytest.fail(f"the restarted consumer never acknowledged:\n{consumer_process.explain()}")
    assert consumer_process.terminate() == 0, consumer_process.explain()

    assert await _effects(db, envelope.id) == 1
    (processed,) = await _rows(db, TABLES.processed_events)
    assert (processed.consumer, processed.event_id) == ("crash", envelope.id)
    assert consumer_process.lines("delivered")[0] == (envelope.id, 1)
    ((acked_id, deliveries),) = consumer_process.lines("acked")
    assert acked_id == envelope.id and deliveries >= 2  # a redelivery, not the first delivery
    info = await bus.js.consumer_info(STREAM, "crash")
    assert info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.stream_seq == 1
