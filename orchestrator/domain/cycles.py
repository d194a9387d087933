"""What a finished cycle's report means: the KB ledger (installed, failed, quarantined, loops), the cycle's
record, and the next step — reboot, wait for a busy installer, search again, or stop.

The report's markers (schemas/fleet.py, written by windows-update.ps1) decide before the update list does:

- `blocked_by` reboot_pending (or the legacy WU_E_INSTALL_NOT_ALLOWED 0x80240016): reboot, then the next cycle;
  no KB counts as failed. With the reboot policy `never` the run fails, saying so. A reboot still pending after
  `max_pending_reboots` reboots in a row fails the run (a stale RebootPending key).
- installer_busy / another_run (or the legacy WU_E_OPERATIONINPROGRESS 0x80240024): the next cycle after a
  backoff; not a failure, not counted against max cycles, at most `busy_retries` times in a run.
- deadline: the next cycle (after the reboot if one is required).
- a non-empty `remaining`, or a partial search (search_result_code 3) that found updates: another cycle,
  never "nothing left".
- a search that gave no list (search_result_code 4/5, or 3 with nothing found), or a failed cycle that reported
  no update (its `error` says why): retried, then the run fails; never "converged".
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from orchestrator.domain import messages
from orchestrator.domain.events import Decision, InitiationRecord, PatchRecord
from orchestrator.domain.execution import ExecutionView, Outcome, Policy, State
from orchestrator.domain.transitions import (
    BUSY_WAITS,
    FINAL_REBOOT,
    REBOOT_SUPPRESSED,
    abandon,
    end_of_updates,
    go,
    next_cycle,
    span,
)
from schemas.fleet import BlockedBy, CycleReport, PackageUpdate, ResultCode, UpdateResult
from schemas.selection import RebootPolicy

SEARCH_FAILURES = "<search>"  # ledger: cycles whose search (or whole run) failed without reporting an update
PENDING_REBOOTS = "<reboot-pending>"  # ledger: cycles in a row blocked by a pending reboot
HRESULT_INSTALL_NOT_ALLOWED = 0x80240016  # WU_E_INSTALL_NOT_ALLOWED: a reboot is pending (or another install runs)
HRESULT_OPERATION_IN_PROGRESS = 0x80240024  # WU_E_OPERATIONINPROGRESS: another install runs
NOT_NOW = {HRESULT_INSTALL_NOT_ALLOWED: BlockedBy.REBOOT_PENDING,
           HRESULT_OPERATION_IN_PROGRESS: BlockedBy.INSTALLER_BUSY}
BUSY = (BlockedBy.INSTALLER_BUSY, BlockedBy.ANOTHER_RUN)
OK = (ResultCode.SUCCEEDED, ResultCode.SUCCEEDED_WITH_ERRORS)


def blocker_of(report: CycleReport) -> BlockedBy | None:
    """Why the cycle did not install: the report's `blocked_by`, or what a package from before issue 12 meant by
    an install refused as a whole with 0x80240016 / 0x80240024 (no update installed, every one refused so)."""
    if report.blocked_by is not None:
        return report.blocked_by
    if any(u.result_code in OK for u in report.updates):
        return None
    codes = {u.hresult for u in report.updates} or ({report.hresult} if report.result_code is not ResultCode.SUCCEEDED
                                                     else set())
    if len(codes) == 1:
        return NOT_NOW.get(codes.pop())
    return None


def identity(update: UpdateResult) -> str:
    """What identifies an update for loop detection: WUA's UpdateID + RevisionNumber when the package sends them
    (a KB can be shared by two updates, or re-released as a new revision), else its KB / package name."""
    if update.update_id and update.revision_number is not None:
        return f"{update.update_id.lower()}/{update.revision_number}"
    return update.ident


def search_incomplete(report: CycleReport) -> bool:
    """The search gave no usable list: failed or aborted (4, 5), or partial (3) with nothing in it."""
    code = report.search_result_code
    return code in (ResultCode.FAILED, ResultCode.ABORTED) or (code is ResultCode.SUCCEEDED_WITH_ERRORS
                                                              and not report.updates)


def busy_backoff(waits: int, policy: Policy) -> timedelta:
    """How long the `waits`th busy cycle waits before the next: the backoff doubling, capped."""
    return min(policy.busy_backoff_max, policy.busy_backoff * (2 ** max(0, waits - 1)))


def cycle_failed(view: ExecutionView, report: CycleReport, now: datetime, policy: Policy) -> Decision:
    """The cycle's search failed, gave no list, or the package failed before reporting any update: retry the cycle,
    then fail with the HRESULT and the package's words (never call it "nothing left to install")."""
    failures = dict(view.kb_failures)
    failures[SEARCH_FAILURES] = failures.get(SEARCH_FAILURES, 0) + 1
    count = failures[SEARCH_FAILURES]
    code = f"result code {int(report.result_code)}, HRESULT {messages.hresult_hex(report.hresult)}"
    if report.error:
        what, end = "the update package failed", f"Update Cycle Failed: {report.error}"
        last = f"{report.error}; {code}"
    elif report.search_result_code is not None and search_incomplete(report):
        what, end = "the update search gave no complete list", f"Update Search Failed: {code}"
        last = f"search result code {int(report.search_result_code)}, {code}"
    else:
        what, end, last = "the update search failed", f"Update Search Failed: {code}", code
    warnings = messages.search_warnings(report.search_warnings)
    initiation = InitiationRecord(
        cycle=view.cycle, started_at=report.started_at, ended_at=report.finished_at or now,
        begin_message=messages.init_begin(view.package_id), end_message=end + warnings, updates_found=0,
        reboot_required=report.reboot_required, result_code=int(report.result_code), hresult=report.hresult,
        patches=(),
    )
    nxt = dataclasses.replace(view, kb_failures=failures)
    if count >= policy.max_kb_failures:
        decision = abandon(nxt, Outcome.FAILED, f"{what} {count} times (last: {last}){warnings}", now)
    else:
        decision = next_cycle(nxt, now, policy, f"cycle {view.cycle}: {what} ({last})")
    return dataclasses.replace(decision, initiation=initiation)


def _patch(update: UpdateResult, status: str) -> PatchRecord:
    linux = update if isinstance(update, PackageUpdate) else None
    return PatchRecord(
        kb=update.ident, title=update.title, url=update.url, classification=update.classification,
        result_code=int(update.result_code), hresult=update.hresult, reboot_required=update.reboot_required,
        status=status, begin_message=messages.patch_begin(update.title),
        end_message=messages.patch_end(int(update.result_code), update.hresult),
        from_version=linux.from_version if linux else None, to_version=linux.to_version if linux else None,
        output=(linux.output or None) if linux and status == "failed" else None,
    )


def _ledger(view: ExecutionView, report: CycleReport, policy: Policy,
            blocked: BlockedBy | None) -> tuple[ExecutionView, list[PatchRecord], int]:
    """The run's ledger after this cycle (failures, quarantine, what is installed), its patch records and how
    many updates it installed. An update refused with "not now" (0x80240016 / 0x80240024) of a blocked cycle
    was not attempted: recorded as pending, not counted as a failure."""
    failures = dict(view.kb_failures)
    quarantined = dict(view.quarantined)
    installed = set(view.installed_kbs)
    patches: list[PatchRecord] = []
    installed_now = 0
    recorded: set[str] = set()
    for update in report.updates:
        ok = update.result_code in OK
        ident, seen = update.ident, identity(update)
        if ident in recorded:  # two updates of one KB (WUA can offer that): one patch record per KB and cycle
            patches = [p for p in patches if p.kb != ident]
        recorded.add(ident)
        if seen in view.installed_kbs and ident not in quarantined:
            quarantined[ident] = "update loop: offered again after it was installed"
        if ok:
            installed_now += seen not in installed
            installed.add(seen)
            patches.append(_patch(update, "completed"))
        elif blocked is not None and update.hresult in NOT_NOW:
            patches.append(_patch(update, "pending"))
        else:
            failures[ident] = failures.get(ident, 0) + 1
            if failures[ident] >= policy.max_kb_failures and ident not in quarantined:
                quarantined[ident] = (
                    f"failed {failures[ident]} times (last: result code {int(update.result_code)}, "
                    f"HRESULT {messages.hresult_hex(update.hresult)})"
                )
            patches.append(_patch(update, "failed"))
    nxt = dataclasses.replace(view, kb_failures=failures, quarantined=quarantined, installed_kbs=frozenset(installed),
                              installed_count=view.installed_count + installed_now)
    return nxt, patches, installed_now


def _count(view: ExecutionView, entry: str, up: bool) -> ExecutionView:
    """Add one to a ledger counter (`up`), or clear it."""
    failures = dict(view.kb_failures)
    if up:
        failures[entry] = failures.get(entry, 0) + 1
    else:
        failures.pop(entry, None)
    return dataclasses.replace(view, kb_failures=failures)


def cycle_finished(view: ExecutionView, report: CycleReport, now: datetime, policy: Policy) -> Decision:
    """Record the cycle, update the KB ledger, then: done, reboot, wait, or search again."""
    selection = view.selection
    blocked = None if selection.scan_only else blocker_of(report)
    partial = report.search_result_code is ResultCode.SUCCEEDED_WITH_ERRORS
    if blocked is None and (search_incomplete(report) or (selection.scan_only and partial) or (
            not report.updates and report.result_code in (ResultCode.FAILED, ResultCode.ABORTED))):
        return cycle_failed(view, report, now, policy)
    nxt, patches, installed_now = _ledger(view, report, policy, blocked)
    if selection.scan_only:
        patches = [dataclasses.replace(p, status="pending") for p in patches]
        installed_now = 0
    urls = [u.url for u in report.updates]
    if blocked is not None:
        end = messages.blocked_end(blocked.value, urls, len(report.remaining))
    else:
        end = messages.scan_end(urls) if selection.scan_only else messages.init_end(urls)
    initiation = InitiationRecord(
        cycle=view.cycle, started_at=report.started_at, ended_at=report.finished_at or now,
        begin_message=messages.init_begin(view.package_id),
        end_message=end + messages.search_warnings(report.search_warnings, report.search_result_code),
        updates_found=len(report.updates), reboot_required=report.reboot_required,
        result_code=int(report.result_code), hresult=report.hresult, patches=tuple(patches),
    )
    decision = _next_step(view, nxt, report, blocked, installed_now, now, policy)
    return dataclasses.replace(decision, initiation=initiation)


def _next_step(view: ExecutionView, nxt: ExecutionView, report: CycleReport, blocked: BlockedBy | None,
               installed_now: int, now: datetime, policy: Policy) -> Decision:
    selection = view.selection
    summary = f"cycle {view.cycle}: {len(report.updates)} offered, {installed_now} installed"
    if selection.scan_only:
        nxt = dataclasses.replace(nxt, outcome=Outcome.COMPLETED, kb_failures=view.kb_failures,
                                  quarantined=view.quarantined, installed_kbs=view.installed_kbs,
                                  installed_count=view.installed_count)
        return go(nxt, State.EXITING_MAINTENANCE, now, f"scan only: {len(report.updates)} would be installed")
    nxt = _count(nxt, PENDING_REBOOTS, blocked is BlockedBy.REBOOT_PENDING)
    more = bool(report.remaining) or report.search_result_code is ResultCode.SUCCEEDED_WITH_ERRORS
    nothing_left = not report.updates and not more and blocked is None
    if blocked is BlockedBy.REBOOT_PENDING:
        return _reboot_pending(nxt, now, policy)
    if report.reboot_required and selection.reboot_policy is RebootPolicy.NEVER:
        # nothing more installs before a reboot (the next cycle would be blocked by it): stop here
        nxt = dataclasses.replace(nxt, reboot_reason=REBOOT_SUPPRESSED)
        if more:
            return abandon(nxt, Outcome.FAILED, (
                f"a reboot is pending after cycle {view.cycle} and the reboot policy is never: "
                f"{len(report.remaining) or 'more'} updates are left until the server is rebooted"), now)
        return end_of_updates(nxt, now, f"{summary}; reboot required but the reboot policy is never")
    if report.reboot_required:
        # a required reboot is done even when some KBs failed, or the cycle stopped early
        nxt = dataclasses.replace(nxt, reboot_reason=f"cycle {view.cycle} requires a reboot")
        return go(nxt, State.REBOOTING, now, f"{summary}; reboot required")
    if blocked in BUSY:
        return _busy(nxt, blocked, now, policy)
    if blocked is BlockedBy.DEADLINE:
        return next_cycle(nxt, now, policy, f"{summary}; stopped before the deadline, {len(report.remaining)} left")
    if nothing_left and selection.reboot_policy is RebootPolicy.ALWAYS:
        nxt = dataclasses.replace(nxt, reboot_reason=FINAL_REBOOT)
        return go(nxt, State.REBOOTING, now, f"{summary}; nothing left: final reboot (reboot policy always)")
    if nothing_left:
        return end_of_updates(nxt, now, f"{summary}; nothing left to install")
    if more:
        summary = f"{summary}; {len(report.remaining)} left for the next cycle" + (
            "; the search was partial" if report.search_result_code is ResultCode.SUCCEEDED_WITH_ERRORS else "")
    return next_cycle(nxt, now, policy, summary)


def _reboot_pending(view: ExecutionView, now: datetime, policy: Policy) -> Decision:
    """The package found a reboot owed before it could install: reboot and run the cycle again."""
    cycle = view.cycle
    if view.selection.reboot_policy is RebootPolicy.NEVER:
        return abandon(view, Outcome.FAILED, (
            f"a reboot is pending on the server (the update package found it before installing in cycle {cycle}) "
            "and the reboot policy is never: nothing more can be installed until the server is rebooted"), now)
    times = view.kb_failures.get(PENDING_REBOOTS, 0)
    if times > policy.max_pending_reboots:
        return abandon(view, Outcome.FAILED, (
            f"a reboot was still pending after {times - 1} reboots in a row (cycle {cycle}): Windows keeps "
            "reporting a reboot as required (a stale Component Based Servicing RebootPending key?)"), now)
    nxt = dataclasses.replace(view, reboot_reason=f"cycle {cycle}: a reboot was pending before the install")
    return go(nxt, State.REBOOTING, now, f"cycle {cycle}: a reboot is pending before installing; rebooting")


def _busy(view: ExecutionView, blocked: BlockedBy, now: datetime, policy: Policy) -> Decision:
    """The installer was busy, or another run held the server's install lock: the same work again later."""
    view = _count(view, BUSY_WAITS, True)
    waits = view.kb_failures[BUSY_WAITS]
    who = ("the Windows Update installer was busy (another install, e.g. Automatic Updates, was running)"
           if blocked is BlockedBy.INSTALLER_BUSY else "another run held the server's install lock")
    if waits > policy.busy_retries:
        return abandon(view, Outcome.FAILED, (
            f"the update package could not install: {who} in {waits} cycles of this run, the last in cycle "
            f"{view.cycle} (busy retries: {policy.busy_retries})"), now)
    delay = busy_backoff(waits, policy)
    return next_cycle(view, now, policy, f"cycle {view.cycle}: {who}; trying again in {span(delay)}", at=now + delay)
