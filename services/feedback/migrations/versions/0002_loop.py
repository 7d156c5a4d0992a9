"""feedback: the loop (item status and snapshots, policies, the lock, cycles)

Revision ID: feedback_0002
Revises: feedback_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "feedback_0002"
down_revision = "feedback_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback_items") as batch:
        batch.add_column(sa.Column("deployment", sa.String(63), nullable=False, server_default=""))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="rating"))
        batch.add_column(sa.Column("retrain_request_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("quarantine_reason", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("reviewed_by", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("prompt", sa.Text, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("answer", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("prompt_key", sa.String(64), nullable=False, server_default=""))
    # Corrections stored before the loop existed wait for a batch like new ones.
    op.execute("UPDATE feedback_items SET status = 'pending' WHERE correction != ''")
    op.create_index("ix_feedback_items_deployment", "feedback_items", ["tenant", "deployment", "status", "created_at"])
    op.create_index("ix_feedback_items_prompt", "feedback_items", ["tenant", "deployment", "prompt_key"])
    op.create_index("ix_feedback_items_request", "feedback_items", ["tenant", "retrain_request_id"])
    with op.batch_alter_table("feedback_deployments") as batch:
        batch.add_column(sa.Column("policy", sa.Text, nullable=True))
        batch.add_column(sa.Column("last_request_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("lock_version", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("drift_version", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("created_at", sa.BigInteger, nullable=False, server_default="0"))
    # deployed_at is kept in milliseconds now: two changes in one second must not tie.
    op.execute("UPDATE feedback_deployments SET deployed_at = deployed_at * 1000, created_at = deployed_at")
    op.create_table(
        "feedback_cycles",
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
        sa.Column("feedback_ids", sa.Text, nullable=False, server_default="[]"),
    )
    op.create_index("ix_feedback_cycles_deployment", "feedback_cycles", ["tenant", "deployment", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_cycles_deployment", "feedback_cycles")
    op.drop_table("feedback_cycles")
    with op.batch_alter_table("feedback_deployments") as batch:
        for column in ("created_at", "drift_version", "lock_version", "last_request_at", "policy"):
            batch.drop_column(column)
    for index in ("ix_feedback_items_request", "ix_feedback_items_prompt", "ix_feedback_items_deployment"):
        op.drop_index(index, "feedback_items")
    with op.batch_alter_table("feedback_items") as batch:
        for column in ("prompt_key", "answer", "prompt", "reviewed_by", "quarantine_reason", "retrain_request_id",
                       "status", "deployment"):
            batch.drop_column(column)
