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
