"""scheduler: per-job planning watermark and daemon heartbeats

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_state",
        sa.Column("job_key", sa.String(length=200), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("job_key"),
    )
    op.create_table(
        "daemon_heartbeats",
        sa.Column("daemon_id", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("daemon_id"),
    )
    with op.batch_alter_table("daemon_heartbeats", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_daemon_heartbeats_beat_at"), ["beat_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("daemon_heartbeats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_daemon_heartbeats_beat_at"))
    op.drop_table("daemon_heartbeats")
    op.drop_table("schedule_state")
