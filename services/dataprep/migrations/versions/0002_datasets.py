"""dataprep: prepared datasets

Revision ID: dataprep_0002
Revises: dataprep_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "dataprep_0002"
down_revision = "dataprep_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataprep_datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("file_id", sa.String(40), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
        sa.Column("lines_processed", sa.BigInteger, nullable=False),
        sa.Column("train_sha256", sa.String(64), nullable=True),
        sa.Column("validation_sha256", sa.String(64), nullable=True),
        sa.Column("review_sha256", sa.String(64), nullable=True),
        sa.Column("train_examples", sa.BigInteger, nullable=False),
        sa.Column("validation_examples", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("report", sa.Text, nullable=True),
    )
    op.create_index("ix_dataprep_datasets_tenant", "dataprep_datasets", ["tenant", "created_at"])
    op.create_index("ix_dataprep_datasets_status", "dataprep_datasets", ["status"])


def downgrade() -> None:
    op.drop_index("ix_dataprep_datasets_status", "dataprep_datasets")
    op.drop_index("ix_dataprep_datasets_tenant", "dataprep_datasets")
    op.drop_table("dataprep_datasets")
