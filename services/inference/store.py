"""The inference service's tables: the completion log, and its event plumbing."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.outbox import messaging_tables

metadata = sa.MetaData()
messaging = messaging_tables(metadata, "inference")

completions = sa.Table(
    "inference_completions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("finish_reason", sa.String(16), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_inference_completions_tenant", "tenant", "created_at"),
)


async def log_completion(session: AsyncSession, **row) -> None:
    """Record one served completion; feedback and monitoring read this log."""
    await session.execute(completions.insert().values(**row))
