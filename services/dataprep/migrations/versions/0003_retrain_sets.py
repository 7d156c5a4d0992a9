"""dataprep: the feedback loop's retraining sets

Revision ID: dataprep_0003
Revises: dataprep_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "dataprep_0003"
down_revision = "dataprep_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataprep_retrain_sets",
        sa.Column("request_id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=False),
        sa.Column("parent_version", sa.String(255), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("file_id", sa.String(40), nullable=False),
        sa.Column("dataset_id", sa.String(40), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_dataprep_retrain_sets_status", "dataprep_retrain_sets", ["status"])
    op.create_index("ix_dataprep_retrain_sets_dataset", "dataprep_retrain_sets", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_dataprep_retrain_sets_dataset", "dataprep_retrain_sets")
    op.drop_index("ix_dataprep_retrain_sets_status", "dataprep_retrain_sets")
    op.drop_table("dataprep_retrain_sets")
