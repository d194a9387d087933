"""ssh hosts: how the ssh fleet driver reaches Linux servers; Linux package columns on patches

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssh_hosts",
        sa.Column("server_name", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("key_ref", sa.String(length=500), nullable=False),
        sa.Column("package_manager", sa.String(length=8), nullable=False),
        sa.Column("in_maintenance", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_name"], ["servers.name"], name=op.f("fk_ssh_hosts_server_name_servers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("server_name", name=op.f("pk_ssh_hosts")),
    )
    with op.batch_alter_table("patches", schema=None) as batch_op:
        batch_op.alter_column("kb", existing_type=sa.String(length=16), type_=sa.String(length=100),
                              existing_nullable=False)
        batch_op.add_column(sa.Column("from_version", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("to_version", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("output", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patches", schema=None) as batch_op:
        batch_op.drop_column("output")
        batch_op.drop_column("to_version")
        batch_op.drop_column("from_version")
        batch_op.alter_column("kb", existing_type=sa.String(length=100), type_=sa.String(length=16),
                              existing_nullable=False)
    op.drop_table("ssh_hosts")
