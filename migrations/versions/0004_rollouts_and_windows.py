"""rollouts and patch windows: rate-controlled rollouts, scheduled windows and their occurrences; the
rollout and window columns of executions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_alias", sa.String(length=4), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("max_concurrency", sa.String(length=16), nullable=True),
        sa.Column("max_errors", sa.String(length=16), nullable=True),
        sa.Column("concurrency_limit", sa.Integer(), nullable=False),
        sa.Column("error_limit", sa.Integer(), nullable=True),
        sa.Column("waves", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_alias"], ["accounts.alias"],
                                name=op.f("fk_rollouts_account_alias_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_account_alias"), ["account_alias"], unique=False)

    op.create_table(
        "patch_windows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_alias", sa.String(length=4), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("servers", sa.JSON(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("schedule_kind", sa.String(length=8), nullable=False),
        sa.Column("schedule", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("cutoff_seconds", sa.Integer(), nullable=False),
        sa.Column("max_concurrency", sa.String(length=16), nullable=True),
        sa.Column("max_errors", sa.String(length=16), nullable=True),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("package_id", sa.String(length=36), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_alias"], ["accounts.alias"],
                                name=op.f("fk_patch_windows_account_alias_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patch_windows")),
        sa.UniqueConstraint("account_alias", "name", name="uq_patch_windows_account_name"),
    )
    with op.batch_alter_table("patch_windows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patch_windows_account_alias"), ["account_alias"], unique=False)

    op.create_table(
        "window_occurrences",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("window_id", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["window_id"], ["patch_windows.id"],
                                name=op.f("fk_window_occurrences_window_id_patch_windows"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"],
                                name=op.f("fk_window_occurrences_rollout_id_rollouts"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_window_occurrences")),
        sa.UniqueConstraint("window_id", "starts_at", name="uq_window_occurrences_window_start"),
    )

    # SQLite: a batch copy of the table (its partial indexes are reflected and re-created); PostgreSQL: ALTERs
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rollout_position", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rollout_wave", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("not_after", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_executions_rollout_id"), ["rollout_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_executions_rollout_id_rollouts"), "rollouts", ["rollout_id"],
                                    ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_executions_rollout_id_rollouts"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_executions_rollout_id"))
        batch_op.drop_column("not_after")
        batch_op.drop_column("rollout_wave")
        batch_op.drop_column("rollout_position")
        batch_op.drop_column("rollout_id")
    op.drop_table("window_occurrences")
    with op.batch_alter_table("patch_windows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patch_windows_account_alias"))
    op.drop_table("patch_windows")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_account_alias"))
    op.drop_table("rollouts")
