"""The platform event bus: protobuf envelopes on one JetStream stream (consumers: consumer.py).

Publishing sends the envelope id as `Nats-Msg-Id`, so the server drops a repeat inside the stream's
duplicate window. Consuming, with ack only after the handler's transaction commits, is in
consumer.py; `EventBus.subscribe` makes the consumers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from protos import events_pb2
from services.shared import telemetry
from services.shared.consumer import Consumer, Handler
from services.shared.db import Database
from services.shared.outbox import MessagingTables
from services.shared.settings import Settings
from services.shared.subjects import MSG_ID_HEADER, PAYLOAD_FIELDS, SUBJECT_PREFIX, subject_for

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0
PUBLISH_TIMEOUT_S = 5.0


def new_envelope(
    event_type: str,
    payload_message: Message,
    *,
    source: str,
    tenant: str = "default",
    event_id: str | None = None,
) -> events_pb2.Envelope:
    """An envelope for `payload_message`, carrying the current trace context so the trace crosses the bus."""
    subject_for(event_type)  # raises on an unknown type, naming the known ones
    field = PAYLOAD_FIELDS[event_type]
    expected = events_pb2.Envelope.DESCRIPTOR.fields_by_name[field].message_type
    if payload_message.DESCRIPTOR.full_name != expected.full_name:
        raise ValueError(
            f"event type {event_type!r} carries a {expected.name} payload, "
            f"not {payload_message.DESCRIPTOR.name}"
        )
    envelope = events_pb2.Envelope(
        id=event_id or uuid.uuid4().hex,
        type=event_type,
        source=source,
        tenant=tenant,
    )
    envelope.time.FromDatetime(datetime.now(UTC))
    getattr(envelope, field).CopyFrom(payload_message)
    carrier = telemetry.inject_trace({})
    envelope.trace.traceparent = carrier.get("traceparent", "")
    envelope.trace.tracestate = carrier.get("tracestate", "")
    return envelope


def payload_of(envelope: events_pb2.Envelope) -> Message:
    """The typed payload message an envelope carries."""
    field = envelope.WhichOneof("payload")
    if field is None:
        raise ValueError(f"envelope {envelope.id!r} ({envelope.type!r}) carries no payload")
    return getattr(envelope, field)


def _headers(envelope: events_pb2.Envelope) -> dict[str, str]:
    headers = {MSG_ID_HEADER: envelope.id}
    if envelope.trace.traceparent:
        # The trace of the code that created the event, not of whoever publishes it (the outbox
        # relay publishes long after, outside any request).
        headers["traceparent"] = envelope.trace.traceparent
        if envelope.trace.tracestate:
            headers["tracestate"] = envelope.trace.tracestate
    else:
        telemetry.inject_trace(headers)
    return headers


class EventBus:
    """A connection to NATS and the platform stream."""

    def __init__(self, nc: nats.NATS, settings: Settings):
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings

    @classmethod
    async def connect(cls, settings: Settings, *, name: str) -> EventBus:
        """Connect as client `name`, reconnecting for ever: a broker restart must not end a service."""

        async def on_error(error: Exception) -> None:
            log.warning("nats client %s: %r", name, error)

        async def on_disconnected() -> None:
            if nc.is_closed or nc.is_draining:
                return  # our own close()
            log.warning("nats client %s: disconnected from %s", name, settings.nats_url)

        async def on_reconnected() -> None:
            log.info("nats client %s: reconnected", name)

        nc = await nats.connect(
            settings.nats_url,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
        return cls(nc, settings)

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.settings.stream_name,
            subjects=[SUBJECT_PREFIX + ">"],
            num_replicas=self.settings.stream_replicas,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
        )

    async def ensure_stream(self) -> None:
        """Create the platform stream, or bring an existing one to this configuration."""
        config = self.stream_config()
        try:
            await self.js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:
                pass  # another service created it a moment ago: fall through and update
        await self.js.update_stream(config)

    async def publish(self, envelope: events_pb2.Envelope) -> bool:
        """Publish and wait for the PubAck; True when the server had it already (a duplicate)."""
        ack = await self.js.publish(
            subject_for(envelope.type),
            envelope.SerializeToString(),
            timeout=PUBLISH_TIMEOUT_S,
            headers=_headers(envelope),
        )
        return bool(ack.duplicate)

    async def publish_many(
        self, envelopes: Sequence[events_pb2.Envelope], *, timeout: float = PUBLISH_TIMEOUT_S
    ) -> list[bool | Exception]:
        """Publish all at once, acks awaited together; per envelope, `duplicate` or the error.

        Never raises for one envelope's failure, so a caller can record exactly which made it.
        Concurrent requests run as fast as `js.publish_async` (about 15k/s on one machine, against
        ~5k/s awaiting each ack) and, unlike it, leak no pending slot when a send fails.
        """

        async def one(envelope: events_pb2.Envelope) -> bool:
            ack = await self.js.publish(
                subject_for(envelope.type),
                envelope.SerializeToString(),
                timeout=timeout,
                headers=_headers(envelope),
            )
            return bool(ack.duplicate)

        results = await asyncio.gather(*(one(envelope) for envelope in envelopes), return_exceptions=True)
        return [
            result if isinstance(result, bool | Exception) else RuntimeError(repr(result))
            for result in results
        ]

    async def subscribe(
        self,
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
    ) -> Consumer:
        """Create (or update) durable consumer `durable` and bind to it; `start()` it to consume."""
        consumer = Consumer(
            self,
            durable=durable,
            event_types=event_types,
            handler=handler,
            db=db,
            tables=tables,
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            batch=batch,
            retry_delay=retry_delay,
        )
        await consumer.bind()
        return consumer

    async def close(self) -> None:
        """Flush what is in flight and disconnect; stop this bus's consumers first."""
        if not self.nc.is_closed:
            await self.nc.drain()


__all__ = ["Consumer", "EventBus", "Handler", "new_envelope", "payload_of"]
