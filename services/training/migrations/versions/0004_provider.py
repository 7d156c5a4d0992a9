"""training: jobs run on a remote fine-tuning provider

Revision ID: training_0004
Revises: training_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "training_0004"
down_revision = "training_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("provider", sa.String(16), nullable=False, server_default="local"))
        batch.add_column(sa.Column("provider_job_id", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("provider_model", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("provider_event_cursor", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        for column in ("provider_event_cursor", "provider_model", "provider_job_id", "provider"):
            batch.drop_column(column)
