"""The report channel's heartbeats (migration 0011, orchestrator/services/reports.py): the last running report of
each cycle, one row per (execution, cycle key), upserted by every heartbeat. Never the cycle's result: that is
`models.CycleReportRecord`, posted once when the cycle has finished."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.persistence.db import UTCDateTime
from orchestrator.persistence.models import Base, JSONType


class CycleHeartbeat(Base):
    """The latest heartbeat of one cycle of the update package: when it was heard, how many, what it was doing."""

    __tablename__ = "cycle_heartbeats"
    __table_args__ = (sa.UniqueConstraint("execution_id", "cycle_key", name="uq_cycle_heartbeats_execution_key"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"))
    cycle_key: Mapped[str] = mapped_column(sa.String(100))
    cycle: Mapped[int] = mapped_column(sa.Integer)
    beats: Mapped[int] = mapped_column(sa.Integer, default=1)  # heartbeats heard (replays included)
    sequence: Mapped[int] = mapped_column(sa.Integer, default=0)  # the last <n> of Idempotency-Key <key>:heartbeat:<n>
    phase: Mapped[str | None] = mapped_column(sa.String(200))
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the last heartbeat, the validated CycleReport's JSON
    first_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())
