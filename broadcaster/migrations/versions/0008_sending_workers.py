"""sending_workers: the dispatchers sending now, among which the rate limit is shared

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sending_workers",
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_index("ix_sending_workers_seen_at", "sending_workers", ["seen_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sending_workers_seen_at", table_name="sending_workers")
    op.drop_table("sending_workers")
