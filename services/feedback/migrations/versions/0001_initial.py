"""feedback: initial tables

Revision ID: feedback_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from services.shared.outbox import create_messaging_tables

revision = "feedback_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "feedback")
    op.create_table(
        "feedback_items",
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
    )
    op.create_index("ix_feedback_items_model", "feedback_items", ["tenant", "model"])
    op.create_table(
        "feedback_deployments",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("deployment", sa.String(255), primary_key=True),
        sa.Column("model_version", sa.String(255), nullable=False),
        sa.Column("deployed_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("feedback_0001 is the first migration; drop the database instead")
