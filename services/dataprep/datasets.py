"""Taking work in: stored files and queued datasets, the same for every way a dataset is asked for.

PrepareDataset, GenerateSynthetic and the feedback loop's retraining sets all go through these
functions, so equal requests give equal options, equal dataset ids and the same queue row, whoever
asked first.
"""

from __future__ import annotations

import hashlib

from sqlalchemy.ext.asyncio import AsyncSession

from protos import dataprep_pb2
from services.dataprep import store
from services.dataprep.options import PrepareConfig
from services.dataprep.pipeline import PIPELINE_VERSION
from services.shared.artifacts import Artifact


def prepare_config(options: dataprep_pb2.PrepareOptions, default_base_model: str) -> PrepareConfig:
    """The request's options with every default filled in, so equal requests give equal configs."""
    return PrepareConfig(
        base_model=options.base_model or default_base_model,
        format=options.format or None,
        validation_fraction=options.validation_fraction if options.HasField("validation_fraction") else 0.1,
        seed=options.seed,
        drop_invalid=options.drop_invalid,
        anonymize_pii=options.anonymize_pii if options.HasField("anonymize_pii") else True,
        pii_entities=tuple(options.pii_entities),
        pii_placeholders=dict(sorted(options.pii_placeholders.items())),
        pii_detector=options.pii_detector or "ner",
        near_duplicate_threshold=options.near_duplicate_threshold
        if options.HasField("near_duplicate_threshold")
        else 0.85,
        n_epochs=options.n_epochs if options.HasField("n_epochs") else None,
        price_per_1k_tokens=options.price_per_1k_tokens if options.HasField("price_per_1k_tokens") else 0.008,
        review_sample_size=options.review_sample_size if options.HasField("review_sample_size") else 50,
    )


def dataset_id_for(tenant: str, file_sha256: str, config: PrepareConfig) -> str:
    """Datasets are content-addressed: the same bytes prepared the same way are the same dataset."""
    key = f"{tenant}\n{file_sha256}\n{config.to_json()}\n{PIPELINE_VERSION}"
    return "ds-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def new_file(tenant: str, filename: str, purpose: str, artifact: Artifact) -> store.FileRecord:
    """The record of a file whose bytes are already in the artifact store."""
    return store.FileRecord(
        id=store.new_file_id(),
        tenant=tenant,
        filename=filename,
        purpose=purpose,
        bytes=artifact.size,
        sha256=artifact.sha256,
        created_at=store.now(),
    )


async def queue_dataset(
    session: AsyncSession, source: store.FileRecord, config: PrepareConfig
) -> tuple[store.DatasetRecord, bool]:
    """The dataset of `source` prepared with `config`, queued for the worker unless it exists; and
    whether it is new. Wake the worker once the transaction commits."""
    record = store.DatasetRecord(
        id=dataset_id_for(source.tenant, source.sha256, config),
        tenant=source.tenant,
        file_id=source.id,
        file_sha256=source.sha256,
        status=store.PROCESSING,
        format=config.format or "",
        options=config.to_json(),
        created_at=store.now(),
        finished_at=None,
        lines_processed=0,
        train_sha256=None,
        validation_sha256=None,
        review_sha256=None,
        train_examples=0,
        validation_examples=0,
        error="",
        report=None,
    )
    stored, created = await store.add_dataset_if_new(session, record)
    if stored.status == store.FAILED:
        # Asking again for a failed dataset tries again (a fixed model store, a transient error).
        stored = await store.restart_dataset(session, stored)
    return stored, created
