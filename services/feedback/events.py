"""What the feedback service publishes and consumes.

Publishes `feedback.retrain_requested` (through the outbox, in the transaction that takes the batch).
Consumes what the other services say about each retraining cycle, to show the loop's state:
`dataset.prepared`, `training.requested`, `training.completed`, `training.failed` (by retrain
request id), `evaluation.completed` (by candidate version), `model.deployed` and `model.rolled_back`
(which version a deployment serves; the drift trigger watches that version).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.feedback import cycles, store
from services.shared.bus import new_envelope
from services.shared.outbox import add_to_outbox
from services.shared.process import Subscription
from services.shared.subjects import (
    DATASET_PREPARED,
    EVALUATION_COMPLETED,
    MODEL_DEPLOYED,
    MODEL_ROLLED_BACK,
    RETRAIN_REQUESTED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)


async def announce_retrain(session: AsyncSession, tenant: str, cycle: dict) -> None:
    """`feedback.retrain_requested` for a new cycle, in the caller's transaction. Its id is the
    request's, so a repeated publish is dropped by JetStream."""
    payload = events_pb2.RetrainRequested(
        request_id=cycle["id"], deployment=cycle["deployment"], model_version=cycle["model_version"],
        corrections=cycle["corrections"], trigger=cycle["trigger"], base_model=cycle["base_model"],
        positives=cycle["positives"])
    await add_to_outbox(session, store.messaging,
                        new_envelope(RETRAIN_REQUESTED, payload, source="feedback", tenant=tenant,
                                     event_id=f"{RETRAIN_REQUESTED}:{cycle['id']}"))


async def on_event(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
    tenant = envelope.tenant
    kind = envelope.WhichOneof("payload")
    if kind == "dataset_prepared":
        event = envelope.dataset_prepared
        if event.retrain_request_id:
            await cycles.on_dataset(session, event.retrain_request_id, event.dataset_id, event.file_id, event.error)
    elif kind == "training_requested":
        event = envelope.training_requested
        if event.retrain_request_id:
            await cycles.on_training_requested(session, event.retrain_request_id, event.job_id)
    elif kind == "training_completed":
        event = envelope.training_completed
        if event.retrain_request_id:
            await cycles.on_training_completed(session, event.retrain_request_id, event.job_id, event.model_version)
    elif kind == "training_failed":
        event = envelope.training_failed
        if event.retrain_request_id:
            await cycles.on_training_failed(session, event.retrain_request_id, event.job_id, event.code, event.message)
    elif kind == "evaluation_completed":
        event = envelope.evaluation_completed
        if event.deployment and event.candidate_version:
            failed = [f"{rule.name}: {rule.detail}" for rule in event.rules if not rule.passed]
            await cycles.on_evaluation(session, tenant, event.deployment, event.candidate_version,
                                       event.evaluation_id, event.passed, "; ".join(failed) or event.reason,
                                       error=event.error)
    elif kind == "model_deployed":
        event = envelope.model_deployed
        if event.traffic_percent >= 100:
            await store.record_deployment(session, tenant, event.deployment, event.model_version,
                                          envelope.time.ToMilliseconds(), previous_version=event.previous_version)
        await cycles.on_deployed(session, tenant, event.deployment, event.model_version, event.traffic_percent)
    elif kind == "model_rolled_back":
        event = envelope.model_rolled_back
        await store.record_deployment(session, tenant, event.deployment, event.to_version,
                                      envelope.time.ToMilliseconds())
        await cycles.on_rolled_back(session, tenant, event.deployment, event.from_version, event.reason)


SUBSCRIPTIONS = [
    Subscription(durable="loop", handler=on_event, event_types=[
        DATASET_PREPARED, TRAINING_REQUESTED, TRAINING_COMPLETED, TRAINING_FAILED, EVALUATION_COMPLETED,
        MODEL_DEPLOYED, MODEL_ROLLED_BACK]),
]
