"""What the inference service consumes: `evaluation.completed`. A candidate that passed the gate
for a deployment that says so (`auto_promote`) first serves a canary, `auto_canary_percent` of
the requests for `auto_canary_s` seconds, and is then promoted by the service's canary check
(deployments.py); with `auto_canary_s` 0 it is promoted at once. A repeated event changes
nothing: the candidate already serves, or is already the canary."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.inference import store
from services.inference.deployments import Deployments
from services.inference.settings import InferenceSettings
from services.shared.process import Subscription
from services.shared.subjects import EVALUATION_COMPLETED


def subscriptions(deployments: Deployments, settings: InferenceSettings) -> list[Subscription]:
    async def on_evaluation_completed(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
        event = envelope.evaluation_completed
        if not (event.passed and event.deployment and event.candidate_version):
            return
        row = await store.find_deployment(session, envelope.tenant, event.deployment)
        if row is None or not row["auto_promote"]:
            return  # promoted by a person, or not at all
        reason = f"evaluation {event.evaluation_id} passed"
        if settings.auto_canary_s:
            await deployments.start_canary_in(session, envelope.tenant, event.deployment, event.candidate_version,
                                              settings.auto_canary_percent, settings.auto_canary_s, reason)
        else:
            await deployments.promote_in(session, envelope.tenant, event.deployment, event.candidate_version, reason)

    return [Subscription(durable="evaluations", event_types=[EVALUATION_COMPLETED], handler=on_evaluation_completed)]
