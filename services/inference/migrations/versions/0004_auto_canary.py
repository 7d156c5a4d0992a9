"""inference: a canary started by a passed evaluation ends at a set time, when it is promoted

Revision ID: inference_0004
Revises: inference_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "inference_0004"
down_revision = "inference_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_deployments") as table:
        table.add_column(sa.Column("canary_until", sa.BigInteger, nullable=True))
        table.add_column(sa.Column("canary_reason", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("inference_deployments") as table:
        table.drop_column("canary_reason")
        table.drop_column("canary_until")
