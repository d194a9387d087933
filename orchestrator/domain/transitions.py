"""The state machine's building blocks: go to a state, wait in one with a deadline, poll, start the next
cycle, leave the normal path (cleanup first), finish. `machine.decide` and `cycles.cycle_finished` compose
them; nothing here does I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta

from orchestrator.domain import messages
from orchestrator.domain.events import Decision
from orchestrator.domain.execution import CLEANUP, TERMINAL_OF, ExecutionView, Outcome, Policy, State

FINAL_REBOOT = "final reboot (reboot policy always)"
REBOOT_SUPPRESSED = "a reboot is pending: the reboot policy is never"
BUSY_WAITS = "<busy>"
"""The ledger entry (ExecutionView.kb_failures) counting the cycles of this run that found the installer busy or
another run holding the server's install lock: each is retried later, none counts against max_cycles, and past
`Policy.busy_retries` of them the run fails."""

STEP_NAMES: Mapping[State, str] = {
    State.REQUESTED: "inspecting the server",
    State.POWERING_ON: "powering the server on",
    State.AWAITING_POWER: "waiting for the server to start",
    State.ENTERING_MAINTENANCE: "turning maintenance mode on",
    State.CHECKING_PENDING_REBOOT: "checking for a pending reboot",
    State.INVOKING_PACKAGE: "invoking the update package",
    State.AWAITING_RESULT: "reading the update package's result",
    State.REBOOTING: "rebooting the server",
    State.AWAITING_BOOT: "waiting for the server to come back",
    State.SETTLING: "checking that the server's servicing stack is idle",
    State.CHECKING_HEALTH: "running the health checks",
    State.EXITING_MAINTENANCE: "turning maintenance mode off",
    State.RESTORING_POWER: "powering the server off again",
    State.RUNNING_HOOKS: "running a hook",
}


def span(delta: timedelta) -> str:
    return messages.duration(delta)


def deadline_reason(view: ExecutionView, policy: Policy) -> str:
    """Why a waiting state's deadline failed the run."""
    match view.state:
        case State.AWAITING_BOOT:
            return (
                f"server {view.server} did not come back within {span(policy.reboot_timeout)} "
                f"after the reboot of cycle {view.cycle}"
            )
        case State.AWAITING_RESULT:
            extended = (view.invoked_at is not None and view.deadline_at is not None
                        and view.deadline_at > view.invoked_at + policy.package_timeout)
            if not extended:
                return f"the update package did not finish cycle {view.cycle} within {span(policy.package_timeout)}"
            assert view.invoked_at is not None and view.deadline_at is not None
            if view.deadline_at >= view.invoked_at + policy.package_ceiling:
                return (f"the update package did not finish cycle {view.cycle} within the ceiling of "
                        f"{span(policy.package_ceiling)} (it was still sending heartbeats)")
            return (f"the update package's heartbeats stopped during cycle {view.cycle}: none for "
                    f"{span(policy.heartbeat_grace)} after {span(policy.package_timeout)} had passed "
                    f"(it ran {span(view.deadline_at - view.invoked_at)})")
        case _:
            return f"server {view.server} did not start within {span(policy.power_timeout)}"


def go(view: ExecutionView, state: State, now: datetime, note: str) -> Decision:
    return Decision(dataclasses.replace(view, state=state, deadline_at=None), now, note)


def wait(view: ExecutionView, state: State, now: datetime, timeout: timedelta, note: str) -> Decision:
    nxt = dataclasses.replace(view, state=state, deadline_at=now + timeout)
    return Decision(nxt, now, note)


def poll(view: ExecutionView, now: datetime, policy: Policy, note: str) -> Decision:
    """Stay in the waiting state; look again after the poll interval, and a last time at the deadline.
    Only a look at or after the deadline that still sees the server waiting fails the run."""
    if view.deadline_at is not None and now >= view.deadline_at:
        return abandon(dataclasses.replace(view, attempts=0, last_error=None), Outcome.FAILED,
                       deadline_reason(view, policy), now)
    at = now + policy.poll_interval
    if view.deadline_at is not None:
        at = min(at, view.deadline_at)
    return Decision(dataclasses.replace(view, attempts=0, last_error=None), at, note)


def next_cycle(view: ExecutionView, now: datetime, policy: Policy, note: str, at: datetime | None = None) -> Decision:
    """Start the next cycle (at `at`, default now), unless max cycles or the patch window say stop. Cycles that
    only waited for a busy installer (BUSY_WAITS) do not count against max cycles."""
    cycle = view.cycle + 1
    if cycle - view.kb_failures.get(BUSY_WAITS, 0) > policy.max_cycles:
        reason = f"did not converge within {policy.max_cycles} cycles (updates or a reboot were still pending)"
        if view.quarantined:
            reason = f"{reason}; {messages.quarantine_reason(view.quarantined)}"
        return abandon(view, Outcome.FAILED, reason, now)
    if view.not_after is not None and (at or now) >= view.not_after:
        # the server is between cycles (no reboot owed): stop here, clean up; the next window patches the rest
        return abandon(view, Outcome.CANCELLED, window_closed_reason(view.not_after, view.cycle), now)
    decision = go(dataclasses.replace(view, cycle=cycle), State.INVOKING_PACKAGE, now, f"{note}: cycle {cycle}")
    return dataclasses.replace(decision, next_run_at=at or now)


def window_closed_reason(not_after: datetime, cycles_done: int) -> str:
    """Why a run stopped at its patch window's cutoff."""
    done = f"after cycle {cycles_done}" if cycles_done else "before the first cycle"
    return (f"the patch window closes at {not_after:%Y-%m-%d %H:%M} UTC (end minus cutoff): no new update cycle "
            f"started {done}; it resumes in the next window")


def abandon(view: ExecutionView, outcome: Outcome, reason: str, now: datetime) -> Decision:
    """Leave the normal path. Outside cleanup: go clean up first; in cleanup: end now."""
    if view.state in CLEANUP:
        # cleanup itself cannot be done: end with what the run had decided, plus why cleanup stopped
        decided = view.outcome or outcome
        text = "; ".join(r for r in (view.failure_reason, f"cleanup stopped: {reason}") if r)
        ended = Outcome.FAILED if decided is Outcome.COMPLETED else decided
        return finish(dataclasses.replace(view, outcome=ended, failure_reason=text), now, text)
    nxt = dataclasses.replace(view, outcome=outcome, failure_reason=reason)
    if view.state is State.REQUESTED:
        return finish(nxt, now, reason)
    return go(nxt, State.EXITING_MAINTENANCE, now, reason)


def end_of_updates(view: ExecutionView, now: datetime, note: str) -> Decision:
    """No more cycles: completed, or failed naming the quarantined KBs; cleanup either way."""
    if view.quarantined:
        return abandon(view, Outcome.FAILED, messages.quarantine_reason(view.quarantined), now)
    return go(dataclasses.replace(view, outcome=Outcome.COMPLETED), State.EXITING_MAINTENANCE, now, note)


def finish(view: ExecutionView, now: datetime, note: str) -> Decision:
    outcome = view.outcome or Outcome.COMPLETED
    nxt = dataclasses.replace(view, state=TERMINAL_OF[outcome], outcome=outcome, deadline_at=None)
    return Decision(nxt, None, note, emails=("end",))
