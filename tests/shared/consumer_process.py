"""A consumer in its own process, so a test can SIGKILL it at the worst moments.

Run as `python -m tests.shared.consumer_process --mode ...`:
  normal        handle and acknowledge as a service would;
  block-ack     commit the handler's transaction, write the marker, then hang instead of acking;
  block-commit  run the handler, write the marker, then hang before its transaction commits.
Each delivery is logged to --log as `delivered <event id> <num_delivered>`, each ack as
`acked <event id> <num_delivered>`. SIGTERM stops it cleanly.

Also the tables and polling helper the messaging tests share.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.shared.bus import Consumer, EventBus
from services.shared.db import Database
from services.shared.outbox import MessagingTables, messaging_tables
from services.shared.settings import Settings
from services.shared.subjects import TRAINING_REQUESTED

PREFIX = "msgtest"
STREAM = "TUNELOOP_TEST"


def build_tables() -> tuple[sa.MetaData, MessagingTables, sa.Table]:
    """The messaging tables plus `effects`, one row per handler run that committed."""
    metadata = sa.MetaData()
    tables = messaging_tables(metadata, PREFIX)
    # No unique key on event_id: an effect applied twice must show up as two rows.
    effects = sa.Table(
        f"{PREFIX}_effects",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
    )
    return metadata, tables, effects


async def wait_until(
    condition: Callable[[], object | Awaitable[object]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll `condition` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def _append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")


class CrashTestConsumer(Consumer):
    def __init__(self, *args, mode: str, marker: Path, log_path: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.mode = mode
        self.marker = marker
        self.log_path = log_path

    async def handle(self, msg: Msg) -> None:
        envelope = events_pb2.Envelope.FromString(msg.data)
        _append(self.log_path, f"delivered {envelope.id} {msg.metadata.num_delivered}")
        await super().handle(msg)

    async def acknowledge(self, msg: Msg) -> None:
        envelope = events_pb2.Envelope.FromString(msg.data)
        if self.mode == "block-ack":
            self.marker.write_text("committed, not acknowledged")
            await asyncio.Event().wait()
        await super().acknowledge(msg)
        _append(self.log_path, f"acked {envelope.id} {msg.metadata.num_delivered}")


async def main(args: argparse.Namespace) -> None:
    _metadata, tables, effects = build_tables()
    marker = Path(args.marker)

    async def handler(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
        await session.execute(sa.insert(effects).values(event_id=envelope.id, event_type=envelope.type))
        if args.mode == "block-commit":
            await session.flush()
            marker.write_text("handled, not committed")
            await asyncio.Event().wait()

    db = Database(args.database_url, service=PREFIX)
    bus = await EventBus.connect(Settings(nats_url=args.nats_url, stream_name=STREAM), name="crash-test")
    consumer = CrashTestConsumer(
        bus,
        durable=args.durable,
        event_types=[TRAINING_REQUESTED],
        handler=handler,
        db=db,
        tables=tables,
        ack_wait=args.ack_wait,
        mode=args.mode,
        marker=marker,
        log_path=Path(args.log),
    )
    await consumer.bind()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.run(stop)
    await bus.close()
    await db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--durable", required=True)
    parser.add_argument("--mode", choices=["normal", "block-ack", "block-commit"], required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--ack-wait", type=float, default=1.0)
    asyncio.run(main(parser.parse_args()))
