"""training: initial tables

Revision ID: training_0001
Revises:
"""

from alembic import op

from services.shared.outbox import create_messaging_tables

revision = "training_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "training")


def downgrade() -> None:
    raise NotImplementedError("training_0001 is the first migration; drop the database instead")
