"""Health check results (migration 0013, docs/HOOKS.md "Health checks"): one row per attempt of one check in one
phase of a run. Inserted `running` before the attempt (its intent), completed with the transition that records it
(orchestrator/engine/health_runs.py), unique per (execution, phase, cycle, check, attempt)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.persistence.db import UTCDateTime
from orchestrator.persistence.models import Base


class HealthCheckResult(Base):
    """One attempt of one health check."""

    __tablename__ = "health_checks"
    __table_args__ = (
        sa.UniqueConstraint("execution_id", "phase", "cycle", "check_name", "attempt",
                            name="uq_health_checks_attempt"),
        sa.Index("ix_health_checks_execution", "execution_id", "id"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(sa.ForeignKey("executions.id", ondelete="CASCADE"))
    phase: Mapped[str] = mapped_column(sa.String(16))  # baseline | after_reboot | final
    cycle: Mapped[int] = mapped_column(sa.Integer)
    check_name: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(16))  # http | tcp | service | command
    target: Mapped[str] = mapped_column(sa.String(300))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))  # running | ok | retrying | failed
    output: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
