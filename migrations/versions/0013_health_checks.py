"""settle and health checks (issue 14 parts 1 and 2): when a rebooting server's servicing stack has been seen idle
(and with which boot id), and every health check result of a run

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settled_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("settle_boot_id", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("health", sa.JSON(), nullable=True))
    op.create_table(
        "health_checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(length=10), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("check_name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"],
                                name=op.f("fk_health_checks_execution_id_executions"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_checks")),
        sa.UniqueConstraint("execution_id", "phase", "cycle", "check_name", "attempt",
                            name="uq_health_checks_attempt"),
    )
    with op.batch_alter_table("health_checks", schema=None) as batch_op:
        batch_op.create_index("ix_health_checks_execution", ["execution_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("health_checks")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_column("health")
        batch_op.drop_column("settle_boot_id")
        batch_op.drop_column("settled_since")
