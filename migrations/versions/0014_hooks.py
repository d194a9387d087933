"""pre/post hooks per account, and the runs of each hook (issue 14 part 3)

`hooks`: an account's named hooks; `hook_runs`: one row per (execution, point, cycle, hook), the intent written
before the hook is called; executions gain `hook_plan` (the run's hooks, fixed at its first step) and `hook_stage`
(while running_hooks: the point, its cycle and the state the run goes on to).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hook_plan", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("hook_stage", sa.JSON(), nullable=True))
    op.create_table(
        "hooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_alias", sa.String(length=4), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_alias"], ["accounts.alias"], name=op.f("fk_hooks_account_alias_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hooks")),
        sa.UniqueConstraint("account_alias", "name", name="uq_hooks_account_name"),
    )
    op.create_index(op.f("ix_hooks_account_alias"), "hooks", ["account_alias"], unique=False)
    op.create_table(
        "hook_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(length=10), nullable=False),
        sa.Column("point", sa.String(length=20), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("hook_name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("on_failure", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], name=op.f("fk_hook_runs_execution_id_executions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_runs")),
        sa.UniqueConstraint("execution_id", "point", "cycle", "hook_name", name="uq_hook_runs_execution_point"),
    )
    op.create_index(op.f("ix_hook_runs_execution_id"), "hook_runs", ["execution_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_hook_runs_execution_id"), table_name="hook_runs")
    op.drop_table("hook_runs")
    op.drop_index(op.f("ix_hooks_account_alias"), table_name="hooks")
    op.drop_table("hooks")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_column("hook_stage")
        batch_op.drop_column("hook_plan")
