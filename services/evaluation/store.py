"""The evaluation service's tables: evaluations (a side-by-side run each) and the event plumbing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.outbox import messaging_tables

metadata = sa.MetaData()
messaging = messaging_tables(metadata, "evaluation")

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"

evaluations = sa.Table(
    "evaluation_runs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("candidate", sa.String(255), nullable=False),
    # As asked ("" for the default) until the run resolves it.
    sa.Column("baseline", sa.String(255), nullable=False, server_default=""),
    sa.Column("base_model", sa.String(255), nullable=False, server_default=""),
    sa.Column("deployment", sa.String(63), nullable=False, server_default=""),
    sa.Column("dataset_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("dataset_split", sa.String(16), nullable=False, server_default="validation"),
    sa.Column("file_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON list
    sa.Column("policy", sa.Text, nullable=False),  # JSON GatePolicy
    sa.Column("max_tokens", sa.Integer, nullable=False),
    sa.Column("judge", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("completed_at", sa.BigInteger, nullable=True),
    sa.Column("progress_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("passed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("error_code", sa.String(64), nullable=False, server_default=""),
    sa.Column("error_message", sa.Text, nullable=False, server_default=""),
    sa.Column("report", sa.Text, nullable=True),  # JSON, once completed
    sa.Index("ix_evaluation_runs_tenant", "tenant", "created_at"),
    sa.Index("ix_evaluation_runs_status", "status"),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_evaluation_runs_idempotency"),
)


reviews = sa.Table(
    "evaluation_reviews",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("evaluation_id", sa.String(40), nullable=False),
    # JSON: item id -> {"example": index, "A": model, "B": model}; never exported.
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # JSON, once ratings are imported.
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("imported_at", sa.BigInteger, nullable=True),
    sa.Index("ix_evaluation_reviews_evaluation", "tenant", "evaluation_id", "created_at"),
)


policies = sa.Table(
    "evaluation_policies",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("deployment", sa.String(63), primary_key=True),
    sa.Column("policy", sa.Text, nullable=False),  # JSON GatePolicy
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class EvaluationRecord:
    id: str
    tenant: str
    status: str
    candidate: str
    baseline: str
    base_model: str
    deployment: str
    dataset_id: str
    dataset_split: str
    file_id: str
    metrics: str
    policy: str
    max_tokens: int
    judge: bool
    idempotency_key: str | None
    created_at: int
    completed_at: int | None
    progress_done: int
    progress_total: int
    passed: bool
    reason: str
    error_code: str
    error_message: str
    report: str | None


def now() -> int:
    return int(time.time())


def _record(row: Any) -> EvaluationRecord:
    return EvaluationRecord(**dict(row._mapping))


async def add(session: AsyncSession, **values: Any) -> EvaluationRecord:
    await session.execute(evaluations.insert().values(status=QUEUED, created_at=now(), **values))
    found = await get(session, values["tenant"], values["id"])
    assert found is not None
    return found


async def get(session: AsyncSession, tenant: str, evaluation_id: str) -> EvaluationRecord | None:
    row = (await session.execute(evaluations.select().where(
        evaluations.c.tenant == tenant, evaluations.c.id == evaluation_id))).first()
    return _record(row) if row else None


async def by_key(session: AsyncSession, tenant: str, key: str) -> EvaluationRecord | None:
    row = (await session.execute(evaluations.select().where(
        evaluations.c.tenant == tenant, evaluations.c.idempotency_key == key))).first()
    return _record(row) if row else None


async def list_for(session: AsyncSession, tenant: str, limit: int) -> list[EvaluationRecord]:
    rows = await session.execute(evaluations.select().where(evaluations.c.tenant == tenant)
                                 .order_by(evaluations.c.created_at.desc(), evaluations.c.id.desc()).limit(limit))
    return [_record(row) for row in rows]


async def unfinished(session: AsyncSession) -> list[EvaluationRecord]:
    """Queued and running evaluations of every tenant, oldest first (a restart runs them again)."""
    rows = await session.execute(evaluations.select().where(evaluations.c.status.in_((QUEUED, RUNNING)))
                                 .order_by(evaluations.c.created_at, evaluations.c.id))
    return [_record(row) for row in rows]


async def update(session: AsyncSession, evaluation_id: str, **values: Any) -> None:
    await session.execute(evaluations.update().where(evaluations.c.id == evaluation_id).values(**values))


async def add_review(session: AsyncSession, *, id: str, tenant: str, evaluation_id: str, key: str) -> None:
    await session.execute(reviews.insert().values(id=id, tenant=tenant, evaluation_id=evaluation_id, key=key,
                                                  created_at=now()))


async def review(session: AsyncSession, tenant: str, evaluation_id: str, review_id: str) -> dict | None:
    row = (await session.execute(reviews.select().where(
        reviews.c.tenant == tenant, reviews.c.evaluation_id == evaluation_id, reviews.c.id == review_id))).first()
    return dict(row._mapping) if row else None


async def save_review_summary(session: AsyncSession, review_id: str, summary: str) -> None:
    await session.execute(reviews.update().where(reviews.c.id == review_id).values(summary=summary,
                                                                                   imported_at=now()))


async def latest_summary(session: AsyncSession, tenant: str, evaluation_id: str) -> str | None:
    row = (await session.execute(
        sa.select(reviews.c.summary).where(reviews.c.tenant == tenant, reviews.c.evaluation_id == evaluation_id,
                                           reviews.c.summary.is_not(None))
        .order_by(reviews.c.imported_at.desc(), reviews.c.id.desc()).limit(1))).first()
    return row[0] if row else None


async def policy(session: AsyncSession, tenant: str, deployment: str) -> tuple[str, int] | None:
    """(policy JSON, updated_at) of a deployment, if it has one of its own."""
    row = (await session.execute(sa.select(policies.c.policy, policies.c.updated_at).where(
        policies.c.tenant == tenant, policies.c.deployment == deployment))).first()
    return (row[0], row[1]) if row else None


async def set_policy(session: AsyncSession, tenant: str, deployment: str, policy_json: str) -> int:
    updated = now()
    changed = await session.execute(policies.update().where(policies.c.tenant == tenant,
                                                            policies.c.deployment == deployment)
                                    .values(policy=policy_json, updated_at=updated))
    if not changed.rowcount:
        await session.execute(policies.insert().values(tenant=tenant, deployment=deployment, policy=policy_json,
                                                       updated_at=updated))
    return updated
