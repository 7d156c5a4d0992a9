"""What the training service publishes (through its outbox) and consumes.

It consumes `dataset.prepared` for a retraining set the feedback loop asked for (a
`retrain_request_id`, no `error`): one fine-tuning job for it, warm-started from the version the
deployment serves when that is a fine-tuned model, announced by `training.requested` in the same
transaction. The retrain request's id is the job's idempotency key, so a redelivery, or another
event for the same request, creates nothing new. A job that cannot be created (its parent was
deleted, say) is announced by `training.failed` instead, so the loop learns why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.shared.bus import new_envelope
from services.shared.errors import TuneloopError
from services.shared.outbox import add_to_outbox
from services.shared.process import Runtime, Subscription
from services.shared.subjects import DATASET_PREPARED, TRAINING_FAILED, TRAINING_REQUESTED
from services.training import store
from services.training.intake import JobIntake
from services.training.jobs import Hyperparameters, JobSpec, is_fine_tuned_id, suffix_for
from services.training.settings import LOOP_MAX_LR_MULTIPLIER, TrainingSettings
from services.training.warm_start import Parent

if TYPE_CHECKING:
    from services.training.supervisor import JobSupervisor


async def publish(session: AsyncSession, runtime: Runtime, tenant: str, event_type: str, payload) -> None:
    """Write the event to the outbox in `session`'s transaction; the relay sends it once it commits."""
    await add_to_outbox(session, runtime.tables, new_envelope(event_type, payload, source="training", tenant=tenant))
    runtime.relay.poke()


def retrain_spec(event: events_pb2.DatasetPrepared, parent: Parent | None, settings: TrainingSettings) -> JobSpec:
    """The job a retraining set asks for: from the version the deployment serves when it is a
    fine-tuned model (a full one trains on as "full"), else from the base model."""
    return JobSpec(
        model=event.parent_version if is_fine_tuned_id(event.parent_version) else event.base_model,
        training_file=event.file_id,
        hyperparameters=Hyperparameters(n_epochs=settings.loop_n_epochs or None,
                                        batch_size=settings.loop_batch_size or None,
                                        learning_rate_multiplier=settings.loop_learning_rate_multiplier or None),
        suffix=suffix_for(event.deployment),
        seed=0,
        method=settings.loop_method or ("full" if parent is not None and parent.kind == "full" else "supervised"),
        replay_fraction=settings.loop_replay_fraction,
        metadata={"deployment": event.deployment, "retrain_request_id": event.retrain_request_id},
    )


def subscriptions(runtime: Runtime, intake: JobIntake, supervisor: JobSupervisor) -> list[Subscription]:
    settings: TrainingSettings = runtime.settings  # type: ignore[assignment]

    async def on_dataset_prepared(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
        event = envelope.dataset_prepared
        if not event.retrain_request_id or event.error:
            return  # a dataset prepared for someone's own job, or a retraining set that could not be built
        tenant, key = envelope.tenant, f"retrain:{event.retrain_request_id}"
        if await store.job_by_idempotency_key(session, tenant, key) is not None:
            return  # answered already (by an earlier event for the same request)
        try:
            parent = await intake.parent(session, tenant, event.parent_version)
            job, created = await intake.create(session, tenant, retrain_spec(event, parent, settings),
                                               idempotency_key=key, max_lr_multiplier=LOOP_MAX_LR_MULTIPLIER)
        except TuneloopError as error:
            await publish(session, runtime, tenant, TRAINING_FAILED, events_pb2.TrainingFailed(
                code=error.code or "training_failed", message=error.message, deployment=event.deployment,
                retrain_request_id=event.retrain_request_id))
            return
        if created:
            await publish(session, runtime, tenant, TRAINING_REQUESTED, events_pb2.TrainingRequested(
                job_id=job.id, base_model=job.root_base, dataset_id=event.dataset_id, deployment=event.deployment,
                retrain_request_id=event.retrain_request_id, parent_version=job.parent_model))
            supervisor.wake()  # the job commits with the ack, maybe after it looks: it looks again every second

    return [Subscription(durable="datasets", event_types=[DATASET_PREPARED], handler=on_dataset_prepared)]
