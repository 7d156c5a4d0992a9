"""The data-prep service's tables and queries."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.errors import NotFound
from services.shared.outbox import messaging_tables

metadata = sa.MetaData()
messaging = messaging_tables(metadata, "dataprep")

files = sa.Table(
    "dataprep_files",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_dataprep_files_tenant", "tenant", "created_at"),
    sa.Index("ix_dataprep_files_sha256", "sha256"),
)


@dataclass(frozen=True)
class FileRecord:
    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


async def add_file(session: AsyncSession, record: FileRecord) -> None:
    await session.execute(files.insert().values(**record.__dict__))


async def get_file(session: AsyncSession, tenant: str, file_id: str) -> FileRecord:
    row = (
        await session.execute(sa.select(files).where(files.c.id == file_id, files.c.tenant == tenant))
    ).first()
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
    return FileRecord(**row._mapping)


async def list_files(session: AsyncSession, tenant: str, purpose: str, limit: int) -> list[FileRecord]:
    query = sa.select(files).where(files.c.tenant == tenant)
    if purpose:
        query = query.where(files.c.purpose == purpose)
    query = query.order_by(files.c.created_at.desc(), files.c.id.desc()).limit(limit)
    return [FileRecord(**row._mapping) for row in await session.execute(query)]


async def delete_file(session: AsyncSession, tenant: str, file_id: str) -> bool:
    """Delete the record; True when no other file still points at the same bytes."""
    record = await get_file(session, tenant, file_id)
    await session.execute(files.delete().where(files.c.id == file_id))
    others = (
        await session.execute(sa.select(sa.func.count()).where(files.c.sha256 == record.sha256))
    ).scalar_one()
    return others == 0


def now() -> int:
    return int(time.time())


datasets = sa.Table(
    "dataprep_datasets",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("file_id", sa.String(40), nullable=False),
    sa.Column("file_sha256", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Column("lines_processed", sa.BigInteger, nullable=False),
    sa.Column("train_sha256", sa.String(64), nullable=True),
    sa.Column("validation_sha256", sa.String(64), nullable=True),
    sa.Column("review_sha256", sa.String(64), nullable=True),
    sa.Column("train_examples", sa.BigInteger, nullable=False),
    sa.Column("validation_examples", sa.BigInteger, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("report", sa.Text, nullable=True),
    sa.Index("ix_dataprep_datasets_tenant", "tenant", "created_at"),
    sa.Index("ix_dataprep_datasets_status", "status"),
)

PROCESSING, READY, FAILED = "processing", "ready", "failed"


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    tenant: str
    file_id: str
    file_sha256: str
    status: str
    format: str
    options: str
    created_at: int
    finished_at: int | None
    lines_processed: int
    train_sha256: str | None
    validation_sha256: str | None
    review_sha256: str | None
    train_examples: int
    validation_examples: int
    error: str
    report: str | None


async def add_dataset_if_new(session: AsyncSession, record: DatasetRecord) -> tuple[DatasetRecord, bool]:
    """Insert a dataset unless one with the same id exists; returns the stored one and whether it is new."""
    existing = await find_dataset(session, record.tenant, record.id)
    if existing is not None:
        return existing, False
    await session.execute(datasets.insert().values(**record.__dict__))
    return record, True


async def find_dataset(session: AsyncSession, tenant: str, dataset_id: str) -> DatasetRecord | None:
    row = (
        await session.execute(
            sa.select(datasets).where(datasets.c.id == dataset_id, datasets.c.tenant == tenant)
        )
    ).first()
    return DatasetRecord(**row._mapping) if row else None


async def get_dataset(session: AsyncSession, tenant: str, dataset_id: str) -> DatasetRecord:
    record = await find_dataset(session, tenant, dataset_id)
    if record is None:
        raise NotFound(f"No such dataset: {dataset_id}", param="dataset_id", code="dataset_not_found")
    return record


async def list_datasets(session: AsyncSession, tenant: str, limit: int) -> list[DatasetRecord]:
    query = (
        sa.select(datasets)
        .where(datasets.c.tenant == tenant)
        .order_by(datasets.c.created_at.desc(), datasets.c.id.desc())
        .limit(limit)
    )
    return [DatasetRecord(**row._mapping) for row in await session.execute(query)]


async def datasets_to_process(session: AsyncSession) -> list[DatasetRecord]:
    """Datasets accepted but not finished, oldest first: what a (re)started worker must do."""
    query = (
        sa.select(datasets)
        .where(datasets.c.status == PROCESSING)
        .order_by(datasets.c.created_at, datasets.c.id)
    )
    return [DatasetRecord(**row._mapping) for row in await session.execute(query)]


async def set_progress(session: AsyncSession, dataset_id: str, lines_processed: int) -> None:
    await session.execute(
        datasets.update().where(datasets.c.id == dataset_id).values(lines_processed=lines_processed)
    )


async def finish_dataset(session: AsyncSession, dataset_id: str, **values) -> None:
    """Record the outcome once: a dataset that is no longer processing is never changed again."""
    await session.execute(
        datasets.update()
        .where(datasets.c.id == dataset_id, datasets.c.status == PROCESSING)
        .values(finished_at=now(), **values)
    )


async def restart_dataset(session: AsyncSession, record: DatasetRecord) -> DatasetRecord:
    """Put a failed dataset back in the queue, as new."""
    values = {"status": PROCESSING, "error": "", "report": None, "finished_at": None, "lines_processed": 0}
    await session.execute(datasets.update().where(datasets.c.id == record.id).values(**values))
    return DatasetRecord(**{**record.__dict__, **values})


async def set_report(session: AsyncSession, dataset_id: str, report: str) -> None:
    await session.execute(datasets.update().where(datasets.c.id == dataset_id).values(report=report))


# The feedback loop's retraining sets: one per retrain request, built from the request's batch.
retrain_sets = sa.Table(
    "dataprep_retrain_sets",
    metadata,
    # The feedback service's retrain request id.
    sa.Column("request_id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("deployment", sa.String(128), nullable=False),
    # The version the deployment served: training warm-starts from it, replay comes from its data.
    sa.Column("parent_version", sa.String(255), nullable=False),
    sa.Column("base_model", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("file_id", sa.String(40), nullable=False),
    sa.Column("dataset_id", sa.String(40), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    # What went into the set (JSON); added to the dataset's report once it is ready.
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Index("ix_dataprep_retrain_sets_status", "status"),
    sa.Index("ix_dataprep_retrain_sets_dataset", "dataset_id"),
)

# A set is "building" (waiting for its batch and its parent's lineage), then "processing" (its
# dataset is queued), then "ready" or "failed" as its dataset ends, or "failed" when it cannot be built.
BUILDING = "building"


@dataclass(frozen=True)
class RetrainSetRecord:
    request_id: str
    tenant: str
    deployment: str
    parent_version: str
    base_model: str
    status: str
    file_id: str
    dataset_id: str
    error: str
    summary: str | None
    created_at: int
    finished_at: int | None


async def add_retrain_set_if_new(session: AsyncSession, record: RetrainSetRecord) -> bool:
    """Record a retrain request unless it is recorded already; whether it is new."""
    found = (
        await session.execute(
            sa.select(retrain_sets.c.request_id).where(retrain_sets.c.request_id == record.request_id)
        )
    ).first()
    if found is not None:
        return False
    await session.execute(retrain_sets.insert().values(**record.__dict__))
    return True


async def unfinished_retrain_sets(session: AsyncSession) -> list[RetrainSetRecord]:
    """Sets still being built or prepared, oldest first: what a (re)started worker must do."""
    query = (
        sa.select(retrain_sets)
        .where(retrain_sets.c.status.in_((BUILDING, PROCESSING)))
        .order_by(retrain_sets.c.created_at, retrain_sets.c.request_id)
    )
    return [RetrainSetRecord(**row._mapping) for row in await session.execute(query)]


async def retrain_sets_waiting_on(session: AsyncSession, dataset_id: str) -> list[RetrainSetRecord]:
    query = sa.select(retrain_sets).where(
        retrain_sets.c.dataset_id == dataset_id, retrain_sets.c.status == PROCESSING
    )
    return [RetrainSetRecord(**row._mapping) for row in await session.execute(query)]


async def retrain_set_built(
    session: AsyncSession, request_id: str, *, file_id: str, dataset_id: str, base_model: str, summary: str
) -> bool:
    """Record the set's file and queued dataset; False when it was not being built any more."""
    updated = await session.execute(
        retrain_sets.update()
        .where(retrain_sets.c.request_id == request_id, retrain_sets.c.status == BUILDING)
        .values(status=PROCESSING, file_id=file_id, dataset_id=dataset_id, base_model=base_model, summary=summary)
    )
    return updated.rowcount == 1


async def finish_retrain_set(session: AsyncSession, request_id: str, *, status: str, error: str = "") -> bool:
    """Record the outcome once; False when the set was finished already (its outcome was announced then)."""
    updated = await session.execute(
        retrain_sets.update()
        .where(retrain_sets.c.request_id == request_id, retrain_sets.c.status.in_((BUILDING, PROCESSING)))
        .values(status=status, error=error, finished_at=now())
    )
    return updated.rowcount == 1
