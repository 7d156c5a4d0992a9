"""feedback: what a deployment served before its current version

Revision ID: feedback_0003
Revises: feedback_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "feedback_0003"
down_revision = "feedback_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback_deployments") as batch:
        batch.add_column(sa.Column("previous_version", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("feedback_deployments") as batch:
        batch.drop_column("previous_version")
