"""The feedback service's tables and queries: feedback items, each deployment's loop (policy, lock,
counters) and the retraining cycles."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback.guards import PriorCorrection, prompt_text
from services.shared.outbox import messaging_tables

metadata = sa.MetaData()
messaging = messaging_tables(metadata, "feedback")

# Item statuses. A rating without a correction is "rating" ("used" once a batch took it as a
# positive example); a correction is "pending" until a batch takes it.
RATING, PENDING, USED, QUARANTINED, REJECTED = "rating", "pending", "used", "quarantined", "rejected"
# Corrections that guards compare new ones with (what a person rejected no longer counts).
_LIVE = (PENDING, USED, QUARANTINED)

feedback = sa.Table(
    "feedback_items",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("completion_id", sa.String(128), nullable=False),
    # The version that answered.
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("deployment", sa.String(63), nullable=False, server_default=""),
    sa.Column("rating", sa.String(8), nullable=False),
    sa.Column("correction", sa.Text, nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default=RATING),
    sa.Column("retrain_request_id", sa.String(40), nullable=True),
    sa.Column("quarantine_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("reviewed_by", sa.String(255), nullable=False, server_default=""),
    # What was asked (JSON list of chat messages) and answered, from the completion log.
    sa.Column("prompt", sa.Text, nullable=False, server_default="[]"),
    sa.Column("answer", sa.Text, nullable=False, server_default=""),
    sa.Column("prompt_key", sa.String(64), nullable=False, server_default=""),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_feedback_items_idempotency"),
    sa.Index("ix_feedback_items_model", "tenant", "model"),
    sa.Index("ix_feedback_items_deployment", "tenant", "deployment", "status", "created_at"),
    sa.Index("ix_feedback_items_prompt", "tenant", "deployment", "prompt_key"),
    sa.Index("ix_feedback_items_request", "tenant", "retrain_request_id"),
)

loops = sa.Table(
    "feedback_deployments",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("deployment", sa.String(255), primary_key=True),
    # What the deployment serves, as the last model.deployed said, and since when (epoch milliseconds).
    sa.Column("model_version", sa.String(255), nullable=False),
    sa.Column("deployed_at", sa.BigInteger, nullable=False),
    # JSON of LoopPolicy fields someone set; None: the defaults.
    sa.Column("policy", sa.Text, nullable=True),
    sa.Column("last_request_at", sa.BigInteger, nullable=True),
    # Bumped by every writer first: the row lock that serialises triggers (see `lock_loop`).
    sa.Column("lock_version", sa.BigInteger, nullable=False, server_default="0"),
    # The version the drift trigger last fired for: once per version.
    sa.Column("drift_version", sa.String(255), nullable=False, server_default=""),
    sa.Column("created_at", sa.BigInteger, nullable=False, server_default="0"),
    # What served before `model_version` ("" for a deployment's first version, or after a rollback):
    # a drift right after a deployment rolls back only when there is something to go back to.
    sa.Column("previous_version", sa.String(255), nullable=False, server_default=""),
)

cycles = sa.Table(
    "feedback_cycles",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("deployment", sa.String(63), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("stage", sa.String(24), nullable=False),
    sa.Column("finished", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("model_version", sa.String(255), nullable=False, server_default=""),
    sa.Column("base_model", sa.String(255), nullable=False, server_default=""),
    sa.Column("corrections", sa.Integer, nullable=False, server_default="0"),
    sa.Column("positives", sa.Integer, nullable=False, server_default="0"),
    sa.Column("dataset_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("file_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("job_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("candidate_version", sa.String(255), nullable=False, server_default=""),
    sa.Column("evaluation_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    # JSON list of the feedback ids the batch was made of (kept when a failed cycle gives them back).
    sa.Column("feedback_ids", sa.Text, nullable=False, server_default="[]"),
    sa.Index("ix_feedback_cycles_deployment", "tenant", "deployment", "created_at"),
)


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    """Ids that sort by creation (milliseconds first), so lists within one second keep their order."""
    return f"{prefix}-{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class FeedbackCounts:
    thumbs_up: int
    thumbs_down: int
    corrections: int


# ---- items ------------------------------------------------------------------------------------

async def find_by_key(session: AsyncSession, tenant: str, idempotency_key: str):
    query = sa.select(feedback).where(feedback.c.tenant == tenant, feedback.c.idempotency_key == idempotency_key)
    return (await session.execute(query)).mappings().first()


async def add_item(session: AsyncSession, **row) -> None:
    await session.execute(feedback.insert().values(**row))


async def get_items(session: AsyncSession, tenant: str, ids: list[str]) -> list:
    query = sa.select(feedback).where(feedback.c.tenant == tenant, feedback.c.id.in_(ids)).order_by(feedback.c.id)
    return list((await session.execute(query)).mappings())


async def set_status(session: AsyncSession, tenant: str, ids: list[str], status: str, **values) -> None:
    if ids:
        await session.execute(feedback.update().where(feedback.c.tenant == tenant, feedback.c.id.in_(ids))
                              .values(status=status, **values))


async def corrections_by_user_since(session: AsyncSession, tenant: str, deployment: str, user: str, since: int) -> int:
    c = feedback.c
    query = sa.select(sa.func.count()).where(c.tenant == tenant, c.deployment == deployment, c.user == user,
                                             c.correction != "", c.created_at >= since)
    return (await session.execute(query)).scalar_one()


def _prior(row) -> PriorCorrection:
    return PriorCorrection(row.id, row.user, row.completion_id, row.prompt_key, row.correction,
                           prompt_text(json.loads(row.prompt)))


async def own_recent_corrections(session: AsyncSession, tenant: str, deployment: str, user: str,
                                 limit: int = 500) -> list[PriorCorrection]:
    c = feedback.c
    query = (sa.select(c.id, c.user, c.completion_id, c.prompt_key, c.correction, c.prompt)
             .where(c.tenant == tenant, c.deployment == deployment, c.user == user, c.status.in_(_LIVE))
             .order_by(c.created_at.desc()).limit(limit))
    return [_prior(row) for row in await session.execute(query)]


async def corrections_of_prompt(session: AsyncSession, tenant: str, deployment: str, key: str) -> list[PriorCorrection]:
    c = feedback.c
    query = (sa.select(c.id, c.user, c.completion_id, c.prompt_key, c.correction, c.prompt)
             .where(c.tenant == tenant, c.deployment == deployment, c.prompt_key == key, c.status.in_(_LIVE)))
    return [_prior(row) for row in await session.execute(query)]


async def pending_of_user_for_completion(session: AsyncSession, tenant: str, user: str, completion_id: str) -> list[str]:
    c = feedback.c
    query = sa.select(c.id).where(c.tenant == tenant, c.user == user, c.completion_id == completion_id,
                                  c.status.in_((PENDING, QUARANTINED)))
    return list((await session.execute(query)).scalars())


async def pending_by_user(session: AsyncSession, tenant: str, deployment: str) -> dict[str, int]:
    c = feedback.c
    query = (sa.select(c.user, sa.func.count()).where(c.tenant == tenant, c.deployment == deployment,
                                                      c.status == PENDING).group_by(c.user))
    return {user: count for user, count in await session.execute(query)}


async def pending_in_order(session: AsyncSession, tenant: str, deployment: str) -> list[tuple[str, str]]:
    c = feedback.c
    query = (sa.select(c.id, c.user).where(c.tenant == tenant, c.deployment == deployment, c.status == PENDING)
             .order_by(c.created_at, c.id))
    return [(row.id, row.user) for row in await session.execute(query)]


async def unused_positives(session: AsyncSession, tenant: str, deployment: str, limit: int) -> list[str]:
    c = feedback.c
    query = (sa.select(c.id).where(c.tenant == tenant, c.deployment == deployment, c.status == RATING,
                                   c.rating == "up", c.answer != "")
             .order_by(c.created_at.desc()).limit(limit))
    return list((await session.execute(query)).scalars()) if limit else []


async def batch_of(session: AsyncSession, tenant: str, request_id: str) -> list:
    query = (sa.select(feedback).where(feedback.c.tenant == tenant, feedback.c.retrain_request_id == request_id)
             .order_by(feedback.c.created_at, feedback.c.id))
    return list((await session.execute(query)).mappings())


async def list_items(session: AsyncSession, tenant: str, *, deployment: str = "", status: str = "",
                     request_id: str = "", after: str = "", limit: int = 100, oldest_first: bool = False) -> list:
    c = feedback.c
    query = sa.select(feedback).where(c.tenant == tenant)
    if deployment:
        query = query.where(c.deployment == deployment)
    if status:
        query = query.where(c.status == status)
    if request_id:
        query = query.where(c.retrain_request_id == request_id)
    order = (c.created_at, c.id) if oldest_first else (c.created_at.desc(), c.id.desc())
    if after:
        anchor = (await session.execute(sa.select(c.created_at, c.id).where(c.tenant == tenant, c.id == after))).first()
        if anchor is not None:
            if oldest_first:
                query = query.where(sa.tuple_(c.created_at, c.id) > sa.tuple_(anchor.created_at, anchor.id))
            else:
                query = query.where(sa.tuple_(c.created_at, c.id) < sa.tuple_(anchor.created_at, anchor.id))
    return list((await session.execute(query.order_by(*order).limit(limit))).mappings())


async def counts_for(session: AsyncSession, tenant: str, model: str) -> FeedbackCounts:
    c = feedback.c
    query = sa.select(
        sa.func.count().filter(c.rating == "up"),
        sa.func.count().filter(c.rating == "down"),
        sa.func.count().filter(c.correction != ""),
    ).where(c.tenant == tenant, sa.or_(c.model == model, c.deployment == model))
    up, down, corrections = (await session.execute(query)).one()
    return FeedbackCounts(thumbs_up=up, thumbs_down=down, corrections=corrections)


async def recent_ratings(session: AsyncSession, tenant: str, deployment: str, version: str, limit: int) -> list[str]:
    """The newest ratings ("up"/"down") the version got through the deployment, newest first."""
    c = feedback.c
    query = (sa.select(c.rating).where(c.tenant == tenant, c.deployment == deployment, c.model == version,
                                       c.status != REJECTED)
             .order_by(c.created_at.desc(), c.id.desc()).limit(limit))
    return list((await session.execute(query)).scalars())


async def status_counts(session: AsyncSession, tenant: str, deployment: str) -> dict[str, int]:
    c = feedback.c
    query = sa.select(c.status, sa.func.count()).where(c.tenant == tenant, c.deployment == deployment).group_by(c.status)
    return {status: count for status, count in await session.execute(query)}


# ---- loops ------------------------------------------------------------------------------------

async def _insert_loop(session: AsyncSession, **row) -> None:
    """Insert a loop row unless one is there (two first posts, or a post and an event, may race)."""
    dialect = session.bind.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(insert(loops).values(**row).on_conflict_do_nothing(index_elements=["tenant", "deployment"]))


async def find_loop(session: AsyncSession, tenant: str, deployment: str):
    query = sa.select(loops).where(loops.c.tenant == tenant, loops.c.deployment == deployment)
    return (await session.execute(query)).mappings().first()


async def lock_loop(session: AsyncSession, tenant: str, deployment: str, model_version: str = ""):
    """Take the deployment's lock, creating its loop row first if it has none: a write as the
    transaction's first statement, which PostgreSQL holds as a row lock and SQLite as its one writer
    lock until commit. Every decision about batches is made under it, so concurrent posts see each
    other's rows."""
    bump = (loops.update().where(loops.c.tenant == tenant, loops.c.deployment == deployment)
            .values(lock_version=loops.c.lock_version + 1))
    if not (await session.execute(bump)).rowcount:
        await _insert_loop(session, tenant=tenant, deployment=deployment, model_version=model_version, deployed_at=0,
                           created_at=now())
        await session.execute(bump)
    return await find_loop(session, tenant, deployment)


async def update_loop(session: AsyncSession, tenant: str, deployment: str, **values) -> None:
    await session.execute(loops.update().where(loops.c.tenant == tenant, loops.c.deployment == deployment)
                          .values(**values))


async def all_loops(session: AsyncSession) -> list:
    return list((await session.execute(sa.select(loops.c.tenant, loops.c.deployment))).all())


async def record_deployment(session: AsyncSession, tenant: str, deployment: str, model_version: str,
                            at_ms: int, previous_version: str = "") -> None:
    """Remember which version a deployment serves (feedback is counted against it) and what it
    replaced. Events may come late or twice: the newest change (by its time, in milliseconds) wins."""
    await _insert_loop(session, tenant=tenant, deployment=deployment, model_version=model_version, deployed_at=0,
                       created_at=at_ms // 1000)
    await session.execute(loops.update().where(loops.c.tenant == tenant, loops.c.deployment == deployment,
                                               loops.c.deployed_at <= at_ms)
                          .values(model_version=model_version, deployed_at=at_ms, previous_version=previous_version))


def policy_json(row) -> dict:
    return json.loads(row["policy"]) if row is not None and row["policy"] else {}


# ---- cycles -----------------------------------------------------------------------------------

async def add_cycle(session: AsyncSession, **row) -> None:
    await session.execute(cycles.insert().values(**row))


async def find_cycle(session: AsyncSession, cycle_id: str, tenant: str | None = None):
    query = sa.select(cycles).where(cycles.c.id == cycle_id)
    if tenant is not None:
        query = query.where(cycles.c.tenant == tenant)
    return (await session.execute(query)).mappings().first()


async def cycle_for_candidate(session: AsyncSession, tenant: str, deployment: str, candidate: str):
    query = (sa.select(cycles).where(cycles.c.tenant == tenant, cycles.c.deployment == deployment,
                                     cycles.c.candidate_version == candidate)
             .order_by(cycles.c.created_at.desc()))
    return (await session.execute(query)).mappings().first()


async def update_cycle(session: AsyncSession, cycle_id: str, **values) -> None:
    await session.execute(cycles.update().where(cycles.c.id == cycle_id).values(updated_at=now(), **values))


async def cycles_of(session: AsyncSession, tenant: str, deployment: str, limit: int) -> list:
    query = (sa.select(cycles).where(cycles.c.tenant == tenant, cycles.c.deployment == deployment)
             .order_by(cycles.c.created_at.desc(), cycles.c.id.desc()).limit(limit))
    return list((await session.execute(query)).mappings())


async def cycles_in_stage(session: AsyncSession, stage: str) -> list:
    query = sa.select(cycles).where(cycles.c.stage == stage, cycles.c.finished.is_(False))
    return list((await session.execute(query)).mappings())


async def give_back(session: AsyncSession, tenant: str, request_id: str) -> int:
    """Return a failed cycle's batch: its corrections wait for the next batch, its positives too."""
    c = feedback.c
    result = await session.execute(
        feedback.update().where(c.tenant == tenant, c.retrain_request_id == request_id, c.status == USED)
        .values(status=sa.case((c.correction != "", PENDING), else_=RATING), retrain_request_id=None))
    return result.rowcount or 0
