"""inference: the completion log keeps the texts (as configured), time to first token and cost

Revision ID: inference_0002
Revises: inference_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "inference_0002"
down_revision = "inference_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_completions") as table:
        table.add_column(sa.Column("request", sa.Text, nullable=True))
        table.add_column(sa.Column("response", sa.Text, nullable=True))
        table.add_column(sa.Column("texts", sa.String(16), nullable=False, server_default="none"))
        table.add_column(sa.Column("stream", sa.Boolean, nullable=False, server_default=sa.false()))
        table.add_column(sa.Column("ttft_ms", sa.Float, nullable=True))
        table.add_column(sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"))
    op.create_index("ix_inference_completions_created", "inference_completions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_inference_completions_created", "inference_completions")
    with op.batch_alter_table("inference_completions") as table:
        for column in ("request", "response", "texts", "stream", "ttft_ms", "cost_usd"):
            table.drop_column(column)
