"""training: where a paused job continues from

Revision ID: training_0003
Revises: training_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "training_0003"
down_revision = "training_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot alter a table in place; PostgreSQL gets plain ALTER TABLE.
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("pause_checkpoint", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("pause_step", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("pause_step")
        batch.drop_column("pause_checkpoint")
