"""inference: initial tables

Revision ID: inference_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from services.shared.outbox import create_messaging_tables

revision = "inference_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "inference")
    op.create_table(
        "inference_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("finish_reason", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_inference_completions_tenant", "inference_completions", ["tenant", "created_at"])


def downgrade() -> None:
    raise NotImplementedError("inference_0001 is the first migration; drop the database instead")
