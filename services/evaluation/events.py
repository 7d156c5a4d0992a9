"""What the evaluation service consumes: `training.completed` for a job attached to a deployment
(its `metadata["deployment"]`) queues an evaluation of the new version against the deployment's
production version, on the examples the job held out. Once per job: the job id is the key."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.evaluation.metrics import TEXT_METRICS
from services.evaluation.runs import Runs
from services.shared.process import Subscription
from services.shared.subjects import TRAINING_COMPLETED


def subscriptions(runs: Runs) -> list[Subscription]:
    async def on_training_completed(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
        event = envelope.training_completed
        if not (event.deployment and event.model_version and event.dataset_id):
            return  # not for a deployment: evaluated on demand, if at all
        await runs.enqueue(session, envelope.tenant, candidate=event.model_version, baseline="",
                           deployment=event.deployment, dataset_id=event.dataset_id,
                           dataset_split=event.dataset_split or "validation", file_id="", metrics=list(TEXT_METRICS),
                           policy=await runs.policy_for(session, envelope.tenant, event.deployment),
                           idempotency_key=f"training:{event.job_id}", max_tokens=0)
        runs.wake()  # the row commits with the ack, maybe after the worker looked: it looks again every poll_s

    return [Subscription(durable="trainings", event_types=[TRAINING_COMPLETED], handler=on_training_completed)]
