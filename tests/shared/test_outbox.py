"""The outbox: events exist exactly when their transaction commits, and the relay publishes them."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.shared.bus import EventBus, new_envelope
from services.shared.db import Database
from services.shared.outbox import OutboxRelay, add_to_outbox, create_messaging_tables, messaging_tables
from services.shared.settings import Settings
from services.shared.subjects import TRAINING_REQUESTED
from tests.shared.conftest import EFFECTS, TABLES  # noqa: E402  (one set of test tables)
from tests.shared.consumer_process import STREAM, wait_until


def _event(job_id: str = "job-1") -> events_pb2.Envelope:
    return new_envelope(
        TRAINING_REQUESTED,
        events_pb2.TrainingRequested(job_id=job_id, base_model="m", dataset_id="d"),
        source="test",
    )


async def _count(db: Database, table: sa.Table, *where) -> int:
    async with db.transaction() as session:
        return (
            await session.execute(sa.select(sa.func.count()).select_from(table).where(*where))
        ).scalar_one()


async def _record_effect(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
    await session.execute(sa.insert(EFFECTS).values(event_id=envelope.id, event_type=envelope.type))


async def test_committed_event_is_published_once_and_rolled_back_one_never(db: Database, bus: EventBus):
    committed, rolled_back = _event("committed"), _event("rolled-back")
    async with db.transaction() as session:
        await add_to_outbox(session, TABLES, committed)
    with pytest.raises(RuntimeError, match="abandon"):
        async with db.transaction() as session:
            await add_to_outbox(session, TABLES, rolled_back)
            raise RuntimeError("abandon the change")

    relay = OutboxRelay(db, TABLES, bus)
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0  # nothing left: marked sent after its PubAck

    consumer = await bus.subscribe(
        durable="effects", event_types=[TRAINING_REQUESTED], handler=_record_effect, db=db, tables=TABLES
    )
    consumer.start()
    try:
        await wait_until(lambda: _count(db, EFFECTS), what="the committed event's effect")
        await wait_until(lambda: _ack_pending_is_zero(consumer), what="the consumer to acknowledge the event")
    finally:
        await consumer.stop()

    assert await _count(db, EFFECTS, EFFECTS.c.event_id == committed.id) == 1
    assert await _count(db, EFFECTS, EFFECTS.c.event_id == rolled_back.id) == 0
    assert await _count(db, TABLES.outbox, TABLES.outbox.c.sent_at.is_not(None)) == 1
    assert await _count(db, TABLES.outbox, TABLES.outbox.c.id == rolled_back.id) == 0
    assert (await bus.js.stream_info(STREAM)).state.messages == 1


async def _ack_pending_is_zero(consumer) -> bool:
    info = await consumer.info()
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_publish_failure_leaves_row_unsent_until_a_later_pass(db: Database, nats_url: str):
    # No stream yet: the server has no one to answer the publish.
    bus = await EventBus.connect(Settings(nats_url=nats_url, stream_name=STREAM), name="test")
    try:
        event = _event()
        async with db.transaction() as session:
            await add_to_outbox(session, TABLES, event)
        relay = OutboxRelay(db, TABLES, bus)

        assert await relay.relay_once() == 0
        async with db.transaction() as session:
            row = (await session.execute(sa.select(TABLES.outbox))).one()
        assert row.sent_at is None and row.attempts == 1

        await bus.ensure_stream()
        assert await relay.relay_once() == 1
        async with db.transaction() as session:
            row = (await session.execute(sa.select(TABLES.outbox))).one()
        assert row.sent_at is not None and row.attempts == 2
    finally:
        await bus.close()


async def test_relay_publishes_many_rows_oldest_first_in_batches(db: Database, bus: EventBus):
    events = [_event(f"job-{index}") for index in range(250)]
    for start in range(0, len(events), 50):
        async with db.transaction() as session:
            for event in events[start : start + 50]:
                await add_to_outbox(session, TABLES, event)

    relay = OutboxRelay(db, TABLES, bus, batch_size=100)
    assert await relay.relay_once() == 250

    subscription = await bus.js.pull_subscribe("tuneloop.>", stream=STREAM)
    received: list[str] = []
    while len(received) < len(events):
        for msg in await subscription.fetch(100, timeout=2):
            received.append(events_pb2.Envelope.FromString(msg.data).id)
            await msg.ack()
    assert received == [event.id for event in events]


async def test_run_relays_when_poked_and_stops_when_asked(db: Database, bus: EventBus):
    # A poll interval far longer than the test: only poke() can explain a prompt publish.
    relay = OutboxRelay(db, TABLES, bus, poll_interval=60)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.1)  # let the first (empty) pass finish and the relay wait
    async with db.transaction() as session:
        await add_to_outbox(session, TABLES, _event())
    relay.poke()
    await wait_until(
        lambda: _count(db, TABLES.outbox, TABLES.outbox.c.sent_at.is_not(None)),
        timeout=3,
        what="the poked relay to publish",
    )
    stop.set()
    await asyncio.wait_for(task, timeout=3)
    assert (await bus.js.stream_info(STREAM)).state.messages == 1


async def test_migration_helper_matches_metadata(database_url: str):
    metadata = sa.MetaData()
    messaging_tables(metadata, "svc")
    database = Database(database_url, service="svc")

    def migrate_and_compare(connection: sa.Connection) -> tuple[list, str, str]:
        create_messaging_tables(Operations(MigrationContext.configure(connection)), "svc")
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
        # compare_metadata ignores an index's WHERE clause: compare the partial index by hand,
        # against the same tables created from metadata under another prefix.
        other = sa.MetaData()
        messaging_tables(other, "meta")
        other.create_all(connection)
        inspector = sa.inspect(connection)
        return differences, _index_where(inspector, "svc_outbox"), _index_where(inspector, "meta_outbox")

    try:
        async with database.engine.begin() as connection:
            differences, migrated_where, metadata_where = await connection.run_sync(migrate_and_compare)
    finally:
        await database.close()
    assert differences == []
    assert migrated_where == metadata_where == "sent_at IS NULL"


def _index_where(inspector: sa.Inspector, table: str) -> str:
    (index,) = inspector.get_indexes(table)
    options = index.get("dialect_options", {})
    where = options.get("sqlite_where", options.get("postgresql_where"))
    return str(where).strip("()")


async def test_add_to_outbox_refuses_an_envelope_without_id(db: Database):
    envelope = _event()
    envelope.id = ""
    with pytest.raises(ValueError, match="without an id"):
        async with db.transaction() as session:
            await add_to_outbox(session, TABLES, envelope)
