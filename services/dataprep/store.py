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
