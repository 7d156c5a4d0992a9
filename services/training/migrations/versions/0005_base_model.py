"""training: the base model a job trains from, apart from the model it names (a warm start's parent)

Revision ID: training_0005
Revises: training_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "training_0005"
down_revision = "training_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("base_model", sa.String(255), nullable=False, server_default=""))
    # Every job so far named its base model itself.
    op.execute("UPDATE training_jobs SET base_model = model")


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("base_model")
