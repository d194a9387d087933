"""the report channel: report tokens (digests only) and the cycle reports the update package posts

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-26 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("execution_id", sa.String(length=10), nullable=False),
        sa.Column("cycle_key", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_report_tokens_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_report_tokens_token_hash")),
    )
    with op.batch_alter_table("report_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_tokens_execution_id"), ["execution_id"], unique=False)

    op.create_table(
        "cycle_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(length=10), nullable=False),
        sa.Column("cycle_key", sa.String(length=100), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("body_digest", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_cycle_reports_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cycle_reports")),
        sa.UniqueConstraint("execution_id", "cycle_key", name="uq_cycle_reports_execution_key"),
    )


def downgrade() -> None:
    op.drop_table("cycle_reports")
    with op.batch_alter_table("report_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_tokens_execution_id"))
    op.drop_table("report_tokens")
