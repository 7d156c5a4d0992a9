"""The training service's tables: jobs, their events and checkpoints, and the fine-tuned model registry."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, fields

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.errors import NotFound
from services.shared.outbox import messaging_tables

metadata = sa.MetaData()
messaging = messaging_tables(metadata, "training")

jobs = sa.Table(
    "training_jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("training_file", sa.String(40), nullable=False),
    sa.Column("validation_file", sa.String(40), nullable=False),
    sa.Column("training_dataset", sa.String(40), nullable=False),
    sa.Column("validation_dataset", sa.String(40), nullable=False),
    sa.Column("hyperparameters", sa.Text, nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("suffix", sa.String(64), nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("fine_tuned_model", sa.String(255), nullable=False),
    sa.Column("trained_tokens", sa.BigInteger, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=False),
    sa.Column("error_message", sa.Text, nullable=False),
    sa.Column("error_param", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Column("estimated_finish", sa.BigInteger, nullable=True),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    # Where a paused job continues from: a checkpoint taken at the step it stopped after.
    sa.Column("pause_checkpoint", sa.Text, nullable=False, server_default=""),
    sa.Column("pause_step", sa.BigInteger, nullable=False, server_default="0"),
    # Where the job trains: "local", or "openai" (a remote OpenAI-compatible fine-tuning API), and
    # there the remote job's id, its model's id and the last remote event mirrored here.
    sa.Column("provider", sa.String(16), nullable=False, server_default="local"),
    sa.Column("provider_job_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("provider_model", sa.String(255), nullable=False, server_default=""),
    sa.Column("provider_event_cursor", sa.String(64), nullable=False, server_default=""),
    # The base model the job trains from: its `model` itself, or for a warm start (`model` a
    # fine-tuned model) the base model that one descends from.
    sa.Column("base_model", sa.String(255), nullable=False, server_default=""),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_training_jobs_idempotency"),
    sa.Index("ix_training_jobs_tenant", "tenant", "created_at"),
    sa.Index("ix_training_jobs_status", "status"),
)

job_events = sa.Table(
    "training_job_events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=True),
    sa.Index("ix_training_job_events_job", "job_id", "seq"),
)

checkpoints = sa.Table(
    "training_checkpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.UniqueConstraint("job_id", "epoch", name="uq_training_checkpoints_epoch"),
)

models = sa.Table(
    "training_models",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("base_model", sa.String(255), nullable=False),
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("lineage", sa.Text, nullable=False),
    sa.Index("ix_training_models_tenant", "tenant", "created_at"),
)

VALIDATING, QUEUED, RUNNING, PAUSED = "validating_files", "queued", "running", "paused"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
# Not finished: a cancel still applies.
ACTIVE = (VALIDATING, QUEUED, RUNNING, PAUSED)
PAUSABLE = (QUEUED, RUNNING)


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class JobRecord:
    id: str
    tenant: str
    status: str
    model: str
    training_file: str
    validation_file: str
    training_dataset: str
    validation_dataset: str
    hyperparameters: str
    method: str
    suffix: str
    seed: int
    metadata: str
    fine_tuned_model: str
    trained_tokens: int
    error_code: str
    error_message: str
    error_param: str
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    idempotency_key: str | None
    attempts: int
    pause_checkpoint: str = ""
    pause_step: int = 0
    provider: str = "local"
    provider_job_id: str = ""
    provider_model: str = ""
    provider_event_cursor: str = ""
    base_model: str = ""

    @property
    def root_base(self) -> str:
        """The base model the job trains from (rows written before warm starts have no base_model)."""
        return self.base_model or self.model

    @property
    def parent_model(self) -> str:
        """The fine-tuned model the job warm-starts from; empty when it starts from its base model."""
        return self.model if self.model != self.root_base else ""

    @property
    def loop_metadata(self) -> dict[str, str]:
        """The deployment and retrain request the job is for, from its metadata (empty when none)."""
        metadata = json.loads(self.metadata or "{}")
        return {key: metadata.get(key, "") for key in ("deployment", "retrain_request_id")}

    @classmethod
    def from_row(cls, row) -> JobRecord:
        return cls(**{f.name: row._mapping[f.name] for f in fields(cls)})


async def job_by_idempotency_key(session: AsyncSession, tenant: str, key: str) -> JobRecord | None:
    row = (await session.execute(sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key))).first()
    return JobRecord.from_row(row) if row else None


async def add_job(session: AsyncSession, record: JobRecord) -> tuple[JobRecord, bool]:
    if record.idempotency_key:
        existing = await job_by_idempotency_key(session, record.tenant, record.idempotency_key)
        if existing:
            return existing, False
    await session.execute(jobs.insert().values(**record.__dict__))
    return record, True


async def get_job(session: AsyncSession, tenant: str, job_id: str) -> JobRecord:
    row = (await session.execute(sa.select(jobs).where(jobs.c.id == job_id, jobs.c.tenant == tenant))).first()
    if row is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="fine_tuning_job_not_found")
    return JobRecord.from_row(row)


async def job_by_id(session: AsyncSession, job_id: str) -> JobRecord:
    row = (await session.execute(sa.select(jobs).where(jobs.c.id == job_id))).first()
    if row is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return JobRecord.from_row(row)


async def list_jobs(session: AsyncSession, tenant: str, after: str, limit: int) -> list[JobRecord]:
    query = sa.select(jobs).where(jobs.c.tenant == tenant)
    if after:
        anchor = await get_job(session, tenant, after)
        query = query.where(
            sa.or_(jobs.c.created_at < anchor.created_at, sa.and_(jobs.c.created_at == anchor.created_at, jobs.c.id < anchor.id))
        )
    query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    return [JobRecord.from_row(row) for row in await session.execute(query)]


async def jobs_in(session: AsyncSession, statuses: tuple[str, ...]) -> list[JobRecord]:
    query = sa.select(jobs).where(jobs.c.status.in_(statuses)).order_by(jobs.c.created_at, jobs.c.id)
    return [JobRecord.from_row(row) for row in await session.execute(query)]


async def update_job(session: AsyncSession, job_id: str, *, expect: tuple[str, ...] | None = None, **values) -> bool:
    """Change a job; with `expect`, only while it is in one of those states. True when a row changed."""
    statement = jobs.update().where(jobs.c.id == job_id)
    if expect:
        statement = statement.where(jobs.c.status.in_(expect))
    result = await session.execute(statement.values(**values))
    return result.rowcount > 0


async def add_event(session: AsyncSession, job_id: str, message: str, *, level: str = "info",
                    type: str = "message", data: dict | None = None) -> None:
    await session.execute(
        job_events.insert().values(
            id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level, type=type, message=message,
            data=json.dumps(data) if data is not None else None,
        )
    )


async def list_events(session: AsyncSession, job_id: str, after: str, limit: int) -> list:
    query = sa.select(job_events).where(job_events.c.job_id == job_id)
    if after:
        seq = (await session.execute(sa.select(job_events.c.seq).where(job_events.c.id == after))).scalar_one_or_none()
        if seq is not None:
            query = query.where(job_events.c.seq < seq)
    query = query.order_by(job_events.c.seq.desc()).limit(limit)
    return list(await session.execute(query))


async def add_checkpoint(session: AsyncSession, job_id: str, *, step: int, epoch: int, metrics: dict, path: str) -> None:
    existing = (
        await session.execute(sa.select(checkpoints.c.id).where(checkpoints.c.job_id == job_id, checkpoints.c.epoch == epoch))
    ).scalar_one_or_none()
    values = {"step": step, "created_at": now(), "metrics": json.dumps(metrics), "path": path}
    if existing:  # a resumed job saves the epoch again
        await session.execute(checkpoints.update().where(checkpoints.c.id == existing).values(**values))
    else:
        await session.execute(checkpoints.insert().values(id=new_id("ftckpt"), job_id=job_id, epoch=epoch, **values))


async def list_checkpoints(session: AsyncSession, job_id: str, limit: int = 100) -> list:
    query = (
        sa.select(checkpoints).where(checkpoints.c.job_id == job_id).order_by(checkpoints.c.step.desc()).limit(limit)
    )
    return list(await session.execute(query))


async def add_model(session: AsyncSession, **values) -> None:
    await session.execute(models.insert().values(created_at=now(), **values))


async def tenant_models(session: AsyncSession, tenant: str) -> list:
    query = sa.select(models).where(models.c.tenant == tenant).order_by(models.c.created_at, models.c.id)
    return list(await session.execute(query))


async def find_model(session: AsyncSession, tenant: str, model_id: str):
    return (await session.execute(sa.select(models).where(models.c.id == model_id, models.c.tenant == tenant))).first()


async def delete_model(session: AsyncSession, model_id: str) -> None:
    await session.execute(models.delete().where(models.c.id == model_id))
