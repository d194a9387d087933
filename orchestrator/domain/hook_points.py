"""Pre/post hooks in the state machine (issue 14 part 3, docs/HOOKS.md): where a run crosses a hook point, the
detour through `running_hooks` that runs the point's hooks one step each, and where the run goes afterwards.

Pure. `machine.decide` passes every decision through `detour`: a transition that crosses a point for which the
run's hook plan (`ExecutionView.hook_plan`, fixed at its first step) has hooks goes to `running_hooks` instead,
remembering the state it was going to (`hook_resume`). In `running_hooks` the engine runs one hook per step
(`RunHooks`) and answers `HookRan`; `decide` here either stays (more hooks of the point), resumes, or stops the
run: a failed pre_* hook always, a failed post_* hook when its `onFailure` is `fail`.

The points, crossed by a transition from `old` to `new`:
- pre_maintenance: into entering_maintenance (nothing on the server has changed yet);
- pre_cycle: into invoking_package for a new cycle;
- post_cycle: out of awaiting_result with the cycle's report recorded, unless the run is failing;
- post_run: out of cleanup into the end (every outcome), unless maintenance mode could not be turned off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from orchestrator.domain import event_log
from orchestrator.domain.events import Abandoned, Decision, Event, HookRan, TransitionError
from orchestrator.domain.execution import CLEANUP, ExecutionView, Outcome, State
from orchestrator.domain.transitions import abandon, finish, go
from schemas.hooks import PRE_POINTS, HookPoint


def names_at(plan: Mapping[str, Mapping[str, Any]] | None, point: str) -> tuple[str, ...]:
    """The hooks of `plan` that run at `point`, in the order they run (by name)."""
    return tuple(sorted(name for name, hook in (plan or {}).items() if point in (hook.get("points") or ())))


def crossed(old: ExecutionView, decision: Decision) -> tuple[HookPoint, int] | None:
    """The hook point (and the cycle it is about) that the transition from `old` to `decision.view` crosses."""
    new = decision.view
    if new.terminal:
        cleaned = old.state in CLEANUP and not event_log.left_in_maintenance(old, new)
        return (HookPoint.POST_RUN, old.cycle) if cleaned else None
    if (old.state is State.AWAITING_RESULT and decision.initiation is not None
            and new.outcome in (None, Outcome.COMPLETED)):
        return HookPoint.POST_CYCLE, decision.initiation.cycle
    if new.state is State.INVOKING_PACKAGE and new.cycle != old.cycle:
        return HookPoint.PRE_CYCLE, new.cycle
    if new.state is State.ENTERING_MAINTENANCE and old.state is not State.ENTERING_MAINTENANCE:
        return HookPoint.PRE_MAINTENANCE, 0
    return None


def detour(old: ExecutionView, decision: Decision, now: datetime) -> Decision:
    """`decision`, or — when it crosses a point the run has hooks for — the same facts with the run sent to
    `running_hooks` first (the end email waits for the real end)."""
    point = crossed(old, decision)
    if point is None or not names_at(old.hook_plan, point[0]):
        return decision
    return _enter(decision, point[0], point[1], now)


def _enter(decision: Decision, point: HookPoint, cycle: int, now: datetime) -> Decision:
    new = decision.view
    staged = dataclasses.replace(new, state=State.RUNNING_HOOKS, deadline_at=None, hook_point=point.value,
                                 hook_cycle=cycle, hook_resume=new.state)
    names = ", ".join(names_at(new.hook_plan, point))
    due = decision.next_run_at if decision.next_run_at is not None else now
    return dataclasses.replace(decision, view=staged, next_run_at=due, emails=(),
                               note=f"{decision.note}; {point.value} hooks first: {names}")


def in_cleanup(view: ExecutionView) -> bool:
    """post_run hooks run after cleanup: a cancel no longer stops the run there (it is ending anyway)."""
    return view.state is State.RUNNING_HOOKS and view.hook_point == HookPoint.POST_RUN.value


def _leave(view: ExecutionView) -> ExecutionView:
    return dataclasses.replace(view, hook_point=None, hook_cycle=None, hook_resume=None)


def decide(view: ExecutionView, event: Event, now: datetime) -> Decision:
    """The next step in `running_hooks` (`view` already has its attempts reset)."""
    point = HookPoint(view.hook_point) if view.hook_point else None
    if isinstance(event, Abandoned):
        if point is HookPoint.POST_RUN:  # cleanup is done: end with what was decided, saying why hooks stopped
            failed = event.outcome is Outcome.FAILED
            return _end(view, f"post_run hooks stopped: {event.reason}", failed=failed, now=now)
        return abandon(_leave(view), event.outcome, event.reason, now)
    if point is None or view.hook_resume is None:
        raise TransitionError(f"{view.id} is running hooks without a hook point")
    if not isinstance(event, HookRan):
        raise TransitionError(f"{view.state} cannot take {type(event).__name__}")
    label = f"{point.value} hook {event.name}"
    if not event.ok and (point in PRE_POINTS or event.stops):
        reason = f"{label} failed: {event.detail}"
        if point is HookPoint.POST_RUN:
            return _end(view, reason, failed=True, now=now)
        return abandon(_leave(view), Outcome.FAILED, reason, now)
    note = f"{label} {'done' if event.ok else 'failed (warning only)'}"
    if event.remaining > 0:
        return Decision(view, now, note)
    return resume(view, now, note)


def resume(view: ExecutionView, now: datetime, note: str) -> Decision:
    """Every hook of the point ran: go where the run was going; after post_cycle, into the next cycle's
    pre_cycle hooks when the run starts one."""
    point, target = HookPoint(view.hook_point or ""), view.hook_resume
    assert target is not None
    nxt = _leave(view)
    if target in (State.COMPLETED, State.FAILED, State.CANCELLED):
        return finish(nxt, now, f"{note}; the run ends")
    decision = go(nxt, target, now, note)
    if point is HookPoint.POST_CYCLE and target is State.INVOKING_PACKAGE and names_at(nxt.hook_plan, "pre_cycle"):
        return _enter(decision, HookPoint.PRE_CYCLE, nxt.cycle, now)
    return decision


def _end(view: ExecutionView, reason: str, failed: bool, now: datetime) -> Decision:
    """End after post_run hooks: a completed run becomes failed when a hook failed the run."""
    decided = view.outcome or Outcome.COMPLETED
    outcome = Outcome.FAILED if failed and decided is Outcome.COMPLETED else decided
    text = "; ".join(r for r in (view.failure_reason, reason) if r)
    return finish(dataclasses.replace(_leave(view), outcome=outcome, failure_reason=text), now, text)
