"""Running health checks (docs/HOOKS.md "Health checks"): one attempt of each check due, intent before effect.

- **Intent**: a `health_checks` row per (execution, phase, cycle, check, attempt), inserted `running` and committed
  before the attempt (an existing row is left alone: a repeat after a crash).
- **Effect**: the attempts, at once (a thread each): HTTP(S) and TCP from the orchestrator (`ports.HealthProber`),
  service and command on the server through the driver (`run_command`, idempotent per key: the attempt's key
  `<execution>:health:<phase>:<cycle>:<check>:<attempt>`; a simulated fleet may answer `check_service` itself).
- **Result**: recorded with the transition (`write`, called by `executions.save` and the batch rounds), in the
  save's transaction: a save that loses its compare-and-set records nothing, and the step runs again (a check is
  read-only: running an attempt again is harmless); one row per attempt whatever happens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import ports
from orchestrator.domain import machine, packages
from orchestrator.persistence import health_models
from schemas.health import MAX_OUTPUT, CheckKind, HealthCheck, plan_of, service_command

T = TypeVar("T")
TABLE = health_models.HealthCheckResult.__table__


class Stepper(Protocol):
    """What running checks needs of the engine (engine/steps.py: Stepper)."""

    clock: Callable[[], datetime]
    hooks: ports.Hooks
    health_prober: ports.HealthProber | None

    def transaction(self, work: Callable[[Session], T]) -> T: ...


def run(engine: Stepper, view: machine.ExecutionView, command: machine.RunHealthChecks,
        fleet: Any) -> machine.HealthChecked:
    """One attempt of every check `command` names: intents committed first, then the attempts."""
    plan = plan_of(dict(view.parameters))
    checks = [(plan.check(name), attempt) for name, attempt in command.due]
    now = engine.clock()
    rows = [{"execution_id": view.id, "phase": command.phase, "cycle": command.cycle, "check_name": c.name,
             "kind": c.kind.value, "target": c.target[:300], "attempt": attempt, "status": "running",
             "started_at": now} for c, attempt in checks]
    if rows:
        engine.transaction(lambda session: _insert_missing(session, rows))
    engine.hooks.reached("after_intent", view.id, machine.State.CHECKING_HEALTH.value)
    family = _family(view.package_id)

    def attempt(item: tuple[HealthCheck, int]) -> machine.CheckResult:
        check, number = item
        started = engine.clock()
        ok, output = _attempt(engine, fleet, view.server, family, check, f"{command.key}:{check.name}:{number}")
        return machine.CheckResult(check.name, number, ok, output[:MAX_OUTPUT], started, engine.clock())

    if len(checks) > 1:
        with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="health") as pool:
            results = list(pool.map(attempt, checks))
    else:
        results = [attempt(item) for item in checks]
    engine.hooks.reached("after_effect", view.id, machine.State.CHECKING_HEALTH.value)
    return machine.HealthChecked(tuple(results))


def _attempt(engine: Stepper, fleet: Any, server: str, family: str, check: HealthCheck, key: str) -> tuple[bool, str]:
    """(passed, output) of one attempt; every failure (refused, timeout, unreachable) is a failed attempt."""
    timeout = check.deadline_seconds
    try:
        match check.kind:
            case CheckKind.HTTP:
                return _http(engine.health_prober, check)
            case CheckKind.TCP:
                if engine.health_prober is None:
                    return False, "no health prober is configured"
                assert check.host is not None and check.port is not None
                engine.health_prober.tcp(check.host, check.port, timeout)
                return True, f"tcp {check.host}:{check.port} open"
        own = getattr(fleet, "check_service", None) if check.kind is CheckKind.SERVICE else None
        if own is not None:
            result = own(server, key, check.service, timeout)
        else:
            run_command = getattr(fleet, "run_command", None)
            if run_command is None:
                return False, "this fleet driver cannot run commands on servers"
            result = run_command(server, key, on_server_command(check, family), timeout)
    except Exception as error:  # noqa: BLE001 - a check that cannot be made has failed (refused, timeout, DNS…)
        return False, f"{type(error).__name__}: {error}".strip()[:MAX_OUTPUT]
    if result.timed_out:
        return False, f"timed out after {timeout:g}s; {result.output}"
    if result.ok:
        return True, result.output or "exit code 0"
    return False, f"exit code {result.exit_code}: {result.output}".strip()


def _http(prober: ports.HealthProber | None, check: HealthCheck) -> tuple[bool, str]:
    if prober is None:
        return False, "no health prober is configured"
    assert check.url is not None
    answer = prober.http(check.url, check.deadline_seconds)
    head = " ".join(answer.body.split())[:300]
    if answer.status != check.expected_status:
        return False, f"HTTP {answer.status}, expected {check.expected_status}: {head}".strip()
    if check.body_regex is not None and re.search(check.body_regex, answer.body) is None:
        return False, f"HTTP {answer.status}, but the body does not match /{check.body_regex}/: {head}".strip()
    return True, f"HTTP {answer.status}"


def on_server_command(check: HealthCheck, family: str) -> str:
    """What runs on the server for an on-server check: PowerShell on Windows, sh on Linux."""
    if check.kind is CheckKind.COMMAND:
        assert check.command is not None
        return check.command
    return service_command(check.service or "", family)


def _family(package_id: str) -> str:
    try:
        return packages.get(package_id).family
    except packages.UnknownPackage:
        return "windows"


def _insert_missing(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the attempts' rows, leaving those that exist (a repeat after a crash) as they are."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    session.execute(dialect_insert(TABLE).values(list(rows)).on_conflict_do_nothing(
        index_elements=["execution_id", "phase", "cycle", "check_name", "attempt"]))


def write(session: Session, execution_id: str, records: Sequence[machine.HealthRecord]) -> None:
    """Complete the attempts' rows with their results, in the transition's transaction."""
    for record in records:
        done = session.execute(
            sa.update(TABLE)
            .where(TABLE.c.execution_id == execution_id, TABLE.c.phase == record.phase,
                   TABLE.c.cycle == record.cycle, TABLE.c.check_name == record.name,
                   TABLE.c.attempt == record.attempt, TABLE.c.status == "running")
            .values(status=record.status, output=record.output, ended_at=record.ended_at))
        if done.rowcount == 0:  # no intent row (written by a step from before it existed): the result alone
            _insert_missing(session, [{
                "execution_id": execution_id, "phase": record.phase, "cycle": record.cycle, "check_name": record.name,
                "kind": record.kind, "target": record.target[:300], "attempt": record.attempt,
                "status": record.status, "output": record.output, "started_at": record.started_at,
                "ended_at": record.ended_at}])


def write_many(session: Session, items: Sequence[tuple[str, Sequence[machine.HealthRecord]]]) -> None:
    """`write` for the saved steps of a batch round."""
    for execution_id, records in items:
        write(session, execution_id, records)


def rows_of(session: Session, execution_id: str) -> list[Any]:
    """Every attempt of an execution's checks, oldest first (the detail answer)."""
    return list(session.execute(sa.select(TABLE).where(TABLE.c.execution_id == execution_id)
                                .order_by(TABLE.c.id)).all())
