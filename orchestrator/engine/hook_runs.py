"""Running the hooks of a point (docs/HOOKS.md): the run's hook plan, and one hook per step with its intent
recorded before the call and its outcome after, so a crash never runs a hook twice for one point.

- **The plan** is fixed at the run's first step (`with_plans`, in the claim's transaction): the account's hooks as
  they are then, or those the `hooks` package parameter names (a name the account lacks becomes a hook that fails
  at pre_maintenance, so the run stops before any change). Later changes to the hooks do not touch running runs.
- **A hook run** is a `hook_runs` row, unique per (execution, point, cycle, hook): inserted and committed before
  the call (the intent), completed after it (the outcome). A retry finds the row: finished, it is not called again;
  unfinished (the worker died around the call), a command hook is asked again under the same idempotency key (the
  driver's far side answers the first run's result instead of running it again), an HTTP hook is not re-sent:
  its run is recorded `unknown`, a failure (HTTP is at most once; the receiver got the same Idempotency-Key).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator import ports
from orchestrator.domain import hook_points, machine
from orchestrator.domain.commands import RunHooks
from orchestrator.domain.events import HookRan
from orchestrator.engine import event_log, hook_calls
from orchestrator.persistence import hook_models, models
from orchestrator.ports import FleetError, FleetRefused
from schemas import hooks as hook_schema


class Stepper(Protocol):
    """What running a hook needs of the engine (engine/steps.py: Stepper)."""

    clock: Callable[[], datetime]
    hooks: ports.Hooks
    hook_caller: ports.HttpCaller | None
    hook_keys: str | None

    def transaction(self, work: Callable[[Session], T]) -> T: ...

log = logging.getLogger(__name__)
T = TypeVar("T")
RUNS = hook_models.HookRun.__table__
MISSING = "missing"  # the kind of a plan entry for a hook the run's parameters name but the account lacks
INTERRUPTED = ("the call was interrupted (the worker stopped between recording the intent and the answer); an HTTP "
               "hook is not sent again: it may or may not have reached the receiver (Idempotency-Key {key})")


# --- the plan ----------------------------------------------------------------------------------


def plan_of(rows: Sequence[hook_models.Hook], parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The hooks a run uses: `rows` (the account's hooks), narrowed by its `hooks` parameter."""
    by_name = {r.name: {**r.definition, "sealed": r.secret_sealed} for r in rows}
    try:
        wanted = hook_schema.parse_names(parameters.get("hooks"))
    except ValueError:  # validated at request time; a run queued before this check existed uses every hook
        wanted = None
    if wanted is None:
        return by_name
    return {name: by_name.get(name) or {"kind": MISSING, "points": [hook_schema.HookPoint.PRE_MAINTENANCE.value]}
            for name in wanted}


def with_plans(session: Session, views: Sequence[machine.ExecutionView]) -> list[machine.ExecutionView]:
    """`views` with the hook plan of each run at its first step fixed (written to its row), one query per account.
    A retried first step (still `requested`) looks again; once the run has left `requested`, the plan is fixed."""
    first = [v for v in views if v.hook_plan is None and v.state is machine.State.REQUESTED]
    if not first:
        return list(views)
    accounts = sorted({v.account for v in first})
    rows = session.scalars(sa.select(hook_models.Hook).where(hook_models.Hook.account_alias.in_(accounts))).all()
    plans: dict[str, dict[str, Any]] = {}
    table = models.Execution.__table__
    for v in first:
        plans[v.id] = plan_of([r for r in rows if r.account_alias == v.account], dict(v.parameters))
        if plans[v.id]:  # no hooks: nothing to write (a row left NULL past `requested` has none)
            session.execute(sa.update(table).where(table.c.id == v.id).values(hook_plan=plans[v.id]))
    return [dataclasses.replace(v, hook_plan=plans[v.id]) if v.id in plans else v for v in views]


# --- one hook per step -----------------------------------------------------------------------------


def run_next(engine: Stepper, view: machine.ExecutionView, command: RunHooks, fleet: Any) -> HookRan:
    """Run the point's first hook without an outcome (or answer the one that already stopped the run)."""
    plan = view.hook_plan or {}
    names = hook_points.names_at(plan, command.point)
    if not names:
        return HookRan("", ok=True, stops=False, detail="no hooks", remaining=0)
    runs = engine.transaction(lambda s: {r.hook_name: r for r in _runs(s, view.id, command.point, command.cycle)})
    for index, name in enumerate(names):
        row = runs.get(name)
        if row is not None and row.ended_at is not None:
            ran = _ran(row, len(names) - index - 1)
            if not ran.ok and (ran.stops or command.point in hook_schema.PRE_POINTS):
                return ran
            if index < len(names) - 1:
                continue
            return ran
        return _run(engine, view, command, name, plan[name], row, len(names) - index - 1, fleet)
    raise AssertionError("unreachable")  # pragma: no cover


def _runs(session: Session, execution_id: str, point: str, cycle: int) -> list[Any]:
    return list(session.execute(sa.select(RUNS).where(RUNS.c.execution_id == execution_id, RUNS.c.point == point,
                                                      RUNS.c.cycle == cycle)).all())


def _ran(row: Any, remaining: int) -> HookRan:
    """The event of a hook run recorded before (a step retried after the outcome was written)."""
    return HookRan(row.hook_name, ok=row.status == "ok", stops=row.on_failure == hook_schema.OnFailure.FAIL.value,
                   detail=summary(row.exit_code, row.output, row.kind), remaining=remaining)


def summary(code: int | None, output: str | None, kind: str) -> str:
    """A hook run's outcome in one line (a failed run's reason)."""
    head = " ".join((output or "").split())[:300]
    what = ("" if code is None else f"HTTP {code}" if kind == "http" else f"exit code {code}")
    return ": ".join(p for p in (what, head) if p) or "no output"


def _run(engine: Stepper, view: machine.ExecutionView, command: RunHooks, name: str,
         hook: dict[str, Any], row: Any, remaining: int, fleet: Any) -> HookRan:
    key = f"{command.key}:{name}"
    kind = str(hook.get("kind"))
    on_failure = str(hook.get("onFailure") or hook_schema.OnFailure.FAIL.value)
    resumed = row is not None
    if not resumed:
        now = engine.clock()
        values = {"execution_id": view.id, "point": command.point, "cycle": command.cycle, "hook_name": name,
                  "kind": kind, "key": key, "on_failure": on_failure, "status": "running", "attempts": 1,
                  "started_at": now}
        try:
            engine.transaction(lambda s: s.execute(sa.insert(RUNS).values(**values)))
        except IntegrityError:  # recorded meanwhile (a repeated transaction, another worker): look again later
            raise FleetError(f"hook {name} of {command.point} was recorded meanwhile; retrying the step") from None
        engine.hooks.reached("after_intent", view.id, machine.State.RUNNING_HOOKS.value)
    else:
        engine.transaction(lambda s: s.execute(sa.update(RUNS).where(RUNS.c.id == row.id)
                                               .values(attempts=RUNS.c.attempts + 1)))
    status, code, output = _call(engine, view, command, name, hook, key, resumed, fleet)
    engine.hooks.reached("after_effect", view.id, machine.State.RUNNING_HOOKS.value)
    output = output[:hook_schema.MAX_OUTPUT]

    def outcome(session: Session) -> None:
        session.execute(sa.update(RUNS).where(RUNS.c.execution_id == view.id, RUNS.c.point == command.point,
                                              RUNS.c.cycle == command.cycle, RUNS.c.hook_name == name,
                                              RUNS.c.ended_at.is_(None))
                        .values(status=status, exit_code=code, output=output, ended_at=engine.clock()))
        if status != "ok":
            event_log.record(session, view.account, "hook.failed", engine.clock(), execution_id=view.id, payload={
                "server": view.server, "hook": name, "point": command.point, "cycle": command.cycle, "kind": kind,
                "status": status, "code": code, "output": output[:500], "onFailure": on_failure})

    engine.transaction(outcome)
    ok = status == "ok"
    if not ok:
        log.warning("execution %s: %s hook %s %s: %s", view.id, command.point, name, status,
                    summary(code, output, kind))
    return HookRan(name, ok=ok, stops=on_failure == hook_schema.OnFailure.FAIL.value,
                   detail=summary(code, output, kind), remaining=remaining)


def _call(engine: Stepper, view: machine.ExecutionView, command: RunHooks, name: str, hook: dict[str, Any],
          key: str, resumed: bool, fleet: Any) -> tuple[str, int | None, str]:
    """(status, exit code or HTTP status, output) of one call. A transient driver failure (FleetError) propagates:
    the step is retried and the command asked again under the same key."""
    kind = hook.get("kind")
    if kind == MISSING:
        return "failed", None, f"the run's parameters name hook {name}, which account {view.account} does not have"
    timeout = float(hook.get("timeoutSeconds") or 60)
    if kind == hook_schema.HookKind.COMMAND.value:
        run = getattr(fleet, "run_command", None)
        if run is None:
            return "failed", None, "this fleet driver cannot run commands on servers"
        try:
            result: hook_schema.CommandResult = run(view.server, key, str(hook["command"]), timeout)
        except FleetRefused as refused:
            return "failed", None, str(refused)
        if result.timed_out:
            return "failed", result.exit_code, f"timed out after {timeout:g}s; {result.output}"
        return ("ok" if result.ok else "failed"), result.exit_code, result.output
    if resumed:
        return "unknown", None, INTERRUPTED.format(key=key)
    caller = engine.hook_caller
    if caller is None:
        return "failed", None, "no HTTP caller is configured for hooks"
    try:
        body = hook_calls.render(hook["body"], hook_calls.context(view, name, command.point, command.cycle, key)) \
            if hook.get("body") else None
        sent = hook_calls.headers(hook, hook.get("sealed"), engine.hook_keys, key, body is not None)
    except hook_calls.HookCallError as exc:
        return "failed", None, str(exc)
    try:
        answer = caller.request(str(hook.get("method") or "POST"), str(hook["url"]), sent, body, timeout)
    except Exception as exc:  # refused, timeout, TLS, a blocked address: at most once, not retried
        return "failed", None, f"{type(exc).__name__}: {exc}"
    return ("ok" if 200 <= answer.status < 300 else "failed"), answer.status, answer.body
