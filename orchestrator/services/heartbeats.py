"""Heartbeats of the report channel: the running reports the update package posts while a cycle works
(`state: running`, `Idempotency-Key: <key>:heartbeat:<n>`, docs/WINDOWS.md).

A heartbeat is never the cycle's result: it is kept apart (`cycle_heartbeats`, one row per cycle, upserted by
each heartbeat: how many, the last `n`, the phase, when first and last heard) so the final report of the cycle
is recorded as before. The engine reads the last one through `ReportingFleet.cycle_result` as a
`HeartbeatReport` (its `heard_at` on the channel's clock, never the server's) and extends the cycle's deadline
only while heartbeats arrive, up to the policy's ceiling (orchestrator/domain/machine.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator.persistence import models
from orchestrator.persistence.report_models import CycleHeartbeat
from schemas.fleet import CycleReport, HeartbeatReport

HEARTBEAT_KEY_RE = re.compile(r"^(?P<key>.{1,100}):heartbeat:(?P<n>[0-9]{1,6})$")


def sequence_of(idempotency_key: str | None, key: str) -> int | None:
    """The `n` of a heartbeat's `Idempotency-Key: <key>:heartbeat:<n>` (0 when the header is absent or is the
    cycle key itself); None when the header names anything else (another cycle's heartbeat, another key)."""
    if idempotency_key is None or not idempotency_key.strip() or idempotency_key.strip() == key:
        return 0
    match = HEARTBEAT_KEY_RE.match(idempotency_key.strip())
    if match is None or match["key"] != key:
        return None
    return int(match["n"])


def final_recorded(session: Session, execution_id: str, key: str) -> bool:
    """Whether the cycle's final report is already recorded (a late heartbeat changes nothing then)."""
    return session.scalar(sa.select(models.CycleReportRecord.id).where(
        models.CycleReportRecord.execution_id == execution_id, models.CycleReportRecord.cycle_key == key)) is not None


def record(session: Session, execution_id: str, report: CycleReport, cycle: int, sequence: int, now: datetime) -> int:
    """Keep the heartbeat (INSERT … ON CONFLICT DO UPDATE on PostgreSQL and SQLite); the beats heard so far."""
    table = CycleHeartbeat.__table__
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    values: dict[str, Any] = dict(
        execution_id=execution_id, cycle_key=report.key, cycle=cycle, beats=1, sequence=sequence,
        phase=report.phase, body=report.model_dump(mode="json"), first_at=now, last_at=now,
    )
    statement = insert(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["execution_id", "cycle_key"],
        set_={"beats": table.c.beats + 1, "sequence": statement.excluded.sequence, "phase": statement.excluded.phase,
              "body": statement.excluded.body, "last_at": statement.excluded.last_at},
    ).returning(table.c.beats)
    return int(session.execute(statement).scalar_one())


def latest(session: Session, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], HeartbeatReport]:
    """The last heartbeat of each (execution, cycle key) that has one, as the engine reads it."""
    wanted = list(dict.fromkeys(pairs))
    if not wanted:
        return {}
    table = CycleHeartbeat.__table__
    rows = session.execute(
        sa.select(table.c.execution_id, table.c.cycle_key, table.c.body, table.c.beats, table.c.last_at).where(
            table.c.execution_id.in_({e for e, _ in wanted}), table.c.cycle_key.in_({k for _, k in wanted}))
    ).all()
    found: dict[tuple[str, str], HeartbeatReport] = {}
    for row in rows:
        if (row.execution_id, row.cycle_key) in wanted:
            found[(row.execution_id, row.cycle_key)] = HeartbeatReport.model_validate(
                {**row.body, "heard_at": row.last_at, "beats": row.beats})
    return found
