"""evaluation: side-by-side runs with their verdicts, human reviews of them, and gate policies per deployment

Revision ID: evaluation_0002
Revises: evaluation_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "evaluation_0002"
down_revision = "evaluation_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("candidate", sa.String(255), nullable=False),
        sa.Column("baseline", sa.String(255), nullable=False, server_default=""),
        sa.Column("base_model", sa.String(255), nullable=False, server_default=""),
        sa.Column("deployment", sa.String(63), nullable=False, server_default=""),
        sa.Column("dataset_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("dataset_split", sa.String(16), nullable=False, server_default="validation"),
        sa.Column("file_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("policy", sa.Text, nullable=False),
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
        sa.Column("report", sa.Text, nullable=True),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_evaluation_runs_idempotency"),
    )
    op.create_index("ix_evaluation_runs_tenant", "evaluation_runs", ["tenant", "created_at"])
    op.create_index("ix_evaluation_runs_status", "evaluation_runs", ["status"])
    op.create_table(
        "evaluation_reviews",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("evaluation_id", sa.String(40), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("imported_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_evaluation_reviews_evaluation", "evaluation_reviews", ["tenant", "evaluation_id", "created_at"])


    op.create_table(
        "evaluation_policies",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("deployment", sa.String(63), primary_key=True),
        sa.Column("policy", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("evaluation_policies")
    op.drop_table("evaluation_reviews")
    op.drop_table("evaluation_runs")
