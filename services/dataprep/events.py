"""What the data-prep service publishes and consumes.

Publishes `dataset.prepared` when a dataset is ready (through the outbox, in the transaction that
records it), and for each retraining set once, ready or failed, with the retrain request's fields.
Consumes `feedback.retrain_requested`: the handler only records the request; the retraining-set
worker (retrain.py) builds it. Once per request: the request id is the key.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.dataprep import store
from services.shared.bus import new_envelope
from services.shared.process import Subscription
from services.shared.subjects import DATASET_PREPARED, RETRAIN_REQUESTED

if TYPE_CHECKING:
    from services.dataprep.retrain import RetrainSets


def content_hash(train_sha256: str, validation_sha256: str) -> str:
    return hashlib.sha256(f"{train_sha256}:{validation_sha256}".encode()).hexdigest()


def dataset_prepared(dataset: store.DatasetRecord) -> events_pb2.DatasetPrepared:
    """The event of a finished dataset: its splits when ready, its error when failed."""
    if dataset.status != store.READY:
        return events_pb2.DatasetPrepared(dataset_id=dataset.id, file_id=dataset.file_id, error=dataset.error)
    return events_pb2.DatasetPrepared(
        dataset_id=dataset.id,
        file_id=dataset.file_id,
        content_hash=content_hash(dataset.train_sha256 or "", dataset.validation_sha256 or ""),
        train_examples=dataset.train_examples,
        validation_examples=dataset.validation_examples,
    )


def dataset_ready(dataset: store.DatasetRecord) -> events_pb2.Envelope:
    return new_envelope(DATASET_PREPARED, dataset_prepared(dataset), source="dataprep", tenant=dataset.tenant,
                        event_id=f"{DATASET_PREPARED}:{dataset.id}")


def retrain_set_prepared(
    retrain_set: store.RetrainSetRecord, event: events_pb2.DatasetPrepared
) -> events_pb2.Envelope:
    """`event` for a retraining set. Its id names the request (ids are at most 40 characters), not
    the dataset: two requests whose sets came out the same each get their own announcement."""
    event.file_id = retrain_set.file_id or event.file_id
    event.deployment = retrain_set.deployment
    event.retrain_request_id = retrain_set.request_id
    event.parent_version = retrain_set.parent_version
    event.base_model = retrain_set.base_model
    return new_envelope(DATASET_PREPARED, event, source="dataprep", tenant=retrain_set.tenant,
                        event_id=f"{DATASET_PREPARED}:{retrain_set.request_id}")


def subscriptions(retrain_sets: RetrainSets) -> list[Subscription]:
    async def on_retrain_requested(session: AsyncSession, envelope: events_pb2.Envelope) -> None:
        await retrain_sets.record(session, envelope.tenant, envelope.retrain_requested)

    return [Subscription(durable="retrain-requests", event_types=[RETRAIN_REQUESTED], handler=on_retrain_requested)]
