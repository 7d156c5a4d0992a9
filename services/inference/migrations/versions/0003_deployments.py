"""inference: named deployments with canary and rollback; completions record their deployment

Revision ID: inference_0003
Revises: inference_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "inference_0003"
down_revision = "inference_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inference_deployments",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("model_version", sa.String(255), nullable=False),
        sa.Column("previous_version", sa.String(255), nullable=False, server_default=""),
        sa.Column("canary_version", sa.String(255), nullable=False, server_default=""),
        sa.Column("canary_percent", sa.Integer, nullable=False, server_default="0"),
        sa.Column("auto_promote", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "inference_deployment_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_version", sa.String(255), nullable=False, server_default=""),
        sa.Column("to_version", sa.String(255), nullable=False, server_default=""),
        sa.Column("percent", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_inference_deployment_changes_name", "inference_deployment_changes", ["tenant", "name", "id"])
    with op.batch_alter_table("inference_completions") as table:
        table.add_column(sa.Column("deployment", sa.String(63), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("inference_completions") as table:
        table.drop_column("deployment")
    op.drop_index("ix_inference_deployment_changes_name", "inference_deployment_changes")
    op.drop_table("inference_deployment_changes")
    op.drop_table("inference_deployments")
