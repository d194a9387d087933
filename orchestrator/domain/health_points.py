"""Health checks in the state machine (issue 14 part 2, docs/HOOKS.md "Health checks"): where a run crosses a
check phase, the detour through `checking_health`, the retries, and what a failure does.

Pure. `machine.decide` passes every decision through `detour` (before the hooks' detour, so a phase's checks run
before the hooks of the same point). The phases (schemas/health.py Phase), crossed by a transition old → new:

- baseline: into entering_maintenance from requested / awaiting_power: before maintenance goes on. A check that
  fails here was already broken: it is recorded, and its failure after patching is only a warning;
- after_reboot: settling → the next cycle, for the checks with `afterEveryReboot` (the cycle starts after them);
- final: out of the update cycles into exiting_maintenance with the run completed (after the last cycle, and after
  the final reboot of reboot policy always), for every check.

In `checking_health` the engine runs one attempt of every check still due per step (`RunHealthChecks`) and
answers `HealthChecked`; a failed attempt with retries left is tried again `retryDelaySeconds` later. When every
check passed or ran out of attempts, the run goes on — or, for a check failed after patching under
`onHealthFailure: fail`, ends failed at once with maintenance mode left on (HEALTH_HOLD; cleanup is skipped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from orchestrator.domain.commands import RunHealthChecks
from orchestrator.domain.events import Decision, HealthChecked, HealthRecord
from orchestrator.domain.execution import CLEANUP, ExecutionView, Outcome, Policy, State
from orchestrator.domain.transitions import finish, go, next_cycle
from schemas.health import OnHealthFailure, Phase, plan_of

HEALTH_HOLD = "maintenance mode stays on (onHealthFailure: fail)"
WARNING = "warning: "  # a completed run's failure_reason that is only a warning (onHealthFailure: continue)
PHASE_WORDS = {Phase.BASELINE: "before maintenance (baseline)", Phase.AFTER_REBOOT: "after the reboot of cycle {c}",
               Phase.FINAL: "after the last cycle ({c})"}


def crossed(old: ExecutionView, decision: Decision) -> tuple[Phase, int] | None:
    """The check phase (and the cycle it is about) that the transition from `old` to `decision.view` crosses."""
    new = decision.view
    if old.state is State.CHECKING_HEALTH or new.terminal:
        return None
    if new.state is State.ENTERING_MAINTENANCE and old.state in (State.REQUESTED, State.AWAITING_POWER):
        return Phase.BASELINE, 0
    if old.state is State.SETTLING and new.state is State.INVOKING_PACKAGE:
        return Phase.AFTER_REBOOT, old.cycle
    if (new.state is State.EXITING_MAINTENANCE and old.state not in CLEANUP and new.outcome is Outcome.COMPLETED
            and not new.selection.scan_only):
        return Phase.FINAL, new.cycle
    return None


def detour(old: ExecutionView, decision: Decision, now: datetime) -> Decision:
    """`decision`, or — when it crosses a phase the run has checks for — the same facts with the run sent to
    `checking_health` first."""
    point = crossed(old, decision)
    if point is None:
        return decision
    phase, cycle = point
    checks = plan_of(dict(old.parameters)).at(phase)
    if not checks:
        return decision
    new = decision.view
    kept = dict(old.health or {})
    stage = {"phase": phase.value, "cycle": cycle, "resume": new.state.value, "attempts": {}, "passed": [],
             "failed": {}, "baseline_failed": list(kept.get("baseline_failed", [])),
             "warnings": list(kept.get("warnings", []))}
    staged = dataclasses.replace(new, state=State.CHECKING_HEALTH, deadline_at=None, health=stage)
    if phase is Phase.AFTER_REBOOT:  # the next cycle starts after the checks (its pre_cycle hooks then)
        staged = dataclasses.replace(staged, cycle=old.cycle)
    names = ", ".join(c.name for c in checks)
    return dataclasses.replace(decision, view=staged, next_run_at=now, emails=(),
                               note=f"{decision.note}; health checks {_words(phase, cycle)} first: {names}")


def command(view: ExecutionView) -> RunHealthChecks:
    """One attempt of every check of the phase that has neither passed nor run out of attempts."""
    stage = view.health or {}
    phase, cycle = Phase(stage.get("phase", Phase.FINAL.value)), int(stage.get("cycle", view.cycle))
    attempts: Mapping[str, int] = stage.get("attempts", {})
    done = set(stage.get("passed", [])) | set(stage.get("failed", {}))
    due = tuple((c.name, attempts.get(c.name, 0) + 1) for c in plan_of(dict(view.parameters)).at(phase)
                if c.name not in done)
    return RunHealthChecks(phase.value, cycle, f"{view.id}:health:{phase.value}:{cycle}", due)


def checked(view: ExecutionView, event: HealthChecked, now: datetime, policy: Policy) -> Decision:
    """Record the attempts; retry what may still pass; when the phase is done, go on or stop by the policy."""
    plan = plan_of(dict(view.parameters))
    stage: dict[str, Any] = dict(view.health or {})
    phase, cycle = Phase(stage["phase"]), int(stage["cycle"])
    attempts, passed, failed = dict(stage["attempts"]), list(stage["passed"]), dict(stage["failed"])
    records = []
    for result in event.results:
        check = plan.check(result.name)
        attempts[result.name] = result.attempt
        if result.ok:
            status = "ok"
            passed.append(result.name)
        elif result.attempt >= check.attempts:
            status = "failed"
            failed[result.name] = result.output
        else:
            status = "retrying"
        records.append(HealthRecord(phase.value, cycle, check.name, check.kind.value, check.target, result.attempt,
                                    status, result.output, result.started_at, result.ended_at))
    stage.update(attempts=attempts, passed=passed, failed=failed)
    nxt = dataclasses.replace(view, health=stage)
    pending = [c for c in plan.at(phase) if c.name not in passed and c.name not in failed]
    if pending:
        delay = min(c.retry_delay_seconds for c in pending)
        retrying = ", ".join(f"{c.name} (attempt {attempts.get(c.name, 0) + 1} of {c.attempts})" for c in pending)
        note = f"health checks {_words(phase, cycle)}: retrying {retrying} in {delay:g}s"
        return Decision(nxt, now + timedelta(seconds=delay), note, health=tuple(records), audit=True)
    return dataclasses.replace(_phase_done(nxt, phase, cycle, failed, plan.on_failure, now, policy),
                               health=tuple(records))


def _phase_done(view: ExecutionView, phase: Phase, cycle: int, failed: Mapping[str, str],
                on_failure: OnHealthFailure, now: datetime, policy: Policy) -> Decision:
    stage = dict(view.health or {})
    words = _words(phase, cycle)
    if phase is Phase.BASELINE:
        stage["baseline_failed"] = sorted(failed)
        if failed:
            stage["warnings"] = [*stage["warnings"], f"{_failures(failed)} failed {words}: already broken before "
                                                     "patching (not blamed on it)"]
        note = f"health checks {words}: " + (f"{', '.join(sorted(failed))} already failing" if failed else "all passed")
        return _resume(view, stage, now, policy, note)
    before = set(stage.get("baseline_failed", []))
    broken = {n: out for n, out in failed.items() if n not in before}
    old = {n: out for n, out in failed.items() if n in before}
    if old:
        stage["warnings"] = [*stage["warnings"], f"{_failures(old)} failed {words}, as at the baseline"]
    if broken and on_failure is OnHealthFailure.FAIL:
        reason = f"health check {_failures(broken)} failed {words}; {HEALTH_HOLD}"
        ended = dataclasses.replace(view, health=_cleared(stage), outcome=Outcome.FAILED, failure_reason=reason)
        return finish(ended, now, reason)
    if broken:
        stage["warnings"] = [*stage["warnings"], f"health check {_failures(broken)} failed {words} "
                                                 "(onHealthFailure: continue)"]
    note = f"health checks {words}: " + (f"{', '.join(sorted(failed))} failed (warning)" if failed else "all passed")
    return _resume(view, stage, now, policy, note)


def _resume(view: ExecutionView, stage: dict[str, Any], now: datetime, policy: Policy, note: str) -> Decision:
    target = State(stage["resume"])
    nxt = dataclasses.replace(view, health=_cleared(stage))
    if target is State.INVOKING_PACKAGE:  # after a reboot: the next cycle, if max cycles and the window still allow
        return next_cycle(nxt, now, policy, note)
    if target is State.EXITING_MAINTENANCE and nxt.outcome is Outcome.COMPLETED and stage["warnings"]:
        nxt = dataclasses.replace(nxt, failure_reason=WARNING + "; ".join(stage["warnings"]))
    return go(nxt, target, now, note)


def _cleared(stage: Mapping[str, Any]) -> dict[str, Any]:
    """What outlives a phase: the baseline's failures and the warnings."""
    return {"baseline_failed": list(stage.get("baseline_failed", [])), "warnings": list(stage.get("warnings", []))}


def _failures(failed: Mapping[str, str]) -> str:
    return "; ".join(f"{name} ({' '.join(out.split())[:300] or 'no output'})" for name, out in sorted(failed.items()))


def _words(phase: Phase, cycle: int) -> str:
    return PHASE_WORDS[phase].format(c=cycle)
