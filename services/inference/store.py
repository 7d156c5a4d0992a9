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
    # JSON: {"messages": [...]} or {"prompt": "..."}; None when the texts are not kept.
    sa.Column("request", sa.Text, nullable=True),
    sa.Column("response", sa.Text, nullable=True),
    # How the texts were kept: "full", "redacted", "none", or "withheld" (redaction was asked for
    # but the data-prep service could not do it, so nothing was kept rather than the raw text).
    sa.Column("texts", sa.String(16), nullable=False, server_default="none"),
    sa.Column("stream", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Index("ix_inference_completions_tenant", "tenant", "created_at"),
    sa.Index("ix_inference_completions_created", "created_at"),
)


async def log_completion(session: AsyncSession, **row) -> None:
    """Record one served completion; feedback and monitoring read this log."""
    await session.execute(completions.insert().values(**row))


async def delete_completions_before(session: AsyncSession, created_before: int) -> int:
    """Delete the completions logged before `created_before` (epoch seconds); how many went."""
    result = await session.execute(completions.delete().where(completions.c.created_at < created_before))
    return result.rowcount or 0
