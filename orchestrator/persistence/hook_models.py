"""Pre/post hooks (migration 0014, docs/HOOKS.md): `hooks`, an account's named hooks, and `hook_runs`, one row per
(execution, point, cycle, hook): written as the intent before the hook is called, completed with its outcome after.
The unique key is what makes a hook run at most once per point of a run, across crashes and retries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.persistence.db import UTCDateTime
from orchestrator.persistence.models import Base, JSONType


class Hook(Base):
    """A named hook of an account. `definition` is the hook as PUT defined it (schemas/hooks.py: HookSpec, camelCase)
    without its secret headers, which are kept sealed (Fernet, PATCHAAS_WEBHOOK_KEY) in `secret_sealed`."""

    __tablename__ = "hooks"
    __table_args__ = (sa.UniqueConstraint("account_alias", "name", name="uq_hooks_account_name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    name: Mapped[str] = mapped_column(sa.String(63))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    secret_sealed: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(sa.String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class HookRun(Base):
    """One hook at one point of one run. `started_at` set and `ended_at` NULL: the intent (the call may or may not
    have happened); `status` then `ok`, `failed` or `unknown` (an HTTP call interrupted by a crash: not re-sent)."""

    __tablename__ = "hook_runs"
    __table_args__ = (
        sa.UniqueConstraint("execution_id", "point", "cycle", "hook_name", name="uq_hook_runs_execution_point"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"), index=True)
    point: Mapped[str] = mapped_column(sa.String(20))
    cycle: Mapped[int] = mapped_column(sa.Integer)
    hook_name: Mapped[str] = mapped_column(sa.String(63))
    kind: Mapped[str] = mapped_column(sa.String(10))
    key: Mapped[str] = mapped_column(sa.String(200))  # the idempotency key the driver or the receiver got
    on_failure: Mapped[str] = mapped_column(sa.String(8))
    status: Mapped[str] = mapped_column(sa.String(10))  # running | ok | failed | unknown
    attempts: Mapped[int] = mapped_column(sa.Integer, default=1)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)  # a command's exit code, or an HTTP status
    output: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
