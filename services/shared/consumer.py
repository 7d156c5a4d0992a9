"""Consuming platform events exactly once in effect: a durable pull consumer with ack after commit.

Each message's handler runs in a database transaction that also records `(consumer, event id)` as
processed, and the message is acknowledged only after that transaction commits. A crash before the
commit leaves nothing behind and the message comes back; a crash after it leaves the processed
row, so the redelivery is recognised and only acknowledged. Messages that keep failing become
dead-letter rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.shared import telemetry
from services.shared.db import Database
from services.shared.outbox import MessagingTables
from services.shared.subjects import MSG_ID_HEADER, PAYLOAD_FIELDS, subject_for

if TYPE_CHECKING:
    from services.shared.bus import EventBus

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, events_pb2.Envelope], Awaitable[None]]

# How long one fetch waits for messages; `stop` interrupts it, so this only bounds idle requests.
FETCH_TIMEOUT_S = 5.0
# The longest a failed message waits before its next delivery.
MAX_RETRY_DELAY_S = 30.0
# Dead-letter rows keep the end of a long traceback, where the cause is.
MAX_ERROR_CHARS = 8000


class _AlreadyProcessed(Exception):
    """Raised inside a handler transaction to roll it back when the event was handled before."""


class Consumer:
    """A durable pull consumer that applies each event once, in the service's own transaction.

    Subclasses may override `acknowledge` (tests pause there to prove a crash between commit and ack
    is harmless).
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        durable: str,
        event_types: list[str],
        handler: Handler,
        db: Database,
        tables: MessagingTables,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        batch: int = 10,
        retry_delay: float = 0.5,
    ):
        if not event_types:
            raise ValueError(f"consumer {durable!r}: no event types to consume")
        if max_deliver < 1:
            raise ValueError(f"consumer {durable!r}: max_deliver must be at least 1, got {max_deliver}")
        if batch < 1:
            raise ValueError(f"consumer {durable!r}: batch must be at least 1, got {batch}")
        self.subjects = [subject_for(event_type) for event_type in event_types]
        self.bus = bus
        self.durable = durable
        self.event_types = list(event_types)
        self.handler = handler
        self.db = db
        self.tables = tables
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait
        self.batch = batch
        self.retry_delay = retry_delay
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def consumer_config(self) -> ConsumerConfig:
        one = len(self.subjects) == 1
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            # One delivery beyond ours: if the process dies during the last attempt, before it
            # could write the dead letter, the server gives it one more chance instead of dropping
            # the message silently.
            max_deliver=self.max_deliver + 1,
            filter_subject=self.subjects[0] if one else None,
            filter_subjects=None if one else self.subjects,
        )

    async def bind(self) -> None:
        """Create the durable consumer, or update it to this configuration, and bind to it."""
        stream = self.bus.settings.stream_name
        await self.bus.js.add_consumer(stream, self.consumer_config())
        self._subscription = await self.bus.js.pull_subscribe_bind(durable=self.durable, stream=stream)

    async def info(self) -> ConsumerInfo:
        """The server's view of this consumer (delivered, ack pending, redelivered counts)."""
        return await self.bus.js.consumer_info(self.bus.settings.stream_name, self.durable)

    def start(self, stop: asyncio.Event | None = None) -> asyncio.Task:
        """Consume in a background task until `stop` is set or `stop()` is awaited."""
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"consumer {self.durable!r} is already running")
        self._stop.clear()
        self._task = asyncio.create_task(self.run(stop or self._stop), name=f"consumer {self.durable}")
        return self._task

    async def stop(self) -> None:
        """End the task `start` began, after the message in hand is finished."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle messages until `stop` is set."""
        if self._subscription is None:
            raise RuntimeError(f"consumer {self.durable!r}: call bind() before run()")
        stopped = asyncio.ensure_future(_first_set(stop, self._stop))
        try:
            while not stopped.done():
                messages = await self._fetch(stopped)
                for index, msg in enumerate(messages):
                    if stopped.done():
                        # Hand the rest back now rather than after ack_wait.
                        for left in messages[index:]:
                            with contextlib.suppress(Exception):
                                await left.nak()
                        break
                    try:
                        await self.handle(msg)
                    except Exception:
                        # Only the bus or database failing outright gets here; the message comes
                        # back after ack_wait.
                        log.exception("consumer %s: could not handle a message", self.durable)
        finally:
            stopped.cancel()
            # A pull subscription left open makes the connection's drain wait for its full
            # timeout (30 s); the durable consumer itself stays on the server.
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def _fetch(self, stopped: asyncio.Future) -> list[Msg]:
        assert self._subscription is not None
        fetch = asyncio.ensure_future(self._subscription.fetch(self.batch, timeout=FETCH_TIMEOUT_S))
        await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fetch
            return []
        try:
            return fetch.result()
        except TimeoutError:
            return []  # nats.errors.TimeoutError: nothing to do for a while
        except Exception as error:
            log.warning("consumer %s: fetch failed: %r", self.durable, error)
            await asyncio.wait({stopped}, timeout=1.0)
            return []

    async def handle(self, msg: Msg) -> None:
        """Apply one message in a transaction that also records it processed, then acknowledge it."""
        try:
            envelope = events_pb2.Envelope.FromString(msg.data)
            if envelope.type not in PAYLOAD_FIELDS or not envelope.id:
                raise ValueError(f"envelope has unknown type {envelope.type!r} or no id")
        except (DecodeError, ValueError) as error:
            await self._dead_letter(msg, None, error)
            return
        parent = telemetry.extract_trace(msg.headers or {})
        span_attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": msg.subject,
            "messaging.message.id": envelope.id,
            "messaging.consumer.group.name": self.durable,
        }
        with telemetry.tracer(__name__).start_as_current_span(
            f"process {envelope.type}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=span_attributes,
        ) as span:
            try:
                await self._apply(envelope)
            except Exception as error:
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                await self._failed(msg, envelope, error)
                return
            await self.acknowledge(msg)

    async def _apply(self, envelope: events_pb2.Envelope) -> None:
        processed = self.tables.processed_events
        try:
            async with self.db.transaction() as session:
                # Claim the event before running the handler: a second delivery handled at the
                # same time waits on this row and then fails the unique key, instead of applying
                # the effect twice. Inserting first also takes SQLite's write lock up front.
                try:
                    await session.execute(
                        sa.insert(processed).values(
                            consumer=self.durable, event_id=envelope.id, processed_at=datetime.now(UTC)
                        )
                    )
                except sa.exc.IntegrityError:
                    raise _AlreadyProcessed from None
                await self.handler(session, envelope)
        except _AlreadyProcessed:
            log.debug("consumer %s: %s already processed", self.durable, envelope.id)

    async def acknowledge(self, msg: Msg) -> None:
        """Tell the server the message is done, waiting for it to confirm (a double ack)."""
        try:
            await msg.ack_sync()
        except Exception as error:
            # The effect is committed; a redelivery will only be recognised and acknowledged.
            log.warning("consumer %s: ack failed: %r", self.durable, error)

    async def _failed(self, msg: Msg, envelope: events_pb2.Envelope, error: Exception) -> None:
        delivered = msg.metadata.num_delivered
        if delivered >= self.max_deliver:
            await self._dead_letter(msg, envelope, error)
            return
        delay = min(self.retry_delay * 2 ** (delivered - 1), MAX_RETRY_DELAY_S)
        log.warning(
            "consumer %s: %s %s failed (delivery %d of %d), retrying in %.1fs: %r",
            self.durable,
            envelope.type,
            envelope.id,
            delivered,
            self.max_deliver,
            delay,
            error,
        )
        await msg.nak(delay=delay)

    async def _dead_letter(
        self, msg: Msg, envelope: events_pb2.Envelope | None, error: BaseException
    ) -> None:
        """Keep the message and its error in the database, then stop the server redelivering it."""
        error_text = "".join(traceback.format_exception(error))[-MAX_ERROR_CHARS:]
        event_id = envelope.id if envelope else (msg.headers or {}).get(MSG_ID_HEADER)
        log.error(
            "consumer %s: dead-lettering %s after %d deliveries: %r",
            self.durable,
            event_id,
            msg.metadata.num_delivered,
            error,
        )
        try:
            async with self.db.transaction() as session:
                await session.execute(
                    sa.insert(self.tables.dead_letters).values(
                        consumer=self.durable,
                        event_id=event_id,
                        event_type=envelope.type if envelope else None,
                        payload=msg.data,
                        error=error_text,
                        deliveries=msg.metadata.num_delivered,
                        created_at=datetime.now(UTC),
                    )
                )
        except Exception:
            # Without the row the message must not be dropped: let it come back and try again.
            log.exception("consumer %s: could not write the dead letter for %s", self.durable, event_id)
            await msg.nak(delay=self.retry_delay)
            return
        await msg.term()


async def _first_set(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
