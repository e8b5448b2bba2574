"""claim order index: status, priority DESC, next_attempt_at, id

Claims take "queued and due, most urgent first, then oldest due first". The first index
(status, priority, next_attempt_at) could not give priority DESC with next_attempt_at ASC, so every
claim sorted all queued messages; this one serves the claim straight from the index.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_claim")
        batch_op.create_index(
            "ix_messages_due", ["status", sa.text("priority DESC"), "next_attempt_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_due")
        batch_op.create_index("ix_messages_claim", ["status", "priority", "next_attempt_at"], unique=False)
