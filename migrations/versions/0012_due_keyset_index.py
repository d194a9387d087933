"""the tick's due index keyed (next_run_at, id), for its keyset claims; room for HOT updates of executions

The tick claims due executions `tick_batch` rows at a time and, within one tick, each claim continues after
the (next_run_at, id) of the last row the previous one took (orchestrator/engine/executions.py,
`claim_due_until`): with 100,000 executions due over a poll interval a tick runs dozens of claims, and
without a keyset each one read again, from the start of the due range, every row the earlier ones had
handed off. `ix_executions_due_id` replaces `ix_executions_due` (next_run_at only; every query that used it
can use the new one), so each update of a row still maintains one due index.

PostgreSQL only: `executions` gets fillfactor 80, so the updates that change no indexed column (the claim
that takes a lease, an intent, the tick's dispatch mark) can stay on their page as HOT updates and touch
no index at all (new pages only; a `VACUUM FULL` applies it to the existing ones).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ACTIVE = sa.text("ended_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index("ix_executions_due_id", ["next_run_at", "id"], unique=False,
                              postgresql_where=ACTIVE, sqlite_where=ACTIVE)
        batch_op.drop_index("ix_executions_due", postgresql_where=ACTIVE, sqlite_where=ACTIVE)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE executions SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE executions RESET (fillfactor)")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index("ix_executions_due", ["next_run_at"], unique=False,
                              postgresql_where=ACTIVE, sqlite_where=ACTIVE)
        batch_op.drop_index("ix_executions_due_id", postgresql_where=ACTIVE, sqlite_where=ACTIVE)
