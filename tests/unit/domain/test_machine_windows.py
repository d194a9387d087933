"""The state machine's handling of how Windows Update really behaves (issue 12): the report's `blocked_by`,
`remaining`, `search_result_code`, `error`, update identities, and heartbeats. Each test builds the report the
package (windows-update.ps1) sends in that case; each fails on the engine before issue 12."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain import machine
from orchestrator.domain.machine import (
    CycleReported,
    ExecutionView,
    InvokeUpdatePackage,
    Outcome,
    PackageInvoked,
    Policy,
    State,
    command_for,
    decide,
)
from schemas.fleet import BlockedBy, CycleReport, CycleState, HeartbeatReport, ResultCode, UpdateResult

T0 = datetime(2016, 4, 12, 9, 0, tzinfo=UTC)
POLICY = Policy()
EID = "VA1-132457"
GUID = "5b8b7f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def awaiting(cycle: int = 1, **kw: object) -> ExecutionView:
    values: dict[str, object] = dict(id=EID, server="VA1OSDPATCH01", state=State.AWAITING_RESULT, cycle=cycle,
                                     deadline_at=T0 + POLICY.package_timeout, invoked_at=T0)
    values.update(kw)
    return ExecutionView(**values)  # type: ignore[arg-type]


def update(kb: str = "KB3135998", code: ResultCode = ResultCode.SUCCEEDED, hresult: int = 0,
           update_id: str | None = None, revision: int | None = None, reboot: bool = False) -> UpdateResult:
    return UpdateResult(kb=kb, title=f"Security Update ({kb})", result_code=code, hresult=hresult,
                        update_id=update_id, revision_number=revision, reboot_required=reboot)


def report(*updates: UpdateResult, cycle: int = 1, **kw: object) -> CycleReport:
    values: dict[str, object] = dict(key=f"{EID}:package:{cycle}", state=CycleState.FINISHED, started_at=T0,
                                     finished_at=T0 + timedelta(minutes=5), updates=updates)
    values.update(kw)
    return CycleReport(**values)  # type: ignore[arg-type]


def finish(view: ExecutionView, rep: CycleReport, policy: Policy = POLICY, now: datetime = T0) -> machine.Decision:
    return decide(view, CycleReported(rep), now, policy)


# --- C.1 a pending reboot: reboot and run the cycle again, never a KB failure -------------------------------


def test_blocked_by_a_pending_reboot_reboots_and_counts_nothing_failed() -> None:
    d = finish(awaiting(), report(result_code=ResultCode.NOT_STARTED, hresult=0x80240016, reboot_required=True,
                                  blocked_by=BlockedBy.REBOOT_PENDING, remaining=("KB3135998", "KB3146723")))
    assert d.view.state is State.REBOOTING and "pending before the install" in (d.view.reboot_reason or "")
    assert d.view.kb_failures == {"<reboot-pending>": 1} and d.view.quarantined == {}
    assert d.initiation is not None and d.initiation.end_message.startswith("Update Install Blocked: a reboot is")


def test_the_legacy_install_not_allowed_result_is_a_pending_reboot_not_a_failed_search() -> None:
    """The package before issue 12 reported Install()'s WU_E_INSTALL_NOT_ALLOWED as 'no updates, result 4'."""
    d = finish(awaiting(), report(result_code=ResultCode.FAILED, hresult=0x80240016, reboot_required=True))
    assert d.view.state is State.REBOOTING
    assert machine.SEARCH_FAILURES not in d.view.kb_failures


def test_updates_refused_with_install_not_allowed_are_not_counted_as_failed() -> None:
    refused = [update(kb, ResultCode.FAILED, 0x80240016) for kb in ("KB3135998", "KB3146723")]
    view = awaiting(kb_failures={"KB3135998": 1})  # one more real failure would quarantine it
    d = finish(view, report(*refused, result_code=ResultCode.FAILED, hresult=0x80240022, reboot_required=True))
    assert d.view.state is State.REBOOTING and d.view.quarantined == {}
    assert d.view.kb_failures == {"KB3135998": 1, "<reboot-pending>": 1}
    assert d.initiation is not None and {p.status for p in d.initiation.patches} == {"pending"}


def test_a_pending_reboot_with_the_reboot_policy_never_fails_clearly() -> None:
    view = awaiting(parameters={"rebootPolicy": "never"})
    d = finish(view, report(result_code=ResultCode.NOT_STARTED, reboot_required=True,
                            blocked_by=BlockedBy.REBOOT_PENDING, remaining=("KB3135998",)))
    assert d.view.state is State.EXITING_MAINTENANCE and d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == (
        "a reboot is pending on the server (the update package found it before installing in cycle 1) and the "
        "reboot policy is never: nothing more can be installed until the server is rebooted")


def test_a_reboot_still_pending_after_several_reboots_fails_the_run() -> None:
    blocked = report(result_code=ResultCode.NOT_STARTED, reboot_required=True, blocked_by=BlockedBy.REBOOT_PENDING,
                     remaining=("KB3135998",))
    view = awaiting(cycle=4, kb_failures={"<reboot-pending>": POLICY.max_pending_reboots})
    d = finish(view, blocked)
    assert d.view.outcome is Outcome.FAILED
    assert "still pending after 3 reboots in a row" in (d.view.failure_reason or "")
    again = finish(awaiting(cycle=4, kb_failures={"<reboot-pending>": 1}), blocked)
    assert again.view.state is State.REBOOTING


def test_a_cycle_that_installs_resets_the_pending_reboot_count() -> None:
    d = finish(awaiting(kb_failures={"<reboot-pending>": 2}), report(update(), reboot_required=True))
    assert "<reboot-pending>" not in d.view.kb_failures and d.view.state is State.REBOOTING


def test_the_control_planes_pending_reboot_flag_is_not_needed() -> None:
    """A control plane without `rebootPending` says no reboot is pending; the package's report is what reboots."""
    from workers.fleet import clc_wire

    status = clc_wire.server_status("VA1OSDPATCH01", {
        "name": "VA1OSDPATCH01", "osType": "Windows 2012R2 Datacenter 64-bit",
        "details": {"powerState": "started", "inMaintenanceMode": False}, "patchaas": {"bootId": "b1"}})
    assert status.pending_reboot is False


# --- C.2 a busy installer or another run's lock: later, with backoff, bounded -------------------------------


@pytest.mark.parametrize("blocked", [BlockedBy.INSTALLER_BUSY, BlockedBy.ANOTHER_RUN])
def test_a_busy_installer_retries_the_cycle_later_without_a_failure(blocked: BlockedBy) -> None:
    busy = report(result_code=ResultCode.ABORTED, hresult=0x80240024, blocked_by=blocked, remaining=("KB3135998",))
    d = finish(awaiting(), busy)
    assert d.view.state is State.INVOKING_PACKAGE and d.view.cycle == 2
    assert d.next_run_at == T0 + POLICY.busy_backoff
    assert d.view.kb_failures == {machine.BUSY_WAITS: 1}
    again = busy.model_copy(update={"key": f"{EID}:package:2"})
    second = finish(awaiting(cycle=2, kb_failures=d.view.kb_failures), again)
    assert second.next_run_at == T0 + 2 * POLICY.busy_backoff and second.view.kb_failures == {machine.BUSY_WAITS: 2}


def test_the_legacy_operation_in_progress_result_is_a_busy_installer() -> None:
    d = finish(awaiting(), report(result_code=ResultCode.FAILED, hresult=0x80240024))
    assert d.view.state is State.INVOKING_PACKAGE and d.next_run_at == T0 + POLICY.busy_backoff


def test_a_busy_installer_past_its_retries_fails_with_the_reason() -> None:
    busy = report(result_code=ResultCode.ABORTED, blocked_by=BlockedBy.INSTALLER_BUSY, remaining=("KB3135998",))
    d = finish(awaiting(cycle=6, kb_failures={machine.BUSY_WAITS: POLICY.busy_retries}), busy)
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == (
        "the update package could not install: the Windows Update installer was busy (another install, e.g. "
        "Automatic Updates, was running) in 6 cycles of this run, the last in cycle 6 (busy retries: 5)")


def test_busy_waits_do_not_count_against_max_cycles() -> None:
    busy = report(result_code=ResultCode.ABORTED, blocked_by=BlockedBy.ANOTHER_RUN, remaining=("KB3135998",))
    d = finish(awaiting(cycle=POLICY.max_cycles, kb_failures={machine.BUSY_WAITS: 1}), busy)
    assert d.view.state is State.INVOKING_PACKAGE and d.view.cycle == POLICY.max_cycles + 1


def test_the_backoff_is_capped() -> None:
    busy = report(result_code=ResultCode.ABORTED, blocked_by=BlockedBy.INSTALLER_BUSY, remaining=("KB3135998",))
    policy = dataclasses.replace(POLICY, busy_retries=50)
    d = finish(awaiting(kb_failures={machine.BUSY_WAITS: 20}), busy, policy)
    assert d.next_run_at == T0 + POLICY.busy_backoff_max


# --- C.3 the deadline, and what is left: another cycle, never "nothing left" ---------------------------------


def test_stopped_by_the_deadline_with_nothing_installed_starts_the_next_cycle_at_once() -> None:
    d = finish(awaiting(), report(result_code=ResultCode.ABORTED, blocked_by=BlockedBy.DEADLINE,
                                  remaining=("KB3135998",)))
    assert d.view.state is State.INVOKING_PACKAGE and d.next_run_at == T0 and d.view.kb_failures == {}


def test_stopped_by_the_deadline_after_a_reboot_requiring_install_reboots_first() -> None:
    d = finish(awaiting(), report(update(reboot=True), reboot_required=True, blocked_by=BlockedBy.DEADLINE,
                                  remaining=("KB3146723",)))
    assert d.view.state is State.REBOOTING


def test_remaining_updates_are_never_nothing_left() -> None:
    d = finish(awaiting(), report(remaining=("KB3146723",)))  # an exclusive update failed to... or was excluded
    assert d.view.state is State.INVOKING_PACKAGE and d.view.outcome is None


def test_an_update_installed_alone_leaves_the_rest_for_the_next_cycle() -> None:
    d = finish(awaiting(), report(update("KB3173424"), remaining=("KB3135998", "KB3146723")))
    assert d.view.state is State.INVOKING_PACKAGE and "2 left for the next cycle" in d.note


def test_remaining_with_a_reboot_the_policy_forbids_fails_instead_of_completing() -> None:
    view = awaiting(parameters={"rebootPolicy": "never"})
    d = finish(view, report(update(reboot=True), reboot_required=True, remaining=("KB3146723",)))
    assert d.view.outcome is Outcome.FAILED and "1 updates are left until the server is rebooted" in (
        d.view.failure_reason or "")
    done = finish(view, report(update(reboot=True), reboot_required=True))
    assert done.view.outcome is Outcome.COMPLETED and done.view.reboot_reason == machine.REBOOT_SUPPRESSED


# --- C.4 the search's own result code ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [ResultCode.FAILED, ResultCode.ABORTED, ResultCode.SUCCEEDED_WITH_ERRORS])
def test_a_search_without_a_complete_list_is_never_converged(code: ResultCode) -> None:
    d = finish(awaiting(), report(search_result_code=code, search_warnings=("0x8024402C: no route (context 1)",)))
    assert d.view.state is State.INVOKING_PACKAGE and d.view.kb_failures == {machine.SEARCH_FAILURES: 1}
    assert d.initiation is not None and "search warnings: 0x8024402C: no route (context 1)" in d.initiation.end_message
    failed = finish(awaiting(kb_failures={machine.SEARCH_FAILURES: 1}), report(search_result_code=code))
    assert failed.view.outcome is Outcome.FAILED
    assert failed.view.failure_reason == (f"the update search gave no complete list 2 times (last: search result code "
                                          f"{int(code)}, result code 2, HRESULT 0x00000000)")


def test_a_partial_search_that_found_updates_installs_them_and_searches_again() -> None:
    d = finish(awaiting(), report(update(), search_result_code=ResultCode.SUCCEEDED_WITH_ERRORS,
                                  result_code=ResultCode.SUCCEEDED_WITH_ERRORS, search_warnings=("0x80244022: x",)))
    assert d.view.state is State.INVOKING_PACKAGE and d.view.installed_count == 1
    assert d.initiation is not None and "the search was partial (result code 3)" in d.initiation.end_message
    assert "the search was partial" in d.note


def test_a_complete_search_with_nothing_found_is_still_nothing_left() -> None:
    d = finish(awaiting(), report(search_result_code=ResultCode.SUCCEEDED))
    assert d.view.outcome is Outcome.COMPLETED


def test_a_scan_on_a_partial_search_is_not_a_compliance_answer() -> None:
    view = awaiting(parameters={"scanOnly": True})
    d = finish(view, report(update(code=ResultCode.NOT_STARTED), search_result_code=ResultCode.SUCCEEDED_WITH_ERRORS,
                            result_code=ResultCode.NOT_STARTED))
    assert d.view.state is State.INVOKING_PACKAGE and d.view.kb_failures == {machine.SEARCH_FAILURES: 1}


# --- C.5 a run that died: its error is shown, it is retried, then the run fails with it ---------------------


def test_a_package_failure_report_shows_its_error_and_is_retried() -> None:
    died = report(result_code=ResultCode.FAILED, hresult=0x80004005, remaining=("KB3135998",),
                  error="the update task ended without a result (last task result 0x80004005)")
    d = finish(awaiting(), died)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.initiation is not None
    assert d.initiation.end_message == "Update Cycle Failed: the update task ended without a result (last task " \
                                       "result 0x80004005)"
    last = finish(awaiting(kb_failures={machine.SEARCH_FAILURES: 1}), died)
    assert last.view.failure_reason == ("the update package failed 2 times (last: the update task ended without a "
                                        "result (last task result 0x80004005); result code 4, HRESULT 0x80004005)")


def test_a_failure_report_with_installed_updates_keeps_them_and_goes_on() -> None:
    died = report(update(reboot=True), result_code=ResultCode.FAILED, reboot_required=True, remaining=("KB3146723",),
                  error="the server restarted during the cycle (before its report was saved)")
    d = finish(awaiting(), died)
    assert d.view.state is State.REBOOTING and d.view.installed_count == 1


# --- C.6 loop detection by update identity ------------------------------------------------------------------


def test_an_update_offered_again_with_the_same_identity_is_a_loop() -> None:
    view = awaiting(cycle=2, installed_kbs=frozenset({f"{GUID}/200"}))
    d = finish(view, report(update(update_id=GUID, revision=200), cycle=2))
    assert "update loop" in d.view.quarantined.get("KB3135998", "")


def test_a_re_released_revision_of_an_installed_kb_is_not_a_loop() -> None:
    view = awaiting(cycle=2, installed_kbs=frozenset({f"{GUID}/200"}))
    d = finish(view, report(update(update_id=GUID, revision=201), cycle=2))
    assert d.view.quarantined == {} and d.view.installed_count == 1


def test_two_updates_sharing_a_kb_are_not_a_loop() -> None:
    other = "0e2f4a6c-8e0a-4c2e-9a4c-6e8a0c2e4a6c"
    view = awaiting(cycle=2, installed_kbs=frozenset({f"{GUID}/1"}))
    d = finish(view, report(update("KB890830", update_id=other, revision=1), cycle=2))
    assert d.view.quarantined == {}


def test_without_identities_the_kb_is_what_loops() -> None:
    d = finish(awaiting(cycle=2, installed_kbs=frozenset({"KB3135998"})), report(update(), cycle=2))
    assert "update loop" in d.view.quarantined["KB3135998"]


# --- D. the deadline sent, and heartbeats -------------------------------------------------------------------


def test_the_package_is_told_the_engines_deadline_and_the_heartbeat_period() -> None:
    view = dataclasses.replace(awaiting(), state=State.INVOKING_PACKAGE, deadline_at=None)
    command = command_for(view, T0, POLICY)
    assert isinstance(command, InvokeUpdatePackage)
    assert command.deadline == T0 + POLICY.package_timeout and command.heartbeat_seconds == 300
    invoked = decide(view, PackageInvoked(), T0 + timedelta(seconds=2), POLICY)
    assert invoked.view.invoked_at == T0 + timedelta(seconds=2)
    assert invoked.view.deadline_at is not None and invoked.view.deadline_at >= command.deadline


def running(heard: datetime | None, beats: int = 3) -> CycleReport:
    base: dict[str, object] = dict(key=f"{EID}:package:1", state=CycleState.RUNNING, started_at=T0,
                                   result_code=ResultCode.IN_PROGRESS, phase="installing KB3135998")
    if heard is None:
        return CycleReport(**base)  # type: ignore[arg-type]
    return HeartbeatReport(**base, heard_at=heard, beats=beats)  # type: ignore[arg-type]


def test_a_heartbeat_pushes_the_deadline_to_itself_plus_the_grace() -> None:
    late = T0 + timedelta(minutes=58)
    d = decide(awaiting(), CycleReported(running(late)), late, POLICY)
    assert d.view.deadline_at == late + POLICY.heartbeat_grace and d.view.state is State.AWAITING_RESULT
    assert "heartbeat 3 at 09:58:00" in d.note and "installing KB3135998" in d.note


def test_an_early_heartbeat_never_shortens_the_deadline() -> None:
    early = T0 + timedelta(minutes=5)
    d = decide(awaiting(), CycleReported(running(early)), early, POLICY)
    assert d.view.deadline_at == T0 + POLICY.package_timeout


def test_without_heartbeats_the_deadline_fails_the_run() -> None:
    at = T0 + POLICY.package_timeout
    d = decide(awaiting(), CycleReported(running(None)), at, POLICY)
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "the update package did not finish cycle 1 within 60m 0s"


def test_heartbeats_that_stop_fail_the_run_at_the_last_one_plus_the_grace() -> None:
    last = T0 + timedelta(minutes=70)
    view = awaiting(deadline_at=last + POLICY.heartbeat_grace)
    d = decide(view, CycleReported(running(last)), last + POLICY.heartbeat_grace, POLICY)
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == ("the update package's heartbeats stopped during cycle 1: none for 15m 0s after "
                                     "60m 0s had passed (it ran 85m 0s)")


def test_heartbeats_never_extend_past_the_ceiling() -> None:
    near = T0 + POLICY.package_ceiling - timedelta(minutes=1)
    view = awaiting(deadline_at=near)
    d = decide(view, CycleReported(running(near)), near, POLICY)
    assert d.view.deadline_at == T0 + POLICY.package_ceiling
    end = decide(d.view, CycleReported(running(T0 + POLICY.package_ceiling)), T0 + POLICY.package_ceiling, POLICY)
    assert end.view.outcome is Outcome.FAILED
    assert "within the ceiling of 360m 0s (it was still sending heartbeats)" in (end.view.failure_reason or "")
