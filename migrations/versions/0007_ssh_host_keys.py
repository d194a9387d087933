"""ssh hosts registered by operators: the host key pinned per host (its SHA256 fingerprint)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ssh_hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host_key_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ssh_hosts", schema=None) as batch_op:
        batch_op.drop_column("host_key_fingerprint")
