"""The transactional outbox: an event is written in the same transaction as the change it reports.

A service never publishes straight from a request: it calls `add_to_outbox` inside the database
transaction that makes the change, so the event exists if and only if the change committed. The
`OutboxRelay` then publishes unsent rows to JetStream and marks each one sent only after its PubAck;
a crash between the two publishes the row again, and the stream drops the repeat because the
envelope id is the `Nats-Msg-Id`. The same module defines the consumer-side tables (processed events
and dead letters) so every service gets all three from one call, in its metadata and its migration.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.shared.db import Database
from services.shared.subjects import subject_for

if TYPE_CHECKING:
    from services.shared.bus import EventBus

log = logging.getLogger(__name__)

# Envelope ids are uuid4 hex (32 characters); the rest leaves room for ids chosen by callers.
ID_LENGTH = 64
NAME_LENGTH = 200
# The longest the relay waits between passes while publishing keeps failing (a poke still wakes it).
MAX_BACKOFF_S = 10.0


@dataclass
class MessagingTables:
    """One service's outbox, processed-event and dead-letter tables."""

    outbox: sa.Table
    processed_events: sa.Table
    dead_letters: sa.Table


def _unsent_index_name(prefix: str) -> str:
    return f"ix_{prefix}_outbox_unsent"


def _unsent_where() -> dict[str, Any]:
    # A partial index holds only the rows still to publish, so it stays small however long the
    # outbox grows; both SQLite and PostgreSQL support it.
    where = sa.text("sent_at IS NULL")
    return {"sqlite_where": where, "postgresql_where": where}


def messaging_tables(metadata: sa.MetaData, prefix: str) -> MessagingTables:
    """Define `<prefix>_outbox`, `<prefix>_processed_events` and `<prefix>_dead_letters` on `metadata`."""
    outbox = sa.Table(
        f"{prefix}_outbox",
        metadata,
        sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
        sa.Column("event_type", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("subject", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    sa.Index(_unsent_index_name(prefix), outbox.c.created_at, **_unsent_where())
    processed_events = sa.Table(
        f"{prefix}_processed_events",
        metadata,
        sa.Column("consumer", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("event_id", sa.String(ID_LENGTH), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
    dead_letters = sa.Table(
        f"{prefix}_dead_letters",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("consumer", sa.String(NAME_LENGTH), nullable=False),
        # Unknown (NULL) when the message was not an Envelope at all.
        sa.Column("event_id", sa.String(ID_LENGTH), nullable=True),
        sa.Column("event_type", sa.String(NAME_LENGTH), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    return MessagingTables(outbox=outbox, processed_events=processed_events, dead_letters=dead_letters)


def create_messaging_tables(op: Any, prefix: str) -> None:
    """Create the three messaging tables from a service's initial Alembic migration.

    Written out column by column, not derived from `messaging_tables`, because a migration must
    keep creating what it created on the day it was written; a test checks the two still agree.
    """
    op.create_table(
        f"{prefix}_outbox",
        sa.Column("id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("event_type", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("subject", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        _unsent_index_name(prefix),
        f"{prefix}_outbox",
        ["created_at"],
        **_unsent_where(),
    )
    op.create_table(
        f"{prefix}_processed_events",
        sa.Column("consumer", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("event_id", sa.String(ID_LENGTH), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )
    op.create_table(
        f"{prefix}_dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(NAME_LENGTH), nullable=False),
        sa.Column("event_id", sa.String(ID_LENGTH), nullable=True),
        sa.Column("event_type", sa.String(NAME_LENGTH), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


async def add_to_outbox(
    session: AsyncSession, tables: MessagingTables, envelope: events_pb2.Envelope
) -> None:
    """Record `envelope` for publishing, in the caller's transaction: it is sent only if that commits."""
    if not envelope.id:
        raise ValueError("cannot add an envelope without an id to the outbox")
    await session.execute(
        sa.insert(tables.outbox).values(
            id=envelope.id,
            event_type=envelope.type,
            subject=subject_for(envelope.type),
            payload=envelope.SerializeToString(),
            created_at=datetime.now(UTC),
            attempts=0,
        )
    )


class OutboxRelay:
    """Publishes a service's unsent outbox rows to the bus, oldest first, and marks them sent.

    Rows are read in one short transaction, published without holding it (a slow broker must not
    block the service's writers), and marked in another. Two relays over the same table may both
    publish a row; the stream's duplicate window drops the second copy.
    """

    def __init__(
        self,
        db: Database,
        tables: MessagingTables,
        bus: EventBus,
        *,
        poll_interval: float = 0.2,
        batch_size: int = 100,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.db = db
        self.tables = tables
        self.bus = bus
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        # Consecutive passes that failed, to back off while the broker or database is down.
        self._failed_passes = 0

    def poke(self) -> None:
        """Relay now rather than at the next poll: call it right after committing outbox rows."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish every unsent row, a batch at a time; the number published.

        Stops at the first batch with a failed publish, leaving those rows for a later pass, so a
        broker outage costs one failed batch per pass rather than a tight loop.
        """
        published = 0
        while True:
            sent, failed, fetched = await self._relay_batch()
            published += sent
            if failed:
                self._failed_passes += 1
                return published
            if fetched < self.batch_size:
                self._failed_passes = 0
                return published

    async def _relay_batch(self) -> tuple[int, int, int]:
        outbox = self.tables.outbox
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    sa.select(outbox.c.id, outbox.c.payload)
                    .where(outbox.c.sent_at.is_(None))
                    .order_by(outbox.c.created_at, outbox.c.id)
                    .limit(self.batch_size)
                )
            ).all()
        if not rows:
            return 0, 0, 0
        envelopes = [events_pb2.Envelope.FromString(row.payload) for row in rows]
        results = await self.bus.publish_many(envelopes)
        sent_ids = [
            row.id for row, result in zip(rows, results, strict=True) if not isinstance(result, Exception)
        ]
        failed_ids = [
            row.id for row, result in zip(rows, results, strict=True) if isinstance(result, Exception)
        ]
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, Exception):
                log.warning("outbox %s: publishing %s failed: %r", outbox.name, row.id, result)
        async with self.db.transaction() as session:
            if sent_ids:
                await session.execute(
                    sa.update(outbox)
                    .where(outbox.c.id.in_(sent_ids))
                    .values(sent_at=datetime.now(UTC), attempts=outbox.c.attempts + 1)
                )
            if failed_ids:
                await session.execute(
                    sa.update(outbox)
                    .where(outbox.c.id.in_(failed_ids))
                    .values(attempts=outbox.c.attempts + 1)
                )
        return len(sent_ids), len(failed_ids), len(rows)

    def _next_wait(self) -> float:
        if not self._failed_passes:
            return self.poll_interval
        return min(MAX_BACKOFF_S, self.poll_interval * 2**self._failed_passes)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set: at every poke, and every `poll_interval` in case one was missed."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                # Cleared before relaying, so a poke that lands mid-pass triggers another pass.
                self._wake.clear()
                try:
                    await self.relay_once()
                except Exception:
                    self._failed_passes += 1
                    log.exception("outbox %s: relay pass failed; retrying", self.tables.outbox.name)
                woken = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait(
                        {stopping, woken}, timeout=self._next_wait(), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    woken.cancel()
        finally:
            stopping.cancel()
