"""Event bus throughput: awaited publish vs. the transactional outbox relay vs. a durable consumer.

Run from the repository root:

    .venv/bin/python bench/bus.py [--events N] [--database-url URL]

One run starts its own nats-server (JetStream, in a temporary directory) and, unless a database URL
is given, uses a temporary SQLite file. It measures, for N envelopes of the same type and size:

1. baseline: `await bus.publish(envelope)` one at a time, each waiting for its PubAck;
2. the outbox path: N rows written with `add_to_outbox` in transactions of 100 (timed on its own),
   then `OutboxRelay.relay_once()` until nothing is left (the relay's throughput);
3. end to end: a durable `Consumer` (from `EventBus.subscribe`, with a handler that writes nothing
   itself) draining those N events; each one is still a transaction that records it processed,
   followed by a synchronous ack. The run fails (exit 1) unless it saw exactly the N relayed events.

With a PostgreSQL URL the tables get a unique prefix and are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# Running `python bench/bus.py` puts bench/ (not the repository root) on sys.path; the root is
# needed to import `services`, `protos` and `tuneloop` without installing anything.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from protos import events_pb2  # noqa: E402
from services.shared.bus import EventBus, new_envelope  # noqa: E402
from services.shared.db import Database  # noqa: E402
from services.shared.outbox import OutboxRelay, add_to_outbox, messaging_tables  # noqa: E402
from services.shared.settings import Settings  # noqa: E402
from services.shared.subjects import TRAINING_REQUESTED  # noqa: E402
from tuneloop.nats_server import NatsServer  # noqa: E402

STREAM = "TUNELOOP_BENCH"
DURABLE = "bench-consumer"
OUTBOX_TRANSACTION = 100


@dataclass
class Row:
    name: str
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def _envelopes(count: int, tag: str) -> list[events_pb2.Envelope]:
    return [
        new_envelope(
            TRAINING_REQUESTED,
            events_pb2.TrainingRequested(
                job_id=f"{tag}-{index:06d}", base_model="smollm2-135m-instruct", dataset_id="bench"
            ),
            source="bench",
        )
        for index in range(count)
    ]


async def _count(db: Database, table: sa.Table, *where) -> int:
    async with db.transaction() as session:
        return (
            await session.execute(sa.select(sa.func.count()).select_from(table).where(*where))
        ).scalar_one()


async def _bench(args: argparse.Namespace, nats_url: str, database_url: str) -> tuple[list[Row], bool]:
    n = args.events
    prefix = f"bench_{uuid.uuid4().hex[:10]}"
    metadata = sa.MetaData()
    tables = messaging_tables(metadata, prefix)
    db = Database(database_url, service=prefix)
    bus = await EventBus.connect(Settings(nats_url=nats_url, stream_name=STREAM), name="bench")
    rows: list[Row] = []
    ok = True
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        await bus.ensure_stream()

        # 1. Baseline: one publish at a time, each awaiting its PubAck.
        baseline = _envelopes(n, "baseline")
        start = time.perf_counter()
        for envelope in baseline:
            await bus.publish(envelope)
        rows.append(Row("awaited publish (baseline)", n, time.perf_counter() - start))
        # Empty the stream so the consumer below sees only the outbox's events.
        await bus.js.purge_stream(STREAM)

        # 2a. The service side: outbox rows written in transactions of 100.
        events = _envelopes(n, "outbox")
        start = time.perf_counter()
        for first in range(0, n, OUTBOX_TRANSACTION):
            async with db.transaction() as session:
                for envelope in events[first : first + OUTBOX_TRANSACTION]:
                    await add_to_outbox(session, tables, envelope)
        rows.append(Row(f"outbox write (add_to_outbox, tx of {OUTBOX_TRANSACTION})", n, time.perf_counter() - start))

        # 2b. The relay: publish and mark sent until nothing is left.
        relay = OutboxRelay(db, tables, bus)
        published = 0
        start = time.perf_counter()
        while sent := await relay.relay_once():
            published += sent
        rows.append(Row(f"outbox relay (relay_once, batch {relay.batch_size})", published, time.perf_counter() - start))
        unsent = await _count(db, tables.outbox, tables.outbox.c.sent_at.is_(None))
        in_stream = (await bus.js.stream_info(STREAM)).state.messages
        if published != n or unsent or in_stream != n:
            print(f"FAIL: relay published {published}, {unsent} rows unsent, {in_stream} in the stream; expected {n}")
            ok = False

        # 3. End to end: a durable consumer drains the relayed events.
        seen: list[str] = []

        async def handler(_session: AsyncSession, envelope: events_pb2.Envelope) -> None:
            seen.append(envelope.id)

        processed = tables.processed_events
        consumer = await bus.subscribe(
            durable=DURABLE, event_types=[TRAINING_REQUESTED], handler=handler, db=db, tables=tables
        )
        start = time.perf_counter()
        consumer.start()
        deadline = start + args.consume_timeout
        try:
            while len(seen) < n and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            # The last handler call is not yet committed and acknowledged: wait for the server to agree.
            while time.perf_counter() < deadline:
                info = await consumer.info()
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            await consumer.stop()
        rows.append(Row("durable consumer (subscribe, trivial handler)", len(set(seen)), elapsed))
        recorded = await _count(db, processed, processed.c.consumer == DURABLE)
        expected = {envelope.id for envelope in events}
        if len(seen) != n or set(seen) != expected or recorded != n:
            print(
                f"FAIL: consumer saw {len(seen)} deliveries of {len(set(seen))} distinct events "
                f"({len(set(seen) & expected)} of the {n} relayed), {recorded} processed rows"
            )
            ok = False
    finally:
        await bus.close()
        try:
            async with db.engine.begin() as connection:
                await connection.run_sync(metadata.drop_all)
        finally:
            await db.close()
    return rows, ok


def _report(rows: list[Row], database_url: str, n: int) -> None:
    backend = make_url(database_url).get_backend_name()
    print(f"\nevents: {n}   database: {backend}   nats-server: fresh, JetStream file storage")
    width = max(len(row.name) for row in rows)
    print(f"| {'step':<{width}} | {'events':>6} | {'seconds':>7} | {'events/s':>8} |")
    print(f"|{'-' * (width + 2)}|{'-' * 7}:|{'-' * 8}:|{'-' * 9}:|")
    for row in rows:
        print(f"| {row.name:<{width}} | {row.events:>6} | {row.seconds:>7.2f} | {row.rate:>8.0f} |")
    baseline, write, relay, consumer = rows
    both = Row("", n, write.seconds + relay.seconds)
    print()
    print(f"relay / awaited publish:                  {relay.rate / baseline.rate:.2f}x")
    print(f"(outbox write + relay) / awaited publish: {both.rate / baseline.rate:.2f}x")
    print(f"consumer / awaited publish:               {consumer.rate / baseline.rate:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="envelopes per step (default 5000)")
    parser.add_argument(
        "--database-url",
        help="sqlite:///... or postgresql://...; default a SQLite file in the run's temporary directory",
    )
    parser.add_argument(
        "--consume-timeout", type=float, default=120.0, help="seconds the consumer may take (default 120)"
    )
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    temp = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    server: NatsServer | None = None
    try:
        server = NatsServer(store_dir=temp / "jetstream").start()
        database_url = args.database_url or f"sqlite:///{temp / 'bench.db'}"
        rows, ok = asyncio.run(_bench(args, server.url, database_url))
        _report(rows, database_url, args.events)
        if not ok:
            print("FAIL")
            return 1
        print("OK: the consumer saw each of the", args.events, "relayed events exactly once")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
