"""The execution state machine: a pure function of (execution, event).

Nothing here does I/O or imports sqlalchemy, celery, httpx or os. A worker asks `command_for(view, now)`
what the current state wants done, performs that one command against the fleet (or nothing, for the
commands that need no I/O), turns the outcome into an event, and asks `decide(view, event, now)` for the
next view plus the records to write. The persistence layer saves the result with a compare-and-set on
the version the view was read at.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta

from orchestrator.domain import messages
from orchestrator.domain.commands import (
    Abandon,
    Command,
    FetchCycleResult,
    InspectServer,
    InvokeUpdatePackage,
    PollServer,
    PowerOff,
    PowerOn,
    RebootServer,
    SetMaintenance,
)
from orchestrator.domain.events import (
    Abandoned,
    CycleReported,
    Decision,
    Event,
    InitiationRecord,
    MaintenanceSet,
    PackageInvoked,
    PatchRecord,
    PowerOffRequested,
    PowerOnRequested,
    RebootRequested,
    ServerInspected,
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
from schemas.fleet import CycleReport, CycleState, PackageUpdate, PowerState, ResultCode
from schemas.selection import RebootPolicy

__all__ = [  # the machine's vocabulary, named through this module: machine.State, machine.RebootServer
    "Abandon",
    "Abandoned",
    "CLEANUP",
    "Command",
    "CycleReported",
    "Decision",
    "Event",
    "ExecutionView",
    "FetchCycleResult",
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
    "ServerInspected",
    "SetMaintenance",
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
    in_cleanup = view.state in CLEANUP
    if not in_cleanup and view.cancel_requested:
        who = view.cancelled_by or "an operator"
        why = f": {view.cancel_reason}" if view.cancel_reason else ""
        return Abandon(Outcome.CANCELLED, f"cancelled by {who}{why}")
    if view.attempts > policy.max_attempts:
        error = f": {view.last_error}" if view.last_error else ""
        return Abandon(Outcome.FAILED, f"{_STEP_NAMES[view.state]} failed {view.attempts - 1} times{error}")
    match view.state:
        case State.REQUESTED | State.CHECKING_PENDING_REBOOT:
            return InspectServer()
        case State.POWERING_ON:
            return PowerOn(view.key("power_on"))
        case State.AWAITING_POWER | State.AWAITING_BOOT:
            return PollServer()
        case State.ENTERING_MAINTENANCE:
            return SetMaintenance(True, view.key("maintenance_on"))
        case State.INVOKING_PACKAGE:
            excluded = set(view.quarantined) | set(view.selection.exclude_kbs)
            return InvokeUpdatePackage(view.cycle, view.key("package"), tuple(sorted(excluded)))
        case State.AWAITING_RESULT:
            return FetchCycleResult(view.key("package"))
        case State.REBOOTING:
            return RebootServer(view.key("reboot"))
        case State.EXITING_MAINTENANCE:
            return SetMaintenance(False, view.key("maintenance_off"))
        case State.RESTORING_POWER:
            return PowerOff(view.key("power_off"))
    raise TransitionError(f"no command for state {view.state}")  # pragma: no cover


def decide(view: ExecutionView, event: Event, now: datetime, policy: Policy) -> Decision:
    """Apply `event` to `view`: the next view, when to act next, and what to record."""
    if view.terminal:
        raise TransitionError(f"{view.id} is already {view.state}")
    fresh = dataclasses.replace(view, attempts=0, last_error=None)
    if isinstance(event, Abandoned):
        return _abandon(fresh, event.outcome, event.reason, now)
    match view.state, event:
        case State.REQUESTED, ServerInspected(status=status):
            prior = status.power_state
            nxt = dataclasses.replace(fresh, prior_power_state=prior)
            if prior is PowerState.STARTED:
                return _go(nxt, State.ENTERING_MAINTENANCE, now, "server is started")
            return _go(nxt, State.POWERING_ON, now, f"server is {prior}: powering it on")
        case State.POWERING_ON, PowerOnRequested():
            return _wait(fresh, State.AWAITING_POWER, now, policy.power_timeout, "power-on requested")
        case State.AWAITING_POWER, ServerInspected(status=status):
            if status.up:
                return _go(fresh, State.ENTERING_MAINTENANCE, now, "server is up")
            return _poll(view, now, policy, "server still starting")
        case State.ENTERING_MAINTENANCE, MaintenanceSet(on=True):
            return _go(fresh, State.CHECKING_PENDING_REBOOT, now, "maintenance mode on")
        case State.CHECKING_PENDING_REBOOT, ServerInspected(status=status):
            if status.pending_reboot and not view.selection.scan_only and \
                    view.selection.reboot_policy is not RebootPolicy.NEVER:
                nxt = dataclasses.replace(fresh, reboot_reason="a reboot was pending before the first cycle")
                return _go(nxt, State.REBOOTING, now, "reboot pending before the first cycle")
            return _next_cycle(fresh, now, policy, "no reboot pending")
        case State.INVOKING_PACKAGE, PackageInvoked():
            return _wait(fresh, State.AWAITING_RESULT, now, policy.package_timeout, f"cycle {view.cycle} invoked")
        case State.AWAITING_RESULT, CycleReported(report=report):
            if report.state is CycleState.RUNNING:
                return _poll(view, now, policy, f"cycle {view.cycle} still running")
            return _cycle_finished(fresh, report, now, policy)
        case State.REBOOTING, RebootRequested(boot_id_before=boot_id):
            nxt = dataclasses.replace(fresh, boot_id_before=boot_id)
            return _wait(nxt, State.AWAITING_BOOT, now, policy.reboot_timeout, "reboot requested")
        case State.AWAITING_BOOT, ServerInspected(status=status):
            if status.up and status.boot_id != view.boot_id_before:
                nxt = dataclasses.replace(fresh, boot_id_before=None, reboot_reason=None)
                if view.reboot_reason == FINAL_REBOOT:
                    return _end_of_updates(nxt, now, "server is back from the final reboot")
                return _next_cycle(nxt, now, policy, "server is back")
            return _poll(view, now, policy, "server still rebooting")
        case State.EXITING_MAINTENANCE, MaintenanceSet(on=False):
            if view.prior_power_state not in (None, PowerState.STARTED):
                return _go(fresh, State.RESTORING_POWER, now, "maintenance mode off")
            return _finish(fresh, now, "maintenance mode off")
        case State.RESTORING_POWER, PowerOffRequested():
            return _finish(fresh, now, f"server powered off again (it was {view.prior_power_state} before the run)")
    raise TransitionError(f"{view.state} cannot take {type(event).__name__}")


def status_of(state: State) -> str:
    """The CLC execution status of a state: pending until terminal."""
    return state.value if state in TERMINAL else "pending"


# --- helpers ----------------------------------------------------------------------------------

_STEP_NAMES: Mapping[State, str] = {
    State.REQUESTED: "inspecting the server",
    State.POWERING_ON: "powering the server on",
    State.AWAITING_POWER: "waiting for the server to start",
    State.ENTERING_MAINTENANCE: "turning maintenance mode on",
    State.CHECKING_PENDING_REBOOT: "checking for a pending reboot",
    State.INVOKING_PACKAGE: "invoking the update package",
    State.AWAITING_RESULT: "reading the update package's result",
    State.REBOOTING: "rebooting the server",
    State.AWAITING_BOOT: "waiting for the server to come back",
    State.EXITING_MAINTENANCE: "turning maintenance mode off",
    State.RESTORING_POWER: "powering the server off again",
}


def _deadline_reason(view: ExecutionView, policy: Policy) -> str:
    match view.state:
        case State.AWAITING_BOOT:
            return (
                f"server {view.server} did not come back within {_span(policy.reboot_timeout)} "
                f"after the reboot of cycle {view.cycle}"
            )
        case State.AWAITING_RESULT:
            return f"the update package did not finish cycle {view.cycle} within {_span(policy.package_timeout)}"
        case _:
            return f"server {view.server} did not start within {_span(policy.power_timeout)}"


def _span(delta: timedelta) -> str:
    return messages.duration(delta)


def _go(view: ExecutionView, state: State, now: datetime, note: str) -> Decision:
    return Decision(dataclasses.replace(view, state=state, deadline_at=None), now, note)


def _wait(view: ExecutionView, state: State, now: datetime, timeout: timedelta, note: str) -> Decision:
    nxt = dataclasses.replace(view, state=state, deadline_at=now + timeout)
    return Decision(nxt, now, note)


def _poll(view: ExecutionView, now: datetime, policy: Policy, note: str) -> Decision:
    """Stay in the waiting state; look again after the poll interval, and a last time at the deadline.
    Only a look at or after the deadline that still sees the server waiting fails the run."""
    if view.deadline_at is not None and now >= view.deadline_at:
        return _abandon(dataclasses.replace(view, attempts=0, last_error=None), Outcome.FAILED,
                        _deadline_reason(view, policy), now)
    at = now + policy.poll_interval
    if view.deadline_at is not None:
        at = min(at, view.deadline_at)
    return Decision(dataclasses.replace(view, attempts=0, last_error=None), at, note)


def _next_cycle(view: ExecutionView, now: datetime, policy: Policy, note: str) -> Decision:
    cycle = view.cycle + 1
    if cycle > policy.max_cycles:
        reason = f"did not converge within {policy.max_cycles} cycles (updates or a reboot were still pending)"
        if view.quarantined:
            reason = f"{reason}; {messages.quarantine_reason(view.quarantined)}"
        return _abandon(view, Outcome.FAILED, reason, now)
    if view.not_after is not None and now >= view.not_after:
        # the server is between cycles (no reboot owed): stop here, clean up; the next window patches the rest
        return _abandon(view, Outcome.CANCELLED, window_closed_reason(view.not_after, view.cycle), now)
    return _go(dataclasses.replace(view, cycle=cycle), State.INVOKING_PACKAGE, now, f"{note}: cycle {cycle}")


def window_closed_reason(not_after: datetime, cycles_done: int) -> str:
    """Why a run stopped at its patch window's cutoff."""
    done = f"after cycle {cycles_done}" if cycles_done else "before the first cycle"
    return (f"the patch window closes at {not_after:%Y-%m-%d %H:%M} UTC (end minus cutoff): no new update cycle "
            f"started {done}; it resumes in the next window")


def _abandon(view: ExecutionView, outcome: Outcome, reason: str, now: datetime) -> Decision:
    """Leave the normal path. Outside cleanup: go clean up first; in cleanup: end now."""
    if view.state in CLEANUP:
        # cleanup itself cannot be done: end with what the run had decided, plus why cleanup stopped
        decided = view.outcome or outcome
        text = "; ".join(r for r in (view.failure_reason, f"cleanup stopped: {reason}") if r)
        ended = Outcome.FAILED if decided is Outcome.COMPLETED else decided
        return _finish(dataclasses.replace(view, outcome=ended, failure_reason=text), now, text)
    nxt = dataclasses.replace(view, outcome=outcome, failure_reason=reason)
    if view.state is State.REQUESTED:
        return _finish(nxt, now, reason)
    return _go(nxt, State.EXITING_MAINTENANCE, now, reason)


SEARCH_FAILURES = "<search>"


def _search_failed(view: ExecutionView, report: CycleReport, now: datetime, policy: Policy) -> Decision:
    """The cycle's search or install batch failed before reporting any update: retry the cycle once more,
    then fail with the HRESULT (never call a failed search "nothing left to install")."""
    failures = dict(view.kb_failures)
    failures[SEARCH_FAILURES] = failures.get(SEARCH_FAILURES, 0) + 1
    code = f"result code {int(report.result_code)}, HRESULT {messages.hresult_hex(report.hresult)}"
    initiation = InitiationRecord(
        cycle=view.cycle, started_at=report.started_at, ended_at=report.finished_at or now,
        begin_message=messages.init_begin(view.package_id), end_message=f"Update Search Failed: {code}",
        updates_found=0,
        reboot_required=report.reboot_required, result_code=int(report.result_code), hresult=report.hresult,
        patches=(),
    )
    nxt = dataclasses.replace(view, kb_failures=failures)
    if failures[SEARCH_FAILURES] >= policy.max_kb_failures:
        decision = _abandon(nxt, Outcome.FAILED, f"the update search failed {failures[SEARCH_FAILURES]} times "
                            f"(last: {code})", now)
    else:
        decision = _next_cycle(nxt, now, policy, f"cycle {view.cycle}: the update search failed ({code})")
    return dataclasses.replace(decision, initiation=initiation)


FINAL_REBOOT = "final reboot (reboot policy always)"
REBOOT_SUPPRESSED = "a reboot is pending: the reboot policy is never"


def _end_of_updates(view: ExecutionView, now: datetime, note: str) -> Decision:
    """No more cycles: completed, or failed naming the quarantined KBs; cleanup either way."""
    if view.quarantined:
        return _abandon(view, Outcome.FAILED, messages.quarantine_reason(view.quarantined), now)
    return _go(dataclasses.replace(view, outcome=Outcome.COMPLETED), State.EXITING_MAINTENANCE, now, note)


def _finish(view: ExecutionView, now: datetime, note: str) -> Decision:
    outcome = view.outcome or Outcome.COMPLETED
    nxt = dataclasses.replace(view, state=TERMINAL_OF[outcome], outcome=outcome, deadline_at=None)
    return Decision(nxt, None, note, emails=("end",))


def _cycle_finished(view: ExecutionView, report: CycleReport, now: datetime, policy: Policy) -> Decision:
    """Record the cycle, update the KB ledger, then: done, reboot, or search again."""
    failures = dict(view.kb_failures)
    quarantined = dict(view.quarantined)
    installed = set(view.installed_kbs)
    patches: list[PatchRecord] = []
    installed_now = 0
    for update in report.updates:
        ok = update.result_code in (ResultCode.SUCCEEDED, ResultCode.SUCCEEDED_WITH_ERRORS)
        ident = update.ident  # the KB, or a Linux package's name
        if ident in view.installed_kbs and ident not in quarantined:
            quarantined[ident] = "update loop: offered again after it was installed"
        if ok:
            installed_now += ident not in installed
            installed.add(ident)
        else:
            failures[ident] = failures.get(ident, 0) + 1
            if failures[ident] >= policy.max_kb_failures and ident not in quarantined:
                quarantined[ident] = (
                    f"failed {failures[ident]} times (last: result code {int(update.result_code)}, "
                    f"HRESULT {messages.hresult_hex(update.hresult)})"
                )
        linux = update if isinstance(update, PackageUpdate) else None
        patches.append(
            PatchRecord(
                kb=ident,
                title=update.title,
                url=update.url,
                classification=update.classification,
                result_code=int(update.result_code),
                hresult=update.hresult,
                reboot_required=update.reboot_required,
                status="completed" if ok else "failed",
                begin_message=messages.patch_begin(update.title),
                end_message=messages.patch_end(int(update.result_code), update.hresult),
                from_version=linux.from_version if linux else None,
                to_version=linux.to_version if linux else None,
                output=(linux.output or None) if linux and not ok else None,
            )
        )
    nothing_left = not report.updates
    selection = view.selection
    if nothing_left and report.result_code in (ResultCode.FAILED, ResultCode.ABORTED):
        return _search_failed(view, report, now, policy)
    if selection.scan_only:
        patches = [dataclasses.replace(p, status="pending") for p in patches]
        installed_now = 0
    initiation = InitiationRecord(
        cycle=view.cycle,
        started_at=report.started_at,
        ended_at=report.finished_at or now,
        begin_message=messages.init_begin(view.package_id),
        end_message=(messages.scan_end([u.url for u in report.updates]) if selection.scan_only
                     else messages.init_end([u.url for u in report.updates])),
        updates_found=len(report.updates),
        reboot_required=report.reboot_required,
        result_code=int(report.result_code),
        hresult=report.hresult,
        patches=tuple(patches),
    )
    nxt = dataclasses.replace(
        view,
        kb_failures=failures,
        quarantined=quarantined,
        installed_kbs=frozenset(installed),
        installed_count=view.installed_count + installed_now,
    )
    summary = f"cycle {view.cycle}: {len(report.updates)} offered, {installed_now} installed"
    if selection.scan_only:
        nxt = dataclasses.replace(nxt, outcome=Outcome.COMPLETED, kb_failures=view.kb_failures,
                                  quarantined=view.quarantined, installed_kbs=view.installed_kbs)
        decision = _go(nxt, State.EXITING_MAINTENANCE, now, f"scan only: {len(report.updates)} would be installed")
    elif report.reboot_required and selection.reboot_policy is RebootPolicy.NEVER:
        nxt = dataclasses.replace(nxt, reboot_reason=REBOOT_SUPPRESSED)
        decision = _end_of_updates(nxt, now, f"{summary}; reboot required but the reboot policy is never")
    elif report.reboot_required:
        # a required reboot is done even when some KBs failed
        nxt = dataclasses.replace(nxt, reboot_reason=f"cycle {view.cycle} requires a reboot")
        decision = _go(nxt, State.REBOOTING, now, f"{summary}; reboot required")
    elif nothing_left and selection.reboot_policy is RebootPolicy.ALWAYS:
        nxt = dataclasses.replace(nxt, reboot_reason=FINAL_REBOOT)
        decision = _go(nxt, State.REBOOTING, now, f"{summary}; nothing left: final reboot (reboot policy always)")
    elif nothing_left:
        decision = _end_of_updates(nxt, now, f"{summary}; nothing left to install")
    else:
        decision = _next_cycle(nxt, now, policy, summary)
    return dataclasses.replace(decision, initiation=initiation)
