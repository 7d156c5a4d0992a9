"""The gateway's tables: API keys (only their hashes)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

metadata = sa.MetaData()

api_keys = sa.Table(
    "gateway_api_keys",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)


async def tenant_for_hash(session: AsyncSession, key_hash: str) -> str | None:
    return (
        await session.execute(sa.select(api_keys.c.tenant).where(api_keys.c.key_hash == key_hash))
    ).scalar_one_or_none()


async def count_keys(session: AsyncSession) -> int:
    return (await session.execute(sa.select(sa.func.count()).select_from(api_keys))).scalar_one()


async def add_key(session: AsyncSession, key_hash: str, tenant: str, name: str) -> None:
    await session.execute(
        api_keys.insert().values(key_hash=key_hash, tenant=tenant, name=name, created_at=int(time.time()))
    )
