"""The execution state machine: a pure function of (execution, event).

Nothing here does I/O or imports sqlalchemy, celery, httpx or os. A worker asks `command_for(view, now)`
what the current state wants done, performs that one command against the fleet (or nothing, for the
commands that need no I/O), turns the outcome into an event, and asks `decide(view, event, now)` for the
next view plus the records to write. The persistence layer saves the result with a compare-and-set on
the version the view was read at.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from orchestrator.domain import health_points, hook_points
from orchestrator.domain.commands import (
    Abandon,
    CheckSettled,
    Command,
    FetchCycleResult,
    InspectServer,
    InvokeUpdatePackage,
    PollServer,
    PowerOff,
    PowerOn,
    RebootServer,
    RunHealthChecks,
    RunHooks,
    SetMaintenance,
)
from orchestrator.domain.cycles import SEARCH_FAILURES, cycle_finished
from orchestrator.domain.events import (
    Abandoned,
    CheckResult,
    CycleReported,
    Decision,
    Event,
    HealthChecked,
    HealthRecord,
    InitiationRecord,
    MaintenanceSet,
    PackageInvoked,
    PatchRecord,
    PowerOffRequested,
    PowerOnRequested,
    RebootRequested,
    ServerInspected,
    SettleChecked,
    TransitionError,
)
from orchestrator.domain.execution import (
    CLEANUP,
    TERMINAL,
    TERMINAL_OF,
    WAITING,
    ExecutionView,
    Outcome,
    Policy,
    State,
)
from orchestrator.domain.settle import back_from_reboot, settle_checked
from orchestrator.domain.transitions import (
    BUSY_WAITS,
    FINAL_REBOOT,
    REBOOT_SUPPRESSED,
    STEP_NAMES,
    abandon,
    finish,
    go,
    next_cycle,
    poll,
    wait,
    window_closed_reason,
)
from schemas.fleet import CycleReport, CycleState, HeartbeatReport, PowerState
from schemas.selection import RebootPolicy

__all__ = [  # the machine's vocabulary, named through this module: machine.State, machine.RebootServer
    "BUSY_WAITS",
    "FINAL_REBOOT",
    "REBOOT_SUPPRESSED",
    "SEARCH_FAILURES",
    "Abandon",
    "Abandoned",
    "CLEANUP",
    "CheckResult",
    "CheckSettled",
    "Command",
    "CycleReported",
    "Decision",
    "Event",
    "ExecutionView",
    "FetchCycleResult",
    "HealthChecked",
    "HealthRecord",
    "InitiationRecord",
    "InspectServer",
    "InvokeUpdatePackage",
    "MaintenanceSet",
    "Outcome",
    "PackageInvoked",
    "PatchRecord",
    "Policy",
    "PollServer",
    "PowerOff",
    "PowerOffRequested",
    "PowerOn",
    "PowerOnRequested",
    "RebootRequested",
    "RebootServer",
    "RunHealthChecks",
    "ServerInspected",
    "SetMaintenance",
    "SettleChecked",
    "State",
    "TERMINAL",
    "TERMINAL_OF",
    "TransitionError",
    "WAITING",
    "command_for",
    "decide",
    "status_of",
    "window_closed_reason",
]


# --- the machine ----------------------------------------------------------------------------


def command_for(view: ExecutionView, now: datetime, policy: Policy) -> Command:
    """What the execution's state wants done now."""
    if view.terminal:
        raise TransitionError(f"{view.id} is {view.state}: nothing to do")
    in_cleanup = view.state in CLEANUP or hook_points.in_cleanup(view)  # post_run hooks run after cleanup
    if not in_cleanup and view.cancel_requested:
        who = view.cancelled_by or "an operator"
        why = f": {view.cancel_reason}" if view.cancel_reason else ""
        return Abandon(Outcome.CANCELLED, f"cancelled by {who}{why}")
    if view.attempts > policy.max_attempts:
        error = f": {view.last_error}" if view.last_error else ""
        return Abandon(Outcome.FAILED, f"{STEP_NAMES[view.state]} failed {view.attempts - 1} times{error}")
    match view.state:
        case State.REQUESTED | State.CHECKING_PENDING_REBOOT:
            return InspectServer()
        case State.POWERING_ON:
            return PowerOn(view.key("power_on"))
        case State.AWAITING_POWER | State.AWAITING_BOOT:
            return PollServer()
        case State.SETTLING:
            return CheckSettled()
        case State.ENTERING_MAINTENANCE:
            return SetMaintenance(True, view.key("maintenance_on"))
        case State.INVOKING_PACKAGE:
            excluded = set(view.quarantined) | set(view.selection.exclude_kbs)
            return InvokeUpdatePackage(view.cycle, view.key("package"), tuple(sorted(excluded)),
                                       deadline=now + policy.package_timeout,
                                       heartbeat_seconds=policy.heartbeat_seconds)
        case State.AWAITING_RESULT:
            return FetchCycleResult(view.key("package"))
        case State.REBOOTING:
            return RebootServer(view.key("reboot"))
        case State.EXITING_MAINTENANCE:
            return SetMaintenance(False, view.key("maintenance_off"))
        case State.RESTORING_POWER:
            return PowerOff(view.key("power_off"))
        case State.CHECKING_HEALTH:
            return health_points.command(view)
        case State.RUNNING_HOOKS:
            cycle = view.hook_cycle or 0
            return RunHooks(view.hook_point or "", cycle, f"{view.id}:hook:{view.hook_point}:{cycle}")
    raise TransitionError(f"no command for state {view.state}")  # pragma: no cover


def decide(view: ExecutionView, event: Event, now: datetime, policy: Policy) -> Decision:
    """Apply `event` to `view`: the next view, when to act next, and what to record. A transition that crosses a
    hook point the run has hooks for goes through `running_hooks` first (hook_points.py)."""
    if view.terminal:
        raise TransitionError(f"{view.id} is already {view.state}")
    if view.state is State.RUNNING_HOOKS:
        return hook_points.decide(dataclasses.replace(view, attempts=0, last_error=None), event, now)
    checked = health_points.detour(view, _decide(view, event, now, policy), now)  # checks before the point's hooks
    return hook_points.detour(view, checked, now)


def _decide(view: ExecutionView, event: Event, now: datetime, policy: Policy) -> Decision:
    fresh = dataclasses.replace(view, attempts=0, last_error=None)
    if isinstance(event, Abandoned):
        return abandon(fresh, event.outcome, event.reason, now)
    match view.state, event:
        case State.REQUESTED, ServerInspected(status=status):
            prior = status.power_state
            nxt = dataclasses.replace(fresh, prior_power_state=prior)
            if prior is PowerState.STARTED:
                return go(nxt, State.ENTERING_MAINTENANCE, now, "server is started")
            return go(nxt, State.POWERING_ON, now, f"server is {prior}: powering it on")
        case State.POWERING_ON, PowerOnRequested():
            return wait(fresh, State.AWAITING_POWER, now, policy.power_timeout, "power-on requested")
        case State.AWAITING_POWER, ServerInspected(status=status):
            if status.up:
                return go(fresh, State.ENTERING_MAINTENANCE, now, "server is up")
            return poll(view, now, policy, "server still starting")
        case State.ENTERING_MAINTENANCE, MaintenanceSet(on=True):
            return go(fresh, State.CHECKING_PENDING_REBOOT, now, "maintenance mode on")
        case State.CHECKING_PENDING_REBOOT, ServerInspected(status=status):
            if status.pending_reboot and not view.selection.scan_only and \
                    view.selection.reboot_policy is not RebootPolicy.NEVER:
                nxt = dataclasses.replace(fresh, reboot_reason="a reboot was pending before the first cycle")
                return go(nxt, State.REBOOTING, now, "reboot pending before the first cycle")
            return next_cycle(fresh, now, policy, "no reboot pending")
        case State.INVOKING_PACKAGE, PackageInvoked():
            invoked = dataclasses.replace(fresh, invoked_at=now)
            return wait(invoked, State.AWAITING_RESULT, now, policy.package_timeout, f"cycle {view.cycle} invoked")
        case State.AWAITING_RESULT, CycleReported(report=report):
            if report.state is CycleState.RUNNING:
                return _still_running(view, report, now, policy)
            return cycle_finished(fresh, report, now, policy)
        case State.REBOOTING, RebootRequested(boot_id_before=boot_id):
            nxt = dataclasses.replace(fresh, boot_id_before=boot_id)
            return wait(nxt, State.AWAITING_BOOT, now, policy.reboot_timeout, "reboot requested")
        case State.AWAITING_BOOT, ServerInspected(status=status):
            if status.up and status.boot_id != view.boot_id_before:
                return back_from_reboot(fresh, status, now, policy)  # settled first (settle.py)
            return poll(view, now, policy, "server still rebooting")
        case State.SETTLING, SettleChecked(status=settle):
            return settle_checked(fresh, settle, now, policy)
        case State.CHECKING_HEALTH, HealthChecked():
            return health_points.checked(fresh, event, now, policy)
        case State.EXITING_MAINTENANCE, MaintenanceSet(on=False):
            if view.prior_power_state not in (None, PowerState.STARTED):
                return go(fresh, State.RESTORING_POWER, now, "maintenance mode off")
            return finish(fresh, now, "maintenance mode off")
        case State.RESTORING_POWER, PowerOffRequested():
            return finish(fresh, now, f"server powered off again (it was {view.prior_power_state} before the run)")
    raise TransitionError(f"{view.state} cannot take {type(event).__name__}")


def status_of(state: State) -> str:
    """The CLC execution status of a state: pending until terminal."""
    return state.value if state in TERMINAL else "pending"


# --- heartbeats --------------------------------------------------------------------------------


def _still_running(view: ExecutionView, report: CycleReport, now: datetime, policy: Policy) -> Decision:
    """The cycle is still running. A heartbeat heard at `heard_at` pushes the deadline to `heard_at` + the grace,
    never past the invocation + the ceiling, never earlier than it was: the wait is extended only while
    heartbeats arrive. Without one, the deadline stays (a look at or after it fails the run)."""
    heard = report.heard_at if isinstance(report, HeartbeatReport) else None
    note = f"cycle {view.cycle} still running"
    if heard is not None and view.deadline_at is not None:
        started = view.invoked_at or view.deadline_at - policy.package_timeout
        pushed = min(heard + policy.heartbeat_grace, started + policy.package_ceiling)
        if pushed > view.deadline_at:
            view = dataclasses.replace(view, deadline_at=pushed)
        phase = f" ({report.phase})" if report.phase else ""
        note = f"{note}{phase}: heartbeat {report.beats} at {heard:%H:%M:%S}, waiting until {view.deadline_at:%H:%M:%S}"
    return poll(view, now, policy, note)
