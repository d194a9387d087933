"""The report channel: the update package posts each cycle's report back to patchaas.

On CLC the package reported every cycle to the patching service itself ("Invoking SUS API"). Here:

- **Minting.** When the engine invokes a cycle of the package, `ReportingFleet.invoke_package` mints a random
  bearer token (256 bits, `auth.new_token`), stores only its SHA-256 (`auth.token_digest`, as for login
  tokens) in `report_tokens`, and hands the package the channel's URL (`Settings.report_base_url` +
  `REPORTS_PATH`) and the token as the `patchaas.reportUrl` / `patchaas.reportToken` parameters. A token
  lets the package post reports of its own execution until that execution ends. Without a base URL the
  channel is not offered and results are polled from the fleet, as before.
- **Recording.** `ReportChannel.record` checks the token, validates the body strictly against
  `schemas.fleet.CycleReport` (the model `schemas/cycle_report.schema.json` is generated from) and keeps one
  row per (execution, cycle key) in `cycle_reports`, inserted with ON CONFLICT DO NOTHING: the same report
  posted twice, or by two posts at once, is recorded once; a different body for a recorded key is a conflict.
- **Heartbeats.** A body with `state: running` (and `Idempotency-Key: <key>:heartbeat:<n>`) is a heartbeat:
  kept apart by heartbeats.py, never as the cycle's report, answered 202; the final report of the cycle is
  recorded as before. A heartbeat after the cycle's report, or after the execution ended, is a conflict (409:
  the package then sends no more that cycle).
- **Reading.** `ReportingFleet.cycle_result` (and `cycle_results`, in bulk) answers the recorded report of a
  cycle when there is one and asks the fleet (packageRuns / queue status) otherwise, so the engine
  (`orchestrator/engine/steps.py`) reads the channel first and falls back to polling; a cycle still running
  whose package sent heartbeats is answered as its last heartbeat (`HeartbeatReport`), which extends its
  deadline (orchestrator/domain/machine.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain.machine import State
from orchestrator.persistence import models
from orchestrator.ports import Fleet
from orchestrator.services import auth, heartbeats
from orchestrator.services.errors import Conflict, NotFound
from orchestrator.services.report_rules import (
    KEY_RE,
    MAX_REPORT_BYTES,
    REPORTS_PATH,
    TERMINAL_STATES,
    InvalidReport,
    bearer_token,
    body_digest,
    canonical,
    cycle_of,
    describe,
    execution_of,
    parse_post,
    parse_report,
    report_url,
)
from schemas.fleet import CycleReport, CycleState, HeartbeatReport, PackageRun, ServerStatus

__all__ = [  # the pure rules live in report_rules.py; callers keep naming them through this module
    "KEY_RE", "MAX_REPORT_BYTES", "REPORTS_PATH", "InvalidReport", "Recorded", "ReportChannel", "ReportUnauthorized",
    "ReportingFleet", "bearer_token", "body_digest", "canonical", "cycle_of", "describe", "execution_of",
    "parse_post", "parse_report", "report_url",
]

log = logging.getLogger(__name__)


class ReportUnauthorized(auth.Unauthorized):
    """No report token, or one that is not a token of this execution (401)."""


# --- the channel -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What a post did: `created` False means the same report was recorded before (an idempotent replay)."""

    execution_id: str
    key: str
    cycle: int
    received_at: datetime
    created: bool
    heartbeat: int | None = None  # a heartbeat (state running): the beats heard for the cycle so far

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "executionId": self.execution_id,
            "key": self.key,
            "cycle": self.cycle,
            "recorded": self.created,
            "receivedAt": self.received_at.isoformat().replace("+00:00", "Z"),
        }
        if self.heartbeat is not None:
            answer["heartbeats"] = self.heartbeat
        return answer


class ReportChannel:
    """Tokens, recording and reading of cycle reports, on the database (PostgreSQL or SQLite).

    `wake(execution_id)` (the dispatcher's `advance(id, 0)`) is called after a new report of an execution
    that waits for its cycle's result was recorded and the execution made due: the engine reads it at once
    instead of at its next poll (`poll_interval_seconds`). Without `wake`, the next poll or tick reads it.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime],
        wake: Callable[[str], object] | None = None,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.wake = wake

    def issue(self, execution_id: str, key: str) -> str:
        """Mint a token for the package run of `key` on `execution_id`; only its digest is stored."""
        token = auth.new_token()
        with self.sessions.begin() as session:
            session.add(
                models.ReportToken(
                    token_hash=auth.token_digest(token), execution_id=execution_id, cycle_key=key,
                    created_at=self.clock(),
                )
            )
        return token

    def record(self, execution_id: str, authorization: str | None, raw: bytes,
               idempotency_key: str | None = None) -> Recorded:
        """Check and record one posted report, or keep one heartbeat (`state: running`, `idempotency_key`
        `<key>:heartbeat:<n>`: heartbeats.py), which is never the cycle's result. Raises ReportUnauthorized (401),
        NotFound (404), InvalidReport (400) or Conflict (409: the execution has ended, a different report of that
        cycle was recorded, or a heartbeat came after the cycle's report)."""
        token = bearer_token(authorization)
        if token is None:
            raise ReportUnauthorized("the report channel needs `Authorization: Bearer <patchaas.reportToken>`")
        done, woken = self._record(execution_id, token, raw, idempotency_key)
        if woken and self.wake is not None:
            try:
                self.wake(execution_id)
            except Exception as exc:  # recorded all the same: the next poll or tick reads it
                log.warning("report of %s recorded; waking the execution failed: %s", done.key, exc)
        return done

    def _record(self, execution_id: str, token: str, raw: bytes,
                idempotency_key: str | None = None) -> tuple[Recorded, bool]:
        with self.sessions.begin() as session:
            execution = session.execute(
                sa.select(models.Execution.id, models.Execution.state).where(models.Execution.id == execution_id)
            ).one_or_none()
            if execution is None:
                raise NotFound(f"execution {execution_id} not found")
            known = session.scalar(
                sa.select(models.ReportToken.id).where(
                    models.ReportToken.token_hash == auth.token_digest(token),
                    models.ReportToken.execution_id == execution_id,
                )
            )
            if known is None:
                raise ReportUnauthorized(f"the token is not a report token of execution {execution_id}")
            report = parse_post(raw)
            cycle = cycle_of(report.key, execution_id)
            if report.state is CycleState.RUNNING:
                return self._heartbeat(session, execution_id, execution.state, report, cycle, idempotency_key), False
            body = canonical(report)
            digest = body_digest(body)
            earlier = self._existing(session, execution_id, report.key, digest)
            if earlier is not None:
                return earlier, False  # a replay is answered even after the run ended: the package may retry late
            if execution.state in TERMINAL_STATES:
                raise Conflict(
                    f"execution {execution_id} has finished ({execution.state}): it accepts no more reports"
                )
            now = self.clock()
            values = dict(execution_id=execution_id, cycle_key=report.key, cycle=cycle, body=body,
                          body_digest=digest, received_at=now)
            inserted = session.execute(_insert_once(session, values)).first()
            if inserted is not None:
                woken = _make_due(session, execution_id, now)
                return Recorded(execution_id, report.key, cycle, now, created=True), woken
            # a concurrent post of this cycle won the insert (its transaction committed before ours went on)
            earlier = self._existing(session, execution_id, report.key, digest)
            if earlier is None:  # pragma: no cover - the row that blocked the insert is gone (execution deleted)
                raise Conflict(f"the report of {report.key} changed while it was being recorded; post it again")
            return earlier, False

    def _heartbeat(self, session: Session, execution_id: str, state: str, report: CycleReport, cycle: int,
                   idempotency_key: str | None) -> Recorded:
        sequence = heartbeats.sequence_of(idempotency_key, report.key)
        if sequence is None:
            raise InvalidReport(f"header Idempotency-Key: a heartbeat of {report.key} is sent as "
                                f"{report.key}:heartbeat:<n>, not {str(idempotency_key)[:120]!r}")
        if state in TERMINAL_STATES:
            raise Conflict(f"execution {execution_id} has finished ({state}): it accepts no more heartbeats")
        if heartbeats.final_recorded(session, execution_id, report.key):
            raise Conflict(f"the report of {report.key} was recorded: the cycle has finished, send no more heartbeats")
        now = self.clock()
        beats = heartbeats.record(session, execution_id, report, cycle, sequence, now)
        return Recorded(execution_id, report.key, cycle, now, created=True, heartbeat=beats)

    def heartbeats(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], HeartbeatReport]:
        """The last heartbeat of each (execution, cycle key) that has one."""
        with self.sessions() as session:
            return heartbeats.latest(session, pairs)

    def recorded_many(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], CycleReport]:
        """`recorded` of many (execution, cycle key) pairs: one statement."""
        if not pairs:
            return {}
        record = models.CycleReportRecord
        with self.sessions() as session:
            rows = session.execute(sa.select(record.execution_id, record.cycle_key, record.body).where(
                record.execution_id.in_({e for e, _ in pairs}), record.cycle_key.in_({k for _, k in pairs}))).all()
        wanted = set(pairs)
        return {(r.execution_id, r.cycle_key): CycleReport.model_validate(r.body) for r in rows
                if (r.execution_id, r.cycle_key) in wanted}

    def recorded(self, execution_id: str, key: str) -> CycleReport | None:
        """The report recorded for cycle `key` of `execution_id`, if the package posted one."""
        with self.sessions() as session:
            body = session.scalar(
                sa.select(models.CycleReportRecord.body).where(
                    models.CycleReportRecord.execution_id == execution_id,
                    models.CycleReportRecord.cycle_key == key,
                )
            )
        return None if body is None else CycleReport.model_validate(body)

    @staticmethod
    def _existing(session: Session, execution_id: str, key: str, digest: str) -> Recorded | None:
        row = session.execute(
            sa.select(models.CycleReportRecord).where(
                models.CycleReportRecord.execution_id == execution_id,
                models.CycleReportRecord.cycle_key == key,
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        if row.body_digest != digest:
            raise Conflict(
                f"a different report of {key} was recorded at {row.received_at.isoformat()}; "
                "a cycle has one report (post the same body again, or nothing)"
            )
        return Recorded(execution_id, key, row.cycle, row.received_at, created=False)


def _make_due(session: Session, execution_id: str, now: datetime) -> bool:
    """An execution waiting for a cycle's result becomes due now (only its timer moves: no version bump, so
    a step in flight saves as usual and its own next poll reads the report). True if it was moved."""
    table = models.Execution.__table__
    moved = session.execute(
        sa.update(table)
        .where(
            table.c.id == execution_id,
            table.c.ended_at.is_(None),
            table.c.state == State.AWAITING_RESULT.value,
            table.c.next_run_at > now,
        )
        .values(next_run_at=now)
    )
    return bool(moved.rowcount)


def _insert_once(session: Session, values: dict[str, Any]) -> Any:
    """INSERT … ON CONFLICT (execution_id, cycle_key) DO NOTHING RETURNING id, for PostgreSQL and SQLite."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = models.CycleReportRecord.__table__
    return (
        insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["execution_id", "cycle_key"])
        .returning(table.c.id)
    )


# --- the engine's view: a fleet that reads the channel first -------------------------------------


class ReportingFleet:
    """Wraps the fleet driver: offers the report channel to every package run, and answers a cycle's result
    from the recorded report before asking the fleet. The rest of `Fleet` passes through unchanged."""

    def __init__(self, inner: Fleet, channel: ReportChannel, base_url: str) -> None:
        self.inner = inner
        self.channel = channel
        self.base_url = base_url
        self.from_channel = 0  # finished cycle results answered from a recorded report (metrics, tests)
        self.from_fleet = 0  # … and by the fleet, no report having arrived
        self.concurrency = getattr(inner, "concurrency", None)  # the driver's calls in flight (engine/rounds.py)

    def status(self, server: str) -> ServerStatus:
        return self.inner.status(server)

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        self.inner.set_maintenance(server, on, key)

    def power_on(self, server: str, key: str) -> None:
        self.inner.power_on(server, key)

    def power_off(self, server: str, key: str) -> None:
        self.inner.power_off(server, key)

    def reboot(self, server: str, key: str) -> None:
        self.inner.reboot(server, key)

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        """Mint this run's report token (committed before the effect: a package never holds a token we do
        not know) and invoke the package with the channel's URL and token."""
        token = self.channel.issue(run.execution_id, key)
        offered = run.model_copy(
            update={"report_url": report_url(self.base_url, run.execution_id), "report_token": SecretStr(token)}
        )
        self.inner.invoke_package(server, key, offered)

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        """The recorded report of the cycle, else the fleet's answer; a cycle still running (or that the fleet
        does not know) whose package sent heartbeats is answered as its last heartbeat (HeartbeatReport)."""
        execution_id = execution_of(key)
        if execution_id is not None:
            report = self.channel.recorded(execution_id, key)
            if report is not None:
                self.from_channel += 1
                return report
        answer = self.inner.cycle_result(server, key)
        if answer is not None and answer.state is CycleState.FINISHED:
            self.from_fleet += 1
            return answer
        if execution_id is None:
            return answer
        beat = self.channel.heartbeats([(execution_id, key)]).get((execution_id, key))
        return _alive(answer, beat)

    def cycle_results(self, items: Sequence[tuple[str, str]]) -> dict[tuple[str, str], CycleReport | None]:
        """`cycle_result` of many (server, key) pairs: the channel's reports and heartbeats in two statements,
        the fleet's bulk read (when it has one) for the rest."""
        pairs = {(server, key): execution_of(key) for server, key in items}
        known = [(e, key) for (_, key), e in pairs.items() if e is not None]
        recorded = self.channel.recorded_many(known)
        answers: dict[tuple[str, str], CycleReport | None] = {}
        rest = []
        for (server, key), execution_id in pairs.items():
            if execution_id is not None and (execution_id, key) in recorded:
                self.from_channel += 1
                answers[(server, key)] = recorded[(execution_id, key)]
            else:
                rest.append((server, key))
        bulk = getattr(self.inner, "cycle_results", None)
        inner = bulk(rest) if bulk is not None and rest else {item: self.inner.cycle_result(*item) for item in rest}
        beats = self.channel.heartbeats(known)
        for server, key in rest:
            if (server, key) not in inner:
                continue  # unknown to the fleet: its own cycle_result says why
            answer = inner[(server, key)]
            if answer is not None and answer.state is CycleState.FINISHED:
                self.from_fleet += 1
                answers[(server, key)] = answer
                continue
            execution_id = pairs[(server, key)]
            answers[(server, key)] = _alive(answer, beats.get((execution_id, key)) if execution_id else None)
        return answers

    def __getattr__(self, name: str) -> Any:
        """Anything else the driver offers (a simulated fleet's `effects`, a driver's `close`)."""
        return getattr(self.inner, name)


def _alive(answer: CycleReport | None, beat: HeartbeatReport | None) -> CycleReport | None:
    """A running (or unknown) cycle as the engine reads it: its last heartbeat when there is one."""
    if beat is None:
        return answer
    if isinstance(answer, HeartbeatReport) and answer.heard_at > beat.heard_at:
        return answer  # the fleet heard a later one itself (a simulated fleet)
    return beat
