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
- **Reading.** `ReportingFleet.cycle_result` answers the recorded report of a cycle when there is one and
  asks the fleet (packageRuns / queue status) otherwise, so the engine (`orchestrator/engine/steps.py`, unchanged)
  reads the channel first and falls back to polling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from pydantic import SecretStr, ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain.machine import TERMINAL, State
from orchestrator.persistence import models
from orchestrator.ports import Fleet
from orchestrator.services import auth
from orchestrator.services.errors import Conflict, NotFound, ServiceError
from schemas.fleet import WIRE_CONTEXT, CycleReport, CycleState, PackageRun, ServerStatus

log = logging.getLogger(__name__)

REPORTS_PATH = "/v2/patchaas/executions/{execution_id}/reports"
KEY_RE = re.compile(r"^(?P<execution>[A-Z]{2}[0-9]-[0-9]{6}):package:(?P<cycle>[0-9]{1,4})$")
MAX_REPORT_BYTES = 512 * 1024  # a report of 500 updates with long titles is ~150 KB
TERMINAL_STATES: frozenset[str] = frozenset(state.value for state in TERMINAL)


class InvalidReport(ServiceError):
    """The body is not a valid cycle report (400, with the rule it broke)."""

    status = 400


class ReportUnauthorized(auth.Unauthorized):
    """No report token, or one that is not a token of this execution (401)."""


# --- pure rules (unit-tested without I/O) ------------------------------------------------------


def report_url(base_url: str, execution_id: str) -> str:
    """Where the package of `execution_id` posts its reports: the API's external base URL + the path."""
    return base_url.rstrip("/") + REPORTS_PATH.format(execution_id=quote(execution_id, safe=""))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when absent or of another scheme."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        return None
    return token


def cycle_of(key: str, execution_id: str) -> int:
    """The cycle number of a report key, which must be a cycle of `execution_id` (`VA1-132457:package:2`)."""
    match = KEY_RE.match(key)
    if match is None or match["execution"] != execution_id or int(match["cycle"]) < 1:
        raise InvalidReport(
            f"body field key: {key[:120]!r} is not a cycle of execution {execution_id} "
            f"(expected {execution_id}:package:<cycle>, the patchaas.idempotencyKey parameter)"
        )
    return int(match["cycle"])


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one sentence: where, and the rule that was broken (as the REST API words them)."""
    parts: list[str] = []
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"body field {where}: {err.get('msg', 'is not valid')}" if where
                     else f"the body: {err.get('msg', 'is not valid')} (one cycle report)")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts) or "the report is not valid"


def parse_report(raw: bytes) -> CycleReport:
    """A posted body as a final CycleReport, validated strictly (what the JSON Schema allows, no coercion)."""
    if not raw.strip():
        raise InvalidReport("the request needs a JSON body: one cycle report (schemas/cycle_report.schema.json)")
    if len(raw) > MAX_REPORT_BYTES:
        raise InvalidReport(f"a cycle report may not exceed {MAX_REPORT_BYTES} bytes")
    try:
        report = CycleReport.model_validate_json(raw, strict=True, context=WIRE_CONTEXT)
    except ValidationError as exc:
        raise InvalidReport(describe(exc.errors(include_url=False))) from None
    if report.state is not CycleState.FINISHED:
        raise InvalidReport(
            f"body field state: a report is posted when the cycle has finished ('finished'), not {report.state.value!r}"
        )
    return report


def canonical(report: CycleReport) -> dict[str, Any]:
    """The report as it is stored and compared: the model's JSON (HRESULTs unsigned, times normalised)."""
    return report.model_dump(mode="json")


def body_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 of a canonical body: two posts of the same report have the same digest."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the channel -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What a post did: `created` False means the same report was recorded before (an idempotent replay)."""

    execution_id: str
    key: str
    cycle: int
    received_at: datetime
    created: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "executionId": self.execution_id,
            "key": self.key,
            "cycle": self.cycle,
            "recorded": self.created,
            "receivedAt": self.received_at.isoformat().replace("+00:00", "Z"),
        }


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

    def record(self, execution_id: str, authorization: str | None, raw: bytes) -> Recorded:
        """Check and record one posted report. Raises ReportUnauthorized (401), NotFound (404), InvalidReport
        (400) or Conflict (409: the execution has ended, or a different report of that cycle was recorded)."""
        token = bearer_token(authorization)
        if token is None:
            raise ReportUnauthorized("the report channel needs `Authorization: Bearer <patchaas.reportToken>`")
        done, woken = self._record(execution_id, token, raw)
        if woken and self.wake is not None:
            try:
                self.wake(execution_id)
            except Exception as exc:  # recorded all the same: the next poll or tick reads it
                log.warning("report of %s recorded; waking the execution failed: %s", done.key, exc)
        return done

    def _record(self, execution_id: str, token: str, raw: bytes) -> tuple[Recorded, bool]:
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
            report = parse_report(raw)
            cycle = cycle_of(report.key, execution_id)
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


def execution_of(key: str) -> str | None:
    """The execution id a package-run key belongs to (`VA1-132457:package:2` → `VA1-132457`)."""
    match = KEY_RE.match(key)
    return match["execution"] if match else None


class ReportingFleet:
    """Wraps the fleet driver: offers the report channel to every package run, and answers a cycle's result
    from the recorded report before asking the fleet. The rest of `Fleet` passes through unchanged."""

    def __init__(self, inner: Fleet, channel: ReportChannel, base_url: str) -> None:
        self.inner = inner
        self.channel = channel
        self.base_url = base_url
        self.from_channel = 0  # finished cycle results answered from a recorded report (metrics, tests)
        self.from_fleet = 0  # … and by the fleet, no report having arrived

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

    def __getattr__(self, name: str) -> Any:
        """Anything else the driver offers (a simulated fleet's `effects`, a driver's `close`)."""
        return getattr(self.inner, name)
