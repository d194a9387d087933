"""heartbeats: the last running report of each cycle (the report channel) and when the running cycle was invoked

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("invoked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "cycle_heartbeats",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(length=10), nullable=False),
        sa.Column("cycle_key", sa.String(length=100), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("beats", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=200), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_cycle_heartbeats_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cycle_heartbeats")),
        sa.UniqueConstraint("execution_id", "cycle_key", name="uq_cycle_heartbeats_execution_key"),
    )


def downgrade() -> None:
    op.drop_table("cycle_heartbeats")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_column("invoked_at")
