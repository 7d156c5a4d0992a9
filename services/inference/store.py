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
    # The deployment asked for, when the request named one (`model` is then the version that answered).
    sa.Column("deployment", sa.String(63), nullable=False, server_default=""),
    sa.Index("ix_inference_completions_tenant", "tenant", "created_at"),
    sa.Index("ix_inference_completions_created", "created_at"),
)


async def log_completion(session: AsyncSession, **row) -> None:
    """Record one served completion; feedback and monitoring read this log."""
    await session.execute(completions.insert().values(**row))


async def usage(session: AsyncSession, tenant: str, models: list[str], since: int) -> list[dict]:
    """Per model: completions, tokens in and out, and estimated cost, from the log."""
    c = completions.c
    query = (sa.select(c.model, sa.func.count().label("completions"),
                       sa.func.coalesce(sa.func.sum(c.prompt_tokens), 0).label("prompt_tokens"),
                       sa.func.coalesce(sa.func.sum(c.completion_tokens), 0).label("completion_tokens"),
                       sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0).label("cost_usd"))
             .where(c.tenant == tenant, c.created_at >= since).group_by(c.model).order_by(c.model))
    if models:
        query = query.where(c.model.in_(models))
    return [dict(row._mapping) for row in await session.execute(query)]


async def find_completion(session: AsyncSession, tenant: str, completion_id: str):
    """One logged completion by its id (the primary key); None when the tenant logged none of that id."""
    c = completions.c
    query = (sa.select(c.id, c.model, c.deployment, c.created_at, c.request, c.response, c.texts)
             .where(c.id == completion_id, c.tenant == tenant))
    return (await session.execute(query)).mappings().first()


async def delete_completions_before(session: AsyncSession, created_before: int) -> int:
    """Delete the completions logged before `created_before` (epoch seconds); how many went."""
    result = await session.execute(completions.delete().where(completions.c.created_at < created_before))
    return result.rowcount or 0


deployments = sa.Table(
    "inference_deployments",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("model_version", sa.String(255), nullable=False),
    sa.Column("previous_version", sa.String(255), nullable=False, server_default=""),
    sa.Column("canary_version", sa.String(255), nullable=False, server_default=""),
    sa.Column("canary_percent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("auto_promote", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # A canary started by a passed evaluation: when (epoch seconds) it is promoted, and the reason
    # that promotion records. None: no canary, or one a person set, which ends when a person says.
    sa.Column("canary_until", sa.BigInteger, nullable=True),
    sa.Column("canary_reason", sa.Text, nullable=False, server_default=""),
)

deployment_changes = sa.Table(
    "inference_deployment_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("from_version", sa.String(255), nullable=False, server_default=""),
    sa.Column("to_version", sa.String(255), nullable=False, server_default=""),
    sa.Column("percent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Index("ix_inference_deployment_changes_name", "tenant", "name", "id"),
)


async def find_deployment(session: AsyncSession, tenant: str, name: str, *, for_update: bool = False):
    query = sa.select(deployments).where(deployments.c.tenant == tenant, deployments.c.name == name)
    if for_update:
        query = query.with_for_update()  # PostgreSQL: concurrent changes of one deployment queue up
    return (await session.execute(query)).mappings().first()


async def list_deployments(session: AsyncSession, tenant: str) -> list:
    query = sa.select(deployments).where(deployments.c.tenant == tenant).order_by(deployments.c.name)
    return list((await session.execute(query)).mappings())


async def canaries_due(session: AsyncSession, now: int) -> list[tuple[str, str]]:
    """(tenant, name) of the deployments whose evaluation-started canary has run its time."""
    query = sa.select(deployments.c.tenant, deployments.c.name).where(deployments.c.canary_until <= now)
    return [(row.tenant, row.name) for row in await session.execute(query)]


async def claim_due_canary(session: AsyncSession, tenant: str, name: str, now: int) -> bool:
    """Take the promotion of a canary whose time is up for this transaction. False: another process
    took it, or a person ended the canary, since it was found due."""
    d = deployments.c
    result = await session.execute(deployments.update()
                                   .where(d.tenant == tenant, d.name == name, d.canary_until <= now)
                                   .values(canary_until=None))
    return bool(result.rowcount)


async def changes_of(session: AsyncSession, tenant: str, name: str) -> list:
    query = (sa.select(deployment_changes)
             .where(deployment_changes.c.tenant == tenant, deployment_changes.c.name == name)
             .order_by(deployment_changes.c.id))
    return list((await session.execute(query)).mappings())


async def insert_deployment(session: AsyncSession, **row) -> None:
    await session.execute(deployments.insert().values(**row))


async def update_deployment(session: AsyncSession, tenant: str, name: str, **values) -> None:
    await session.execute(deployments.update()
                          .where(deployments.c.tenant == tenant, deployments.c.name == name).values(**values))


async def delete_deployment(session: AsyncSession, tenant: str, name: str) -> bool:
    result = await session.execute(deployments.delete()
                                   .where(deployments.c.tenant == tenant, deployments.c.name == name))
    await session.execute(deployment_changes.delete()
                          .where(deployment_changes.c.tenant == tenant, deployment_changes.c.name == name))
    return bool(result.rowcount)


async def add_change(session: AsyncSession, **row) -> None:
    await session.execute(deployment_changes.insert().values(**row))
