"""Set-based statements of the engine: the claim, intents, saves and inserts of many executions (and the
claim of many outbox rows) in one statement each, with exactly the compare-and-set and lease rules that
executions.py applies to one row. Used by the rounds of a batch (rounds.py) and the hand-off (handoff.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.domain import machine
from orchestrator.engine import executions
from orchestrator.engine.config import DEFAULT_BATCH_SIZE
from orchestrator.persistence import models

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    """How much one batch task does."""

    size: int = DEFAULT_BATCH_SIZE  # executions per batch message (the dispatcher splits larger hand-offs)
    budget: timedelta = timedelta(seconds=2)  # stop chaining after this long (far below the lease); the rest
    # goes back to the queue, so a worker process is never held long by one batch
    max_rounds: int = 200  # and after this many rounds
    fleet_threads: int = 8  # fleet calls of one round run on this many threads (1: one after the other)

    @classmethod
    def of(cls, config: Any) -> BatchConfig:
        """The batch settings an engine was configured with (`EngineConfig.batch_*`, from Settings)."""
        return cls(size=config.batch_size, budget=config.batch_budget, max_rounds=config.batch_max_rounds,
                   fleet_threads=config.batch_fleet_threads)


@dataclass
class BatchReport:
    """What a batch did."""

    claimed: int = 0
    steps: int = 0
    conflicts: int = 0
    retrying: int = 0
    rounds: int = 0
    handed_off: int = 0

    def summary(self) -> str:
        return (f"{self.steps} steps of {self.claimed} executions in {self.rounds} rounds; "
                f"{self.retrying} retrying, {self.conflicts} conflicts, {self.handed_off} handed off")


def claim_many(
    session: Session, ids: Sequence[str], owner: str, now: datetime, lease: timedelta, early: timedelta
) -> list[sa.Row[Any]]:
    """`executions.claim` for many ids in one statement: the due, unleased ones, leased and counted.

    Only executions whose last step finished (attempts 0): one whose step was interrupted (a crash, a
    kill, a transient error) runs alone (`suspects`), so a step that kills its process takes down no
    batch twice, and an innocent execution does not collect attempts for a neighbour's crash."""
    if not ids:
        return []
    table = models.Execution.__table__
    stmt = (
        sa.update(table)
        .where(
            table.c.id.in_(sorted(set(ids))),
            table.c.ended_at.is_(None),
            table.c.attempts == 0,
            table.c.next_run_at <= now + early,
            sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now),
        )
        .values(
            lease_owner=owner,
            lease_expires_at=now + lease,
            attempts=table.c.attempts + 1,
            version=table.c.version + 1,
            updated_at=now,
        )
        .returning(*table.c)
    )
    return list(session.execute(stmt).all())


def suspects(session: Session, ids: Sequence[str], now: datetime, early: timedelta) -> list[str]:
    """The due, unleased executions of `ids` whose last step was interrupted: each gets its own message."""
    if not ids:
        return []
    table = models.Execution.__table__
    return list(session.execute(
        sa.select(table.c.id).where(
            table.c.id.in_(sorted(set(ids))),
            table.c.ended_at.is_(None),
            table.c.attempts > 0,
            table.c.next_run_at <= now + early,
            sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now),
        )
    ).scalars())


def record_intents(
    session: Session, items: Sequence[tuple[machine.ExecutionView, dict[str, Any]]], owner: str
) -> dict[str, int]:
    """`executions.record_intent` for many executions: {id: new version} for those still at their version
    under our lease (one statement on PostgreSQL)."""
    if not items:
        return {}
    if session.get_bind().dialect.name != "postgresql":
        versions = {view.id: executions.record_intent(session, view, owner, intent) for view, intent in items}
        return {k: v for k, v in versions.items() if v}
    data = [{"b_id": view.id, "b_version": view.version, "intent": intent} for view, intent in items]
    result = session.execute(
        sa.text(
            "UPDATE executions AS e SET intent = v.intent, version = v.b_version + 1 "
            "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(b_id varchar, b_version integer, intent json) "
            "WHERE e.id = v.b_id AND e.version = v.b_version AND e.lease_owner = :owner "
            "RETURNING e.id, e.version"
        ),
        {"rows": json.dumps(data, default=_jsonable), "owner": owner},
    )
    return {row.id: row.version for row in result}


def save_many(
    session: Session, items: Sequence[tuple[machine.ExecutionView, dict[str, Any]]], owner: str
) -> dict[str, sa.Row[Any]]:
    """Compare-and-set many rows, each from the version its view was read at and under our lease, to the
    columns `executions.save_values` gave it; the rows written, by id. One statement on PostgreSQL
    (UPDATE … FROM jsonb_to_recordset), one per row elsewhere."""
    if not items:
        return {}
    table = models.Execution.__table__
    if session.get_bind().dialect.name != "postgresql":
        written: dict[str, sa.Row[Any]] = {}
        for view, values in items:
            row = session.execute(
                sa.update(table)
                .where(table.c.id == view.id, table.c.version == view.version, table.c.lease_owner == owner)
                .values(**values)
                .returning(*table.c)
            ).one_or_none()
            if row is not None:
                written[view.id] = row
        return written
    every = set.intersection(*(set(values) for _, values in items))
    some = set.union(*(set(values) for _, values in items)) - every
    dialect = session.get_bind().dialect
    columns = ["b_id varchar", "b_version integer"]
    columns += [f'"{k}" {table.c[k].type.compile(dialect=dialect)}' for k in sorted(every | some)]
    columns += [f'"has_{k}" boolean' for k in sorted(some)]
    sets = [f'"{k}" = v."{k}"' for k in sorted(every)]
    sets += [f'"{k}" = CASE WHEN v."has_{k}" THEN v."{k}" ELSE e."{k}" END' for k in sorted(some)]
    returning = ", ".join(f'e."{c.name}"' for c in table.c)
    data = []
    for view, values in items:
        doc = {"b_id": view.id, "b_version": view.version, **values}
        doc.update({f"has_{k}": k in values for k in some})
        data.append(doc)
    statement = sa.text(
        f"UPDATE executions AS e SET {', '.join(sets)} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v({', '.join(columns)}) "
        "WHERE e.id = v.b_id AND e.version = v.b_version AND e.lease_owner = :owner "
        f"RETURNING {returning}"
    ).columns(*table.c)  # matched by position: listed in the model's order
    result = session.execute(statement, {"rows": json.dumps(data, default=_jsonable), "owner": owner})
    return {row.id: row for row in result}


def insert_records(session: Session, records: Sequence[tuple[str, machine.InitiationRecord]]) -> None:
    """The cycles' initiation rows and their patch rows, for many executions: two statements."""
    if not records:
        return
    initiations = models.Initiation.__table__
    ids = session.execute(
        sa.insert(initiations).returning(initiations.c.id, sort_by_parameter_order=True),
        [executions.initiation_values(execution_id, record) for execution_id, record in records],
    ).scalars().all()
    patches = [values for (execution_id, record), initiation_id in zip(records, ids, strict=True)
               for values in executions.patch_values(execution_id, initiation_id, record)]
    if patches:
        session.execute(sa.insert(models.Patch.__table__), patches)


def claim_emails(session: Session, ids: Sequence[int], now: datetime, hold: timedelta) -> list[sa.Row[Any]]:
    """`notifications.claim` for many rows in one statement: the unsent, unclaimed ones, held for `hold`."""
    table = models.Outbox.__table__
    return list(session.execute(
        sa.update(table)
        .where(
            table.c.id.in_(sorted(set(ids))),
            table.c.sent_at.is_(None),
            sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
        )
        .values(claimed_until=now + hold, attempts=table.c.attempts + 1)
        .returning(*table.c)
    ).all())


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set | tuple):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
