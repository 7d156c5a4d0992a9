"""What the feedback service consumes: `model.deployed`, to know which version each deployment serves."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.feedback import store
from services.shared.process import Subscription
from services.shared.subjects import MODEL_DEPLOYED


async def on_model_deployed(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
    event = envelope.model_deployed
    await store.record_deployment(
        session, envelope.tenant, event.deployment, event.model_version, envelope.time.seconds
    )


SUBSCRIPTIONS = [Subscription(durable="deployments", event_types=[MODEL_DEPLOYED], handler=on_model_deployed)]
