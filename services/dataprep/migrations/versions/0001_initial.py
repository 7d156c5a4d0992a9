"""dataprep: initial tables

Revision ID: dataprep_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from services.shared.outbox import create_messaging_tables

revision = "dataprep_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op, "dataprep")
    op.create_table(
        "dataprep_files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_dataprep_files_tenant", "dataprep_files", ["tenant", "created_at"])
    op.create_index("ix_dataprep_files_sha256", "dataprep_files", ["sha256"])


def downgrade() -> None:
    raise NotImplementedError("dataprep_0001 is the first migration; drop the database instead")
