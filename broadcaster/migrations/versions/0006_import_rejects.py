"""import_rejects: rows refused at import, kept for audit

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "import_rejects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("raw_value", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["import_batches.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("import_rejects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_import_rejects_batch_id"), ["batch_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("import_rejects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_import_rejects_batch_id"))
    op.drop_table("import_rejects")
