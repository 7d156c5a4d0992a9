"""The feedback service's tables and queries."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback.intake import FeedbackIn
from services.shared.outbox import messaging_tables

metadata = sa.MetaData()
messaging = messaging_tables(metadata, "feedback")

feedback = sa.Table(
    "feedback_items",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("completion_id", sa.String(128), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("rating", sa.String(8), nullable=False),
    sa.Column("correction", sa.Text, nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_feedback_items_idempotency"),
    sa.Index("ix_feedback_items_model", "tenant", "model"),
)

deployments = sa.Table(
    "feedback_deployments",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("deployment", sa.String(255), primary_key=True),
    sa.Column("model_version", sa.String(255), nullable=False),
    sa.Column("deployed_at", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class StoredFeedback:
    id: str
    created_at: int
    created: bool


@dataclass(frozen=True)
class FeedbackCounts:
    thumbs_up: int
    thumbs_down: int
    corrections: int


async def add_feedback(session: AsyncSession, tenant: str, item: FeedbackIn) -> StoredFeedback:
    """Store one piece of feedback; a repeated idempotency key returns the first record."""
    if item.idempotency_key:
        existing = (
            await session.execute(
                sa.select(feedback.c.id, feedback.c.created_at).where(
                    feedback.c.tenant == tenant, feedback.c.idempotency_key == item.idempotency_key
                )
            )
        ).first()
        if existing:
            return StoredFeedback(id=existing.id, created_at=existing.created_at, created=False)
    row = {
        "id": f"fb-{uuid.uuid4().hex}",
        "tenant": tenant,
        "completion_id": item.completion_id,
        "model": item.model,
        "rating": item.rating,
        "correction": item.correction,
        "comment": item.comment,
        "user": item.user,
        "idempotency_key": item.idempotency_key or None,
        "created_at": int(time.time()),
    }
    await session.execute(feedback.insert().values(**row))
    return StoredFeedback(id=row["id"], created_at=row["created_at"], created=True)


async def counts_for(session: AsyncSession, tenant: str, model: str) -> FeedbackCounts:
    query = sa.select(
        sa.func.count().filter(feedback.c.rating == "up"),
        sa.func.count().filter(feedback.c.rating == "down"),
        sa.func.count().filter(feedback.c.correction != ""),
    ).where(feedback.c.tenant == tenant, feedback.c.model == model)
    up, down, corrections = (await session.execute(query)).one()
    return FeedbackCounts(thumbs_up=up, thumbs_down=down, corrections=corrections)


async def record_deployment(session: AsyncSession, tenant: str, deployment: str, model_version: str, at: int) -> None:
    """Remember which version a deployment serves (feedback is counted against it)."""
    current = (
        await session.execute(
            sa.select(deployments.c.deployed_at).where(
                deployments.c.tenant == tenant, deployments.c.deployment == deployment
            )
        )
    ).scalar_one_or_none()
    values = {"model_version": model_version, "deployed_at": at}
    if current is None:
        await session.execute(deployments.insert().values(tenant=tenant, deployment=deployment, **values))
    elif at >= current:
        await session.execute(
            deployments.update()
            .where(deployments.c.tenant == tenant, deployments.c.deployment == deployment)
            .values(**values)
        )


async def deployed_version(session: AsyncSession, tenant: str, deployment: str) -> str | None:
    return (
        await session.execute(
            sa.select(deployments.c.model_version).where(
                deployments.c.tenant == tenant, deployments.c.deployment == deployment
            )
        )
    ).scalar_one_or_none()
