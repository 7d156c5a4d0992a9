"""What the inference service consumes: `evaluation.completed`, which promotes a candidate that
passed the gate into its deployment when the deployment says so (`auto_promote`)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.inference import store
from services.inference.deployments import Deployments
from services.shared.process import Subscription
from services.shared.subjects import EVALUATION_COMPLETED


def subscriptions(deployments: Deployments) -> list[Subscription]:
    async def on_evaluation_completed(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
        event = envelope.evaluation_completed
        if not (event.passed and event.deployment and event.candidate_version):
            return
        row = await store.find_deployment(session, envelope.tenant, event.deployment)
        if row is None or not row["auto_promote"]:
            return  # promoted by a person, or not at all
        await deployments.promote_in(session, envelope.tenant, event.deployment, event.candidate_version,
                                     f"evaluation {event.evaluation_id} passed")

    return [Subscription(durable="evaluations", event_types=[EVALUATION_COMPLETED], handler=on_evaluation_completed)]
