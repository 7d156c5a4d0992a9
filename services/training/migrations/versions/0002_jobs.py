"""training: jobs, job events, checkpoints and the fine-tuned model registry

Revision ID: training_0002
Revises: training_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "training_0002"
down_revision = "training_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_jobs",
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
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_training_jobs_idempotency"),
    )
    op.create_index("ix_training_jobs_tenant", "training_jobs", ["tenant", "created_at"])
    op.create_index("ix_training_jobs_status", "training_jobs", ["status"])
    op.create_table(
        "training_job_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=True),
    )
    op.create_index("ix_training_job_events_job", "training_job_events", ["job_id", "seq"])
    op.create_table(
        "training_checkpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.UniqueConstraint("job_id", "epoch", name="uq_training_checkpoints_epoch"),
    )
    op.create_table(
        "training_models",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("lineage", sa.Text, nullable=False),
    )
    op.create_index("ix_training_models_tenant", "training_models", ["tenant", "created_at"])


def downgrade() -> None:
    for table in ("training_models", "training_checkpoints", "training_job_events", "training_jobs"):
        op.drop_table(table)
