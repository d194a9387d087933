"""The execution state machine: every transition of `decide`, every branch of `command_for`, and a
property test driving random plausible runs against a tiny fake server."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from orchestrator.domain.machine import (
    CLEANUP,
    TERMINAL,
    TERMINAL_OF,
    WAITING,
    Abandon,
    Abandoned,
    CheckSettled,
    CycleReported,
    Decision,
    ExecutionView,
    FetchCycleResult,
    InspectServer,
    InvokeUpdatePackage,
    MaintenanceSet,
    Outcome,
    PackageInvoked,
    Policy,
    PollServer,
    PowerOff,
    PowerOffRequested,
    PowerOn,
    PowerOnRequested,
    RebootRequested,
    RebootServer,
    ServerInspected,
    SetMaintenance,
    SettleChecked,
    State,
    TransitionError,
    command_for,
    decide,
    status_of,
)
from schemas.fleet import CycleReport, CycleState, PowerState, ResultCode, ServerStatus, SettleStatus, UpdateResult

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
POLICY = Policy()
SETTLED = Policy(settle_period=timedelta(0))  # a reboot is settled at the first idle look (test_settle.py: the wait)
EID = "VA1-123456"
SERVER = "VA1OSDPATCH33"
NORMAL_STATES = [s for s in State if s not in TERMINAL and s not in CLEANUP]


# --- small factories ----------------------------------------------------------------------------


def view(state: State = State.REQUESTED, **kw: object) -> ExecutionView:
    return ExecutionView(id=EID, server=SERVER, state=state, **kw)  # type: ignore[arg-type]


def status(
    up: bool = True,
    boot_id: str = "b1",
    power: PowerState = PowerState.STARTED,
    pending_reboot: bool = False,
    in_maintenance: bool = False,
) -> ServerStatus:
    return ServerStatus(
        name=SERVER,
        os_type="windows2019",
        power_state=power,
        in_maintenance=in_maintenance,
        up=up,
        boot_id=boot_id,
        pending_reboot=pending_reboot,
    )


def update(
    kb: str = "KB5000001",
    code: ResultCode = ResultCode.SUCCEEDED,
    hresult: int | str = 0,
    title: str | None = None,
    url: str | None = None,
    reboot: bool = False,
) -> UpdateResult:
    return UpdateResult(
        kb=kb,
        title=title or f"Security update {kb}",
        url=url if url is not None else f"https://support.example/{kb}",
        result_code=code,
        hresult=hresult,
        reboot_required=reboot,
    )


def failed(kb: str, hresult: int | str = 0x80070643) -> UpdateResult:
    return update(kb, code=ResultCode.FAILED, hresult=hresult)


def report(
    updates: tuple[UpdateResult, ...] | list[UpdateResult] = (),
    reboot_required: bool = False,
    running: bool = False,
    finished_at: datetime | None = T0,
    result_code: ResultCode = ResultCode.SUCCEEDED,
    hresult: int = 0,
) -> CycleReport:
    return CycleReport(
        key=f"{EID}:package:1",
        state=CycleState.RUNNING if running else CycleState.FINISHED,
        started_at=T0 - timedelta(minutes=5),
        finished_at=None if running else finished_at,
        updates=tuple(updates),
        result_code=ResultCode.IN_PROGRESS if running else result_code,
        hresult=hresult,
        reboot_required=reboot_required,
    )


def awaiting_result(cycle: int = 1, **kw: object) -> ExecutionView:
    kw.setdefault("deadline_at", T0 + POLICY.package_timeout)
    return view(State.AWAITING_RESULT, cycle=cycle, **kw)


def finish_cycle(v: ExecutionView, *updates: UpdateResult, reboot: bool = False, policy: Policy = POLICY):
    return decide(v, CycleReported(report(updates, reboot_required=reboot)), T0, policy)


# --- REQUESTED ----------------------------------------------------------------------------------


def test_requested_inspects_the_server():
    assert command_for(view(State.REQUESTED), T0, POLICY) == InspectServer()


def test_started_server_goes_straight_to_maintenance():
    d = decide(view(), ServerInspected(status()), T0, POLICY)
    assert d.view.state is State.ENTERING_MAINTENANCE
    assert d.view.prior_power_state is PowerState.STARTED
    assert d.next_run_at == T0
    assert d.emails == ()


def test_stopped_server_is_powered_on_first():
    d = decide(view(), ServerInspected(status(up=False, power=PowerState.STOPPED)), T0, POLICY)
    assert d.view.state is State.POWERING_ON
    assert d.view.prior_power_state is PowerState.STOPPED


def test_paused_server_is_powered_on_first():
    d = decide(view(), ServerInspected(status(up=False, power=PowerState.PAUSED)), T0, POLICY)
    assert d.view.state is State.POWERING_ON
    assert d.view.prior_power_state is PowerState.PAUSED


def test_cancel_while_requested_ends_cancelled_without_cleanup():
    v = view(cancel_requested=True, cancelled_by="alice", cancel_reason="change freeze")
    cmd = command_for(v, T0, POLICY)
    assert cmd == Abandon(Outcome.CANCELLED, "cancelled by alice: change freeze")
    d = decide(v, Abandoned(cmd.outcome, cmd.reason), T0, POLICY)
    assert d.view.state is State.CANCELLED
    assert d.view.outcome is Outcome.CANCELLED
    assert d.view.failure_reason == "cancelled by alice: change freeze"
    assert d.next_run_at is None
    assert d.emails == ("end",)


def test_failure_while_requested_ends_failed_without_cleanup():
    d = decide(view(), Abandoned(Outcome.FAILED, "no such server"), T0, POLICY)
    assert d.view.state is State.FAILED
    assert d.view.failure_reason == "no such server"
    assert d.emails == ("end",)


# --- powering on --------------------------------------------------------------------------------


def test_powering_on_asks_for_power_on_with_a_cycle_key():
    assert command_for(view(State.POWERING_ON), T0, POLICY) == PowerOn(f"{EID}:power_on:0")


def test_power_on_requested_waits_for_power_with_a_deadline():
    d = decide(view(State.POWERING_ON), PowerOnRequested(), T0, POLICY)
    assert d.view.state is State.AWAITING_POWER
    assert d.view.deadline_at == T0 + POLICY.power_timeout
    assert d.next_run_at == T0


def test_awaiting_power_polls_the_server():
    v = view(State.AWAITING_POWER, deadline_at=T0 + timedelta(minutes=5))
    assert command_for(v, T0, POLICY) == PollServer()


def test_server_still_starting_keeps_waiting_and_polls_again():
    v = view(State.AWAITING_POWER, deadline_at=T0 + timedelta(minutes=5))
    d = decide(v, ServerInspected(status(up=False)), T0, POLICY)
    assert d.view.state is State.AWAITING_POWER
    assert d.view.deadline_at == v.deadline_at
    assert d.next_run_at == T0 + POLICY.poll_interval


def test_server_up_after_power_on_enters_maintenance_and_clears_deadline():
    v = view(State.AWAITING_POWER, deadline_at=T0 + timedelta(minutes=5))
    d = decide(v, ServerInspected(status(up=True)), T0, POLICY)
    assert d.view.state is State.ENTERING_MAINTENANCE
    assert d.view.deadline_at is None


def test_power_deadline_takes_a_last_look_before_failing():
    v = view(State.AWAITING_POWER, deadline_at=T0, prior_power_state=PowerState.STOPPED)
    assert command_for(v, T0, POLICY) == PollServer()


def test_server_still_starting_at_the_power_deadline_fails_the_run_and_cleans_up():
    v = view(State.AWAITING_POWER, deadline_at=T0, prior_power_state=PowerState.STOPPED)
    d = decide(v, ServerInspected(status(up=False, power=PowerState.STARTED)), T0, POLICY)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == f"server {SERVER} did not start within 20m 0s"
    assert d.view.deadline_at is None
    assert d.next_run_at == T0


def test_server_up_exactly_at_the_power_deadline_is_not_failed():
    v = view(State.AWAITING_POWER, deadline_at=T0, prior_power_state=PowerState.STOPPED)
    d = decide(v, ServerInspected(status(up=True)), T0, POLICY)
    assert d.view.state is State.ENTERING_MAINTENANCE
    assert d.view.outcome is None
    assert d.view.failure_reason is None
    assert d.view.deadline_at is None


# --- maintenance on, pending reboot --------------------------------------------------------------


def test_entering_maintenance_turns_it_on():
    assert command_for(view(State.ENTERING_MAINTENANCE), T0, POLICY) == SetMaintenance(True, f"{EID}:maintenance_on:0")


def test_maintenance_on_leads_to_the_pending_reboot_check():
    d = decide(view(State.ENTERING_MAINTENANCE), MaintenanceSet(True), T0, POLICY)
    assert d.view.state is State.CHECKING_PENDING_REBOOT
    assert d.next_run_at == T0


def test_maintenance_off_event_while_entering_is_a_transition_error():
    with pytest.raises(TransitionError):
        decide(view(State.ENTERING_MAINTENANCE), MaintenanceSet(False), T0, POLICY)


def test_pending_reboot_check_inspects_the_server():
    assert command_for(view(State.CHECKING_PENDING_REBOOT), T0, POLICY) == InspectServer()


def test_pending_reboot_before_first_cycle_is_done_first():
    d = decide(view(State.CHECKING_PENDING_REBOOT), ServerInspected(status(pending_reboot=True)), T0, POLICY)
    assert d.view.state is State.REBOOTING
    assert d.view.cycle == 0
    assert d.view.reboot_reason == "a reboot was pending before the first cycle"


def test_no_pending_reboot_starts_cycle_one():
    d = decide(view(State.CHECKING_PENDING_REBOOT), ServerInspected(status()), T0, POLICY)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 1
    assert d.initiation is None


def settled(v: ExecutionView, at: datetime = T0, boot_id: str = "b2", policy: Policy = SETTLED) -> Decision:
    """A view back from a reboot (SETTLING) after an idle look of its servicing stack (settle period 0)."""
    assert v.state is State.SETTLING
    return decide(v, SettleChecked(SettleStatus(up=True, boot_id=boot_id, idle=True)), at, policy)


def test_back_from_pending_reboot_starts_cycle_one():
    v = view(
        State.AWAITING_BOOT,
        cycle=0,
        boot_id_before="b1",
        reboot_reason="pending",
        deadline_at=T0 + POLICY.reboot_timeout,
    )
    d = decide(v, ServerInspected(status(boot_id="b2")), T0, POLICY)
    assert d.view.state is State.SETTLING and d.view.deadline_at == T0 + POLICY.reboot_timeout
    d = settled(d.view)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 1
    assert d.view.boot_id_before is None
    assert d.view.reboot_reason is None
    assert d.view.deadline_at is None


def test_zero_max_cycles_fails_before_any_cycle():
    d = decide(view(State.CHECKING_PENDING_REBOOT), ServerInspected(status()), T0, Policy(max_cycles=0))
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "did not converge within 0 cycles (updates or a reboot were still pending)"


# --- the package ---------------------------------------------------------------------------------


def test_invoking_package_starts_the_current_cycle_excluding_quarantined_kbs_sorted():
    v = view(State.INVOKING_PACKAGE, cycle=3, quarantined={"KB5000009": "x", "KB5000002": "y"})
    assert command_for(v, T0, POLICY) == InvokeUpdatePackage(
        cycle=3, key=f"{EID}:package:3", exclude_kbs=("KB5000002", "KB5000009"),
        deadline=T0 + POLICY.package_timeout, heartbeat_seconds=POLICY.heartbeat_seconds,
    )


def test_package_invoked_awaits_the_result_with_a_deadline():
    d = decide(view(State.INVOKING_PACKAGE, cycle=2), PackageInvoked(), T0, POLICY)
    assert d.view.state is State.AWAITING_RESULT
    assert d.view.deadline_at == T0 + POLICY.package_timeout
    assert d.view.cycle == 2


def test_awaiting_result_fetches_the_cycle_report():
    assert command_for(awaiting_result(cycle=2), T0, POLICY) == FetchCycleResult(f"{EID}:package:2")


def test_running_cycle_keeps_waiting_without_recording():
    v = awaiting_result()
    d = decide(v, CycleReported(report(running=True)), T0, POLICY)
    assert d.view.state is State.AWAITING_RESULT
    assert d.next_run_at == T0 + POLICY.poll_interval
    assert d.initiation is None


def test_package_deadline_takes_a_last_look_at_the_report():
    v = awaiting_result(cycle=4, deadline_at=T0)
    assert command_for(v, T0 + timedelta(seconds=1), POLICY) == FetchCycleResult(f"{EID}:package:4")


def test_cycle_still_running_after_the_package_deadline_fails_the_run_and_cleans_up():
    v = awaiting_result(cycle=4, deadline_at=T0)
    d = decide(v, CycleReported(report(running=True)), T0 + timedelta(seconds=1), POLICY)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "the update package did not finish cycle 4 within 60m 0s"
    assert d.view.deadline_at is None
    assert d.initiation is None


def test_cycle_finished_exactly_at_the_package_deadline_is_recorded_and_not_failed():
    v = awaiting_result(cycle=4, deadline_at=T0)
    d = decide(v, CycleReported(report([update("KB5000001")])), T0, POLICY)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 5
    assert d.view.outcome is None
    assert d.initiation is not None and d.initiation.cycle == 4


def test_cycle_with_no_updates_completes_via_cleanup():
    d = finish_cycle(awaiting_result(cycle=3))
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.COMPLETED
    assert d.view.failure_reason is None
    assert d.view.deadline_at is None
    assert d.emails == ()


def test_cycle_with_updates_and_no_reboot_starts_the_next_cycle():
    d = finish_cycle(awaiting_result(cycle=1), update("KB5000001"))
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 2
    assert d.view.deadline_at is None


def test_cycle_requiring_reboot_reboots():
    d = finish_cycle(awaiting_result(cycle=2), update("KB5000001", reboot=True), reboot=True)
    assert d.view.state is State.REBOOTING
    assert d.view.cycle == 2
    assert d.view.reboot_reason == "cycle 2 requires a reboot"
    assert d.view.deadline_at is None


def test_required_reboot_is_done_even_when_a_kb_failed():
    d = finish_cycle(awaiting_result(), update("KB5000001", reboot=True), failed("KB5000002"), reboot=True)
    assert d.view.state is State.REBOOTING
    assert d.view.kb_failures == {"KB5000002": 1}


def test_required_reboot_is_done_even_when_a_kb_is_quarantined():
    v = awaiting_result(cycle=2, kb_failures={"KB5000002": 1})
    d = finish_cycle(v, failed("KB5000002"), reboot=True)
    assert d.view.state is State.REBOOTING
    assert "KB5000002" in d.view.quarantined


def test_successful_updates_are_counted_and_remembered():
    v = awaiting_result(installed_count=3, installed_kbs=frozenset({"KB5000009"}))
    d = finish_cycle(
        v,
        update("KB5000001"),
        update("KB5000002", code=ResultCode.SUCCEEDED_WITH_ERRORS),
        failed("KB5000003"),
    )
    assert d.view.installed_count == 5
    assert d.view.installed_kbs == {"KB5000001", "KB5000002", "KB5000009"}
    assert d.view.kb_failures == {"KB5000003": 1}
    assert d.view.quarantined == {}


def test_looping_kb_reported_installed_again_is_not_counted_again():
    v = awaiting_result(cycle=2, installed_count=1, installed_kbs=frozenset({"KB5000001"}))
    d = finish_cycle(v, update("KB5000001"), update("KB5000002"))
    assert d.view.installed_count == 2
    assert d.view.installed_kbs == {"KB5000001", "KB5000002"}
    assert d.view.quarantined == {"KB5000001": "update loop: offered again after it was installed"}


def test_kb_reported_installed_twice_in_one_cycle_is_counted_once():
    d = finish_cycle(awaiting_result(), update("KB5000001"), update("KB5000001"))
    assert d.view.installed_count == 1


def test_kb_installed_after_an_earlier_failure_is_counted_once():
    v = awaiting_result(cycle=2, kb_failures={"KB5000002": 1})
    d = finish_cycle(v, update("KB5000002"))
    assert d.view.installed_count == 1
    assert d.view.installed_kbs == {"KB5000002"}


def test_installed_count_of_a_run_counts_each_kb_once():
    """Cycle 1 installs two KBs, cycle 2 re-reports one of them as installed (a loop) with one new KB."""
    first = finish_cycle(awaiting_result(cycle=1), update("KB5000001"), update("KB5000002"))
    second = decide(first.view, PackageInvoked(), T0, POLICY).view
    d = finish_cycle(second, update("KB5000002"), update("KB5000003"))
    assert d.view.installed_count == 3


def test_kb_failing_once_is_not_quarantined():
    d = finish_cycle(awaiting_result(), failed("KB5000002"))
    assert d.view.kb_failures == {"KB5000002": 1}
    assert d.view.quarantined == {}
    assert d.view.state is State.INVOKING_PACKAGE


def test_kb_failing_twice_is_quarantined():
    v = awaiting_result(cycle=2, kb_failures={"KB5000002": 1})
    d = finish_cycle(v, failed("KB5000002", hresult=0x80070643), update("KB5000003"))
    assert d.view.kb_failures == {"KB5000002": 2}
    assert d.view.quarantined == {"KB5000002": "failed 2 times (last: result code 4, HRESULT 0x80070643)"}
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 3


def test_quarantined_kb_is_excluded_from_the_next_cycle():
    v = awaiting_result(cycle=2, kb_failures={"KB5000002": 1})
    d = finish_cycle(v, failed("KB5000002"))
    cmd = command_for(d.view, T0, POLICY)
    assert isinstance(cmd, InvokeUpdatePackage)
    assert cmd.exclude_kbs == ("KB5000002",)


def test_kb_failure_threshold_is_a_policy_setting():
    d = finish_cycle(awaiting_result(), failed("KB5000002"), policy=Policy(max_kb_failures=1))
    assert "KB5000002" in d.view.quarantined


def test_final_cycle_after_quarantine_fails_the_run_naming_the_kbs():
    v = awaiting_result(
        cycle=4,
        quarantined={"KB5000002": "failed 2 times (x)", "KB5000001": "update loop: y"},
        installed_count=7,
    )
    d = finish_cycle(v)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == (
        "2 updates could not be installed: KB5000001 update loop: y; KB5000002 failed 2 times (x)"
    )
    assert d.initiation is not None
    assert d.initiation.updates_found == 0


def test_kb_offered_again_after_it_installed_is_quarantined_as_a_loop():
    v = awaiting_result(cycle=2, installed_kbs=frozenset({"KB5000001"}))
    d = finish_cycle(v, update("KB5000001"))
    assert d.view.quarantined == {"KB5000001": "update loop: offered again after it was installed"}
    assert d.view.state is State.INVOKING_PACKAGE


def test_loop_quarantine_is_not_overwritten_by_a_later_failure_count():
    v = awaiting_result(cycle=3, installed_kbs=frozenset({"KB5000001"}), kb_failures={"KB5000001": 1})
    d = finish_cycle(v, failed("KB5000001"))
    assert d.view.quarantined["KB5000001"].startswith("update loop")
    assert d.view.kb_failures == {"KB5000001": 2}


def test_loop_detected_kb_ends_the_run_failed_once_nothing_else_is_offered():
    v = awaiting_result(cycle=2, installed_kbs=frozenset({"KB5000001"}))
    d = finish_cycle(v, update("KB5000001"))
    nxt = decide(d.view, PackageInvoked(), T0, POLICY).view
    end = finish_cycle(nxt)
    assert end.view.state is State.EXITING_MAINTENANCE
    assert end.view.outcome is Outcome.FAILED
    assert "KB5000001 update loop" in (end.view.failure_reason or "")


def test_cycle_that_would_exceed_max_cycles_fails_with_no_convergence():
    d = finish_cycle(awaiting_result(cycle=10), update("KB5000001"))
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.cycle == 10
    assert d.view.failure_reason == "did not converge within 10 cycles (updates or a reboot were still pending)"
    assert d.initiation is not None and d.initiation.cycle == 10


def test_no_convergence_reason_names_the_quarantined_kbs():
    v = awaiting_result(cycle=10, kb_failures={"KB5000002": 1})
    d = finish_cycle(v, failed("KB5000002", hresult=0x80070643), update("KB5000001"))
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == (
        "did not converge within 10 cycles (updates or a reboot were still pending); "
        "1 update could not be installed: KB5000002 failed 2 times (last: result code 4, HRESULT 0x80070643)"
    )


def test_last_allowed_cycle_may_still_complete():
    d = finish_cycle(awaiting_result(cycle=10))
    assert d.view.outcome is Outcome.COMPLETED


def test_max_cycles_is_a_policy_setting():
    d = finish_cycle(awaiting_result(cycle=2), update("KB5000001"), policy=Policy(max_cycles=2))
    assert d.view.failure_reason == "did not converge within 2 cycles (updates or a reboot were still pending)"


def test_reboot_after_the_last_allowed_cycle_fails_with_no_convergence():
    v = view(State.AWAITING_BOOT, cycle=10, boot_id_before="b1", deadline_at=T0 + POLICY.reboot_timeout)
    d = settled(decide(v, ServerInspected(status(boot_id="b2")), T0, POLICY).view)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "did not converge within 10 cycles (updates or a reboot were still pending)"


# --- initiation and patch records ---------------------------------------------------------------


def test_initiation_record_of_a_cycle_with_updates():
    v = awaiting_result(cycle=2)
    rep = report(
        [update("KB5000001", url="url1"), update("KB5000002", url="url2")],
        reboot_required=True,
        finished_at=T0 - timedelta(minutes=1),
        result_code=ResultCode.SUCCEEDED_WITH_ERRORS,
        hresult=5,
    )
    d = decide(v, CycleReported(rep), T0, POLICY)
    init = d.initiation
    assert init is not None
    assert init.cycle == 2
    assert init.begin_message == "Invoking SUS API"
    assert init.end_message == "Updates Downloaded Successfully downloaded 2 updates to install##url1 url2##"
    assert init.started_at == rep.started_at
    assert init.ended_at == T0 - timedelta(minutes=1)
    assert init.updates_found == 2
    assert init.reboot_required is True
    assert init.result_code == 3
    assert init.hresult == 5
    assert [p.kb for p in init.patches] == ["KB5000001", "KB5000002"]


def test_initiation_record_of_the_final_cycle():
    d = finish_cycle(awaiting_result(cycle=3))
    assert d.initiation is not None
    assert d.initiation.end_message == "Update Process Complete. There are 0 updates to install"
    assert d.initiation.updates_found == 0
    assert d.initiation.patches == ()


def test_initiation_ends_now_when_the_report_has_no_finish_time():
    d = decide(awaiting_result(), CycleReported(report(finished_at=None)), T0 + timedelta(hours=1), POLICY)
    assert d.initiation is not None
    assert d.initiation.ended_at == T0 + timedelta(hours=1)


def test_successful_patch_record():
    d = finish_cycle(awaiting_result(), update("KB5000001", title="2024-05 Cumulative Update", url="u1"))
    assert d.initiation is not None
    (patch,) = d.initiation.patches
    assert patch.kb == "KB5000001"
    assert patch.title == "2024-05 Cumulative Update"
    assert patch.url == "u1"
    assert patch.classification == "Security Updates"
    assert patch.status == "completed"
    assert patch.result_code == 2
    assert patch.hresult == 0
    assert patch.reboot_required is False
    assert patch.begin_message == "Installing 2024-05 Cumulative Update"
    assert patch.end_message == "Result Code: 2"


def test_failed_patch_record_carries_the_hresult():
    d = finish_cycle(awaiting_result(), update("KB5000002", code=ResultCode.FAILED, hresult=-2147023293))
    assert d.initiation is not None
    (patch,) = d.initiation.patches
    assert patch.status == "failed"
    assert patch.result_code == 4
    assert patch.hresult == 0x80070643
    assert patch.end_message == "Result Code: 4 (HRESULT 0x80070643)"


def test_patch_succeeded_with_errors_counts_as_completed():
    d = finish_cycle(awaiting_result(), update("KB5000002", code=ResultCode.SUCCEEDED_WITH_ERRORS))
    assert d.initiation is not None
    assert d.initiation.patches[0].status == "completed"
    assert d.initiation.patches[0].end_message == "Result Code: 3 (HRESULT 0x00000000)"


@pytest.mark.parametrize("code", [ResultCode.NOT_STARTED, ResultCode.IN_PROGRESS, ResultCode.ABORTED])
def test_patch_that_did_not_succeed_counts_as_a_failure(code: ResultCode):
    d = finish_cycle(awaiting_result(), update("KB5000002", code=code))
    assert d.initiation is not None
    assert d.initiation.patches[0].status == "failed"
    assert d.view.kb_failures == {"KB5000002": 1}


# --- a failed search ------------------------------------------------------------------------------

SEARCH_HRESULT = 0x8024402C


def search_failed(v: ExecutionView, code: ResultCode = ResultCode.FAILED, policy: Policy = POLICY, **kw) -> Decision:
    return decide(v, CycleReported(report(result_code=code, hresult=SEARCH_HRESULT, **kw)), T0, policy)


@pytest.mark.parametrize("code", [ResultCode.FAILED, ResultCode.ABORTED])
def test_failed_search_is_not_nothing_left_it_starts_the_next_cycle(code: ResultCode):
    d = search_failed(awaiting_result(cycle=1), code)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 2
    assert d.view.outcome is None
    assert d.view.kb_failures == {"<search>": 1}
    assert d.view.quarantined == {}


@pytest.mark.parametrize("code", [ResultCode.FAILED, ResultCode.ABORTED])
def test_failed_search_records_an_initiation_with_its_result_code_and_hresult(code: ResultCode):
    d = search_failed(awaiting_result(cycle=1), code, finished_at=T0 - timedelta(minutes=1))
    init = d.initiation
    assert init is not None
    assert init.cycle == 1
    assert init.begin_message == "Invoking SUS API"
    assert init.end_message == f"Update Search Failed: result code {int(code)}, HRESULT 0x8024402C"
    assert init.updates_found == 0
    assert init.patches == ()
    assert init.result_code == int(code)
    assert init.hresult == SEARCH_HRESULT
    assert init.ended_at == T0 - timedelta(minutes=1)


def test_second_failed_search_fails_the_run_with_the_hresult():
    v = awaiting_result(cycle=2, kb_failures={"<search>": 1})
    d = search_failed(v)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "the update search failed 2 times (last: result code 4, HRESULT 0x8024402C)"
    assert d.view.kb_failures == {"<search>": 2}
    assert d.initiation is not None
    assert d.initiation.end_message == "Update Search Failed: result code 4, HRESULT 0x8024402C"


def test_failed_searches_count_across_successful_cycles():
    first = search_failed(awaiting_result(cycle=1))
    ok = finish_cycle(decide(first.view, PackageInvoked(), T0, POLICY).view, update("KB5000001"))
    d = search_failed(decide(ok.view, PackageInvoked(), T0, POLICY).view)
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "the update search failed 2 times (last: result code 4, HRESULT 0x8024402C)"


def test_failed_search_at_the_last_allowed_cycle_fails_the_run():
    d = search_failed(awaiting_result(cycle=POLICY.max_cycles))
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.initiation is not None and d.initiation.end_message.startswith("Update Search Failed: ")


def test_failed_search_threshold_is_the_kb_failure_policy_setting():
    d = search_failed(awaiting_result(cycle=1, kb_failures={"<search>": 1}), policy=Policy(max_kb_failures=3))
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.kb_failures == {"<search>": 2}


def test_failed_search_keeps_the_kb_ledger():
    v = awaiting_result(
        cycle=3, kb_failures={"KB5000002": 1}, installed_kbs=frozenset({"KB5000001"}), installed_count=1
    )
    d = search_failed(v)
    assert d.view.kb_failures == {"KB5000002": 1, "<search>": 1}
    assert d.view.installed_kbs == {"KB5000001"}
    assert d.view.installed_count == 1


def test_failed_batch_that_reported_updates_is_not_a_failed_search():
    d = decide(
        awaiting_result(cycle=1),
        CycleReported(report([failed("KB5000002")], result_code=ResultCode.FAILED, hresult=SEARCH_HRESULT)),
        T0,
        POLICY,
    )
    assert "<search>" not in d.view.kb_failures
    assert d.view.kb_failures == {"KB5000002": 1}
    assert d.initiation is not None and [p.kb for p in d.initiation.patches] == ["KB5000002"]


@pytest.mark.parametrize("code", [ResultCode.SUCCEEDED, ResultCode.SUCCEEDED_WITH_ERRORS])
def test_empty_search_that_did_not_fail_completes(code: ResultCode):
    d = search_failed(awaiting_result(cycle=1), code)
    assert d.view.outcome is Outcome.COMPLETED
    assert "<search>" not in d.view.kb_failures


# --- reboot -------------------------------------------------------------------------------------


def test_rebooting_asks_for_a_reboot_keyed_by_cycle():
    assert command_for(view(State.REBOOTING, cycle=3), T0, POLICY) == RebootServer(f"{EID}:reboot:3")


def test_reboot_requested_waits_for_the_boot_with_a_deadline():
    d = decide(view(State.REBOOTING, cycle=1), RebootRequested("b1"), T0, POLICY)
    assert d.view.state is State.AWAITING_BOOT
    assert d.view.boot_id_before == "b1"
    assert d.view.deadline_at == T0 + POLICY.reboot_timeout
    assert d.next_run_at == T0


def test_awaiting_boot_polls_the_server():
    v = view(State.AWAITING_BOOT, cycle=1, boot_id_before="b1", deadline_at=T0 + timedelta(minutes=1))
    assert command_for(v, T0, POLICY) == PollServer()


def test_server_down_keeps_waiting_for_the_boot():
    v = view(State.AWAITING_BOOT, cycle=1, boot_id_before="b1", deadline_at=T0 + timedelta(minutes=10))
    d = decide(v, ServerInspected(status(up=False, boot_id="b1")), T0, POLICY)
    assert d.view.state is State.AWAITING_BOOT
    assert d.next_run_at == T0 + POLICY.poll_interval


def test_server_up_with_the_old_boot_id_has_not_rebooted_yet():
    v = view(State.AWAITING_BOOT, cycle=1, boot_id_before="b1", deadline_at=T0 + timedelta(minutes=10))
    d = decide(v, ServerInspected(status(up=True, boot_id="b1")), T0, POLICY)
    assert d.view.state is State.AWAITING_BOOT


def test_server_down_with_a_new_boot_id_is_still_booting():
    v = view(State.AWAITING_BOOT, cycle=1, boot_id_before="b1", deadline_at=T0 + timedelta(minutes=10))
    d = decide(v, ServerInspected(status(up=False, boot_id="b2")), T0, POLICY)
    assert d.view.state is State.AWAITING_BOOT


def test_server_back_with_a_new_boot_id_starts_the_next_cycle():
    v = view(
        State.AWAITING_BOOT,
        cycle=1,
        boot_id_before="b1",
        reboot_reason="cycle 1 requires a reboot",
        deadline_at=T0 + timedelta(minutes=10),
    )
    d = settled(decide(v, ServerInspected(status(up=True, boot_id="b2")), T0, POLICY).view)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 2
    assert d.view.boot_id_before is None
    assert d.view.reboot_reason is None
    assert d.view.deadline_at is None


def test_reboot_deadline_takes_a_last_look_at_the_server():
    v = view(State.AWAITING_BOOT, cycle=2, boot_id_before="b1", deadline_at=T0)
    assert command_for(v, T0 + timedelta(minutes=1), POLICY) == PollServer()


def test_server_not_back_after_the_reboot_deadline_fails_the_run_and_cleans_up():
    v = view(State.AWAITING_BOOT, cycle=2, boot_id_before="b1", deadline_at=T0)
    d = decide(v, ServerInspected(status(up=False, boot_id="b1")), T0 + timedelta(minutes=1), POLICY)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == f"server {SERVER} did not come back within 20m 0s after the reboot of cycle 2"
    assert d.view.deadline_at is None


def test_server_up_with_the_old_boot_id_at_the_reboot_deadline_fails_the_run():
    v = view(State.AWAITING_BOOT, cycle=2, boot_id_before="b1", deadline_at=T0)
    d = decide(v, ServerInspected(status(up=True, boot_id="b1")), T0, POLICY)
    assert d.view.outcome is Outcome.FAILED
    assert d.view.state is State.EXITING_MAINTENANCE


def test_server_back_exactly_at_the_reboot_deadline_is_not_failed():
    v = view(
        State.AWAITING_BOOT, cycle=2, boot_id_before="b1", reboot_reason="cycle 2 requires a reboot", deadline_at=T0
    )
    d = decide(v, ServerInspected(status(up=True, boot_id="b2")), T0, POLICY)
    assert d.view.state is State.SETTLING  # back in time; the settle wait is bounded by the same deadline
    d = settled(d.view)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 3
    assert d.view.outcome is None
    assert d.view.failure_reason is None
    assert d.view.deadline_at is None


# --- polling and deadlines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.AWAITING_POWER, ServerInspected(status(up=False))),
        (State.AWAITING_BOOT, ServerInspected(status(up=False))),
        (State.AWAITING_RESULT, CycleReported(report(running=True))),
    ],
)
def test_poll_never_schedules_past_the_deadline(state: State, event):
    deadline = T0 + timedelta(seconds=10)
    v = view(state, cycle=1, boot_id_before="b1", deadline_at=deadline)
    d = decide(v, event, T0, POLICY)
    assert d.view.state is state
    assert d.next_run_at == deadline
    assert d.view.deadline_at == deadline


def test_poll_far_from_the_deadline_waits_one_interval():
    v = view(State.AWAITING_POWER, deadline_at=T0 + timedelta(hours=1))
    d = decide(v, ServerInspected(status(up=False)), T0, Policy(poll_interval=timedelta(seconds=7)))
    assert d.next_run_at == T0 + timedelta(seconds=7)


def test_poll_exactly_one_interval_before_the_deadline_polls_at_the_deadline():
    v = view(State.AWAITING_POWER, deadline_at=T0 + POLICY.poll_interval)
    d = decide(v, ServerInspected(status(up=False)), T0, POLICY)
    assert d.next_run_at == T0 + POLICY.poll_interval


@pytest.mark.parametrize("state", sorted(WAITING))
def test_waiting_state_before_its_deadline_does_its_normal_command(state: State):
    v = view(state, cycle=1, deadline_at=T0 + timedelta(seconds=1))
    assert not isinstance(command_for(v, T0, POLICY), Abandon)


@pytest.mark.parametrize("late", [timedelta(0), timedelta(hours=2)], ids=["at", "after"])
@pytest.mark.parametrize("state", sorted(WAITING))
def test_waiting_state_at_or_after_its_deadline_still_does_its_normal_command(state: State, late: timedelta):
    v = view(state, cycle=1, deadline_at=T0)
    assert command_for(v, T0 + late, POLICY) == command_for(dataclasses.replace(v, deadline_at=None), T0, POLICY)


STILL_WAITING = [
    (State.AWAITING_POWER, ServerInspected(status(up=False))),
    (State.AWAITING_BOOT, ServerInspected(status(up=False))),
    (State.AWAITING_RESULT, CycleReported(report(running=True))),
]


@pytest.mark.parametrize("late", [timedelta(0), timedelta(hours=2)], ids=["at", "after"])
@pytest.mark.parametrize(("state", "event"), STILL_WAITING, ids=[s.value for s, _ in STILL_WAITING])
def test_look_at_or_after_the_deadline_that_still_sees_waiting_fails_the_run(state: State, event, late: timedelta):
    v = view(state, cycle=1, boot_id_before="b1", deadline_at=T0, attempts=2, last_error="HTTP 503")
    d = decide(v, event, T0 + late, POLICY)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.deadline_at is None
    assert d.view.attempts == 0 and d.view.last_error is None
    assert d.next_run_at == T0 + late
    assert d.emails == ()


@pytest.mark.parametrize(("state", "event"), STILL_WAITING, ids=[s.value for s, _ in STILL_WAITING])
def test_look_just_before_the_deadline_that_still_sees_waiting_polls_at_the_deadline(state: State, event):
    v = view(state, cycle=1, boot_id_before="b1", deadline_at=T0)
    d = decide(v, event, T0 - timedelta(microseconds=1), POLICY)
    assert d.view.state is state
    assert d.view.outcome is None
    assert d.next_run_at == T0


def test_waiting_state_without_a_deadline_keeps_polling():
    assert command_for(view(State.AWAITING_BOOT, cycle=1), T0 + timedelta(days=9), POLICY) == PollServer()


def test_deadline_timeouts_are_policy_settings():
    policy = Policy(reboot_timeout=timedelta(minutes=7, seconds=3))
    v = view(State.AWAITING_BOOT, cycle=1, boot_id_before="b1", deadline_at=T0)
    d = decide(v, ServerInspected(status(up=False)), T0, policy)
    assert d.view.failure_reason == f"server {SERVER} did not come back within 7m 3s after the reboot of cycle 1"


def test_deadline_is_ignored_outside_waiting_states():
    v = view(State.REBOOTING, cycle=1, deadline_at=T0 - timedelta(hours=1))
    assert command_for(v, T0, POLICY) == RebootServer(f"{EID}:reboot:1")


# --- cancel and attempts ------------------------------------------------------------------------


@pytest.mark.parametrize("state", NORMAL_STATES)
def test_cancel_abandons_every_normal_state(state: State):
    v = view(state, cycle=1, cancel_requested=True, cancelled_by="bob", deadline_at=T0 + timedelta(hours=1))
    assert command_for(v, T0, POLICY) == Abandon(Outcome.CANCELLED, "cancelled by bob")


def test_cancel_without_a_name_is_by_an_operator():
    v = view(State.INVOKING_PACKAGE, cycle=1, cancel_requested=True, cancel_reason="wrong server")
    assert command_for(v, T0, POLICY) == Abandon(Outcome.CANCELLED, "cancelled by an operator: wrong server")


@pytest.mark.parametrize("state", [State.EXITING_MAINTENANCE, State.RESTORING_POWER])
def test_cancel_is_ignored_during_cleanup(state: State):
    v = view(state, outcome=Outcome.FAILED, cancel_requested=True)
    assert not isinstance(command_for(v, T0, POLICY), Abandon)


def test_cancel_takes_precedence_over_attempts_and_deadline():
    v = view(State.AWAITING_BOOT, cycle=1, cancel_requested=True, attempts=99, deadline_at=T0)
    cmd = command_for(v, T0, POLICY)
    assert isinstance(cmd, Abandon)
    assert cmd.outcome is Outcome.CANCELLED


@pytest.mark.parametrize("state", NORMAL_STATES)
def test_cancelled_run_cleans_up_from_every_normal_state_but_requested(state: State):
    v = view(state, cycle=2, deadline_at=T0 + timedelta(minutes=1) if state in WAITING else None)
    d = decide(v, Abandoned(Outcome.CANCELLED, "cancelled by bob"), T0, POLICY)
    if state is State.REQUESTED:
        assert d.view.state is State.CANCELLED
    else:
        assert d.view.state is State.EXITING_MAINTENANCE
        assert d.view.outcome is Outcome.CANCELLED
        assert d.view.failure_reason == "cancelled by bob"
        assert d.view.deadline_at is None
        assert d.next_run_at == T0
        assert d.emails == ()


def test_cancelled_run_ends_cancelled_after_cleanup():
    v = view(
        State.EXITING_MAINTENANCE,
        outcome=Outcome.CANCELLED,
        failure_reason="cancelled by bob",
        prior_power_state=PowerState.STARTED,
    )
    d = decide(v, MaintenanceSet(False), T0, POLICY)
    assert d.view.state is State.CANCELLED
    assert d.view.failure_reason == "cancelled by bob"
    assert status_of(d.view.state) == "cancelled"


def test_attempts_at_the_limit_still_try():
    v = view(State.ENTERING_MAINTENANCE, attempts=POLICY.max_attempts, last_error="boom")
    assert isinstance(command_for(v, T0, POLICY), SetMaintenance)


def test_attempts_exceeded_abandons_a_normal_state_as_failed():
    v = view(State.ENTERING_MAINTENANCE, attempts=POLICY.max_attempts + 1, last_error="HTTP 503")
    cmd = command_for(v, T0, POLICY)
    assert cmd == Abandon(Outcome.FAILED, "turning maintenance mode on failed 5 times: HTTP 503")
    d = decide(v, Abandoned(cmd.outcome, cmd.reason), T0, POLICY)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED


def test_attempts_exceeded_without_an_error_text():
    v = view(State.REBOOTING, cycle=1, attempts=3)
    assert command_for(v, T0, Policy(max_attempts=2)) == Abandon(Outcome.FAILED, "rebooting the server failed 2 times")


def test_attempts_exceeded_while_requested_fails_without_cleanup():
    v = view(State.REQUESTED, attempts=POLICY.max_attempts + 1, last_error="unreachable")
    cmd = command_for(v, T0, POLICY)
    assert cmd == Abandon(Outcome.FAILED, "inspecting the server failed 5 times: unreachable")
    d = decide(v, Abandoned(cmd.outcome, cmd.reason), T0, POLICY)
    assert d.view.state is State.FAILED


@pytest.mark.parametrize("state", [State.EXITING_MAINTENANCE, State.RESTORING_POWER])
def test_attempts_exceeded_abandons_a_cleanup_state_as_failed(state: State):
    v = view(state, outcome=Outcome.COMPLETED, attempts=POLICY.max_attempts + 1, last_error="x")
    cmd = command_for(v, T0, POLICY)
    assert isinstance(cmd, Abandon)
    assert cmd.outcome is Outcome.FAILED
    assert "failed 5 times: x" in cmd.reason


def test_completed_run_whose_cleanup_fails_ends_failed():
    v = view(State.EXITING_MAINTENANCE, outcome=Outcome.COMPLETED)
    d = decide(v, Abandoned(Outcome.FAILED, "turning maintenance mode off failed 5 times"), T0, POLICY)
    assert d.view.state is State.FAILED
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "cleanup stopped: turning maintenance mode off failed 5 times"
    assert d.emails == ("end",)
    assert d.next_run_at is None


def test_failed_run_whose_cleanup_fails_keeps_both_reasons():
    v = view(
        State.RESTORING_POWER, outcome=Outcome.FAILED, failure_reason="deadline", prior_power_state=PowerState.STOPPED
    )
    d = decide(v, Abandoned(Outcome.FAILED, "power off refused"), T0, POLICY)
    assert d.view.state is State.FAILED
    assert d.view.failure_reason == "deadline; cleanup stopped: power off refused"


def test_cancelled_run_whose_cleanup_fails_stays_cancelled():
    v = view(State.EXITING_MAINTENANCE, outcome=Outcome.CANCELLED, failure_reason="cancelled by bob")
    d = decide(v, Abandoned(Outcome.FAILED, "boom"), T0, POLICY)
    assert d.view.state is State.CANCELLED
    assert d.view.failure_reason == "cancelled by bob; cleanup stopped: boom"


def test_decision_resets_attempts_and_last_error():
    v = view(State.ENTERING_MAINTENANCE, attempts=3, last_error="HTTP 503")
    d = decide(v, MaintenanceSet(True), T0, POLICY)
    assert d.view.attempts == 0
    assert d.view.last_error is None


def test_poll_resets_attempts_and_last_error():
    v = view(State.AWAITING_POWER, attempts=3, last_error="HTTP 503", deadline_at=T0 + timedelta(hours=1))
    d = decide(v, ServerInspected(status(up=False)), T0, POLICY)
    assert d.view.attempts == 0
    assert d.view.last_error is None


def test_abandon_resets_attempts():
    v = view(State.ENTERING_MAINTENANCE, attempts=6, last_error="x")
    d = decide(v, Abandoned(Outcome.FAILED, "x"), T0, POLICY)
    assert d.view.attempts == 0


# --- cleanup ------------------------------------------------------------------------------------


def test_exiting_maintenance_turns_it_off():
    v = view(State.EXITING_MAINTENANCE, cycle=2, outcome=Outcome.COMPLETED)
    assert command_for(v, T0, POLICY) == SetMaintenance(False, f"{EID}:maintenance_off:2")


@pytest.mark.parametrize("outcome", list(Outcome))
def test_maintenance_off_on_a_started_server_ends_with_the_decided_outcome(outcome: Outcome):
    v = view(State.EXITING_MAINTENANCE, outcome=outcome, prior_power_state=PowerState.STARTED)
    d = decide(v, MaintenanceSet(False), T0, POLICY)
    assert d.view.state is TERMINAL_OF[outcome]
    assert d.view.outcome is outcome
    assert d.next_run_at is None
    assert d.emails == ("end",)


def test_maintenance_off_without_a_known_prior_power_state_ends():
    d = decide(view(State.EXITING_MAINTENANCE, outcome=Outcome.FAILED), MaintenanceSet(False), T0, POLICY)
    assert d.view.state is State.FAILED


def test_maintenance_off_without_an_outcome_ends_completed():
    d = decide(view(State.EXITING_MAINTENANCE), MaintenanceSet(False), T0, POLICY)
    assert d.view.state is State.COMPLETED


@pytest.mark.parametrize("prior", [PowerState.STOPPED, PowerState.PAUSED])
def test_server_that_was_not_started_has_its_power_restored(prior: PowerState):
    v = view(State.EXITING_MAINTENANCE, outcome=Outcome.COMPLETED, prior_power_state=prior)
    d = decide(v, MaintenanceSet(False), T0, POLICY)
    assert d.view.state is State.RESTORING_POWER
    assert d.emails == ()
    assert d.next_run_at == T0


def test_maintenance_on_event_during_cleanup_is_a_transition_error():
    with pytest.raises(TransitionError):
        decide(view(State.EXITING_MAINTENANCE, outcome=Outcome.FAILED), MaintenanceSet(True), T0, POLICY)


def test_restoring_power_powers_the_server_off():
    v = view(State.RESTORING_POWER, cycle=4, outcome=Outcome.COMPLETED, prior_power_state=PowerState.STOPPED)
    assert command_for(v, T0, POLICY) == PowerOff(f"{EID}:power_off:4")


def test_power_off_ends_the_run_with_its_outcome():
    v = view(State.RESTORING_POWER, outcome=Outcome.COMPLETED, prior_power_state=PowerState.STOPPED)
    d = decide(v, PowerOffRequested(), T0, POLICY)
    assert d.view.state is State.COMPLETED
    assert d.note == "server powered off again (it was stopped before the run)"
    assert d.emails == ("end",)
    assert d.next_run_at is None


def test_power_off_note_names_the_prior_power_state_of_a_paused_server():
    v = view(State.RESTORING_POWER, outcome=Outcome.FAILED, prior_power_state=PowerState.PAUSED)
    d = decide(v, PowerOffRequested(), T0, POLICY)
    assert d.view.state is State.FAILED
    assert d.note == "server powered off again (it was paused before the run)"


def test_powered_off_server_path_restores_power_at_the_end():
    """A stopped server: power on, patch one cycle, then maintenance off and stopped again."""
    v = view()
    visited = [v.state]
    steps: list[object] = [
        ServerInspected(status(up=False, power=PowerState.STOPPED)),
        PowerOnRequested(),
        ServerInspected(status(up=False, boot_id="b1")),
        ServerInspected(status(up=True, boot_id="b1")),
        MaintenanceSet(True),
        ServerInspected(status()),
        PackageInvoked(),
        CycleReported(report([update("KB5000001", reboot=True)], reboot_required=True)),
        RebootRequested("b1"),
        ServerInspected(status(boot_id="b2")),
        SettleChecked(SettleStatus(up=True, boot_id="b2", idle=True)),
        PackageInvoked(),
        CycleReported(report()),
        MaintenanceSet(False),
        PowerOffRequested(),
    ]
    d: Decision | None = None
    for event in steps:
        d = decide(v, event, T0, SETTLED)  # type: ignore[arg-type]
        v = d.view
        if visited[-1] is not v.state:
            visited.append(v.state)
    assert d is not None
    assert visited == [
        State.REQUESTED,
        State.POWERING_ON,
        State.AWAITING_POWER,
        State.ENTERING_MAINTENANCE,
        State.CHECKING_PENDING_REBOOT,
        State.INVOKING_PACKAGE,
        State.AWAITING_RESULT,
        State.REBOOTING,
        State.AWAITING_BOOT,
        State.SETTLING,
        State.INVOKING_PACKAGE,
        State.AWAITING_RESULT,
        State.EXITING_MAINTENANCE,
        State.RESTORING_POWER,
        State.COMPLETED,
    ]
    assert v.installed_count == 1
    assert v.cycle == 2
    assert d.emails == ("end",)


# --- transition errors, terminal states, status ---------------------------------------------------


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_view_has_no_command(state: State):
    with pytest.raises(TransitionError):
        command_for(view(state), T0, POLICY)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_view_takes_no_event_not_even_abandon(state: State):
    with pytest.raises(TransitionError):
        decide(view(state), Abandoned(Outcome.CANCELLED, "late cancel"), T0, POLICY)
    with pytest.raises(TransitionError):
        decide(view(state), ServerInspected(status()), T0, POLICY)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.REQUESTED, PowerOnRequested()),
        (State.POWERING_ON, ServerInspected(status())),
        (State.AWAITING_POWER, PowerOnRequested()),
        (State.CHECKING_PENDING_REBOOT, PackageInvoked()),
        (State.INVOKING_PACKAGE, CycleReported(report())),
        (State.AWAITING_RESULT, PackageInvoked()),
        (State.REBOOTING, ServerInspected(status())),
        (State.AWAITING_BOOT, RebootRequested("b1")),
        (State.EXITING_MAINTENANCE, PowerOffRequested()),
        (State.RESTORING_POWER, MaintenanceSet(False)),
    ],
)
def test_event_the_state_cannot_take_is_a_transition_error(state: State, event):
    with pytest.raises(TransitionError):
        decide(view(state, cycle=1, outcome=Outcome.FAILED if state in CLEANUP else None), event, T0, POLICY)


@pytest.mark.parametrize(
    ("state", "command"),
    [
        (State.REQUESTED, InspectServer()),
        (State.POWERING_ON, PowerOn(f"{EID}:power_on:1")),
        (State.AWAITING_POWER, PollServer()),
        (State.ENTERING_MAINTENANCE, SetMaintenance(True, f"{EID}:maintenance_on:1")),
        (State.CHECKING_PENDING_REBOOT, InspectServer()),
        (State.INVOKING_PACKAGE, InvokeUpdatePackage(1, f"{EID}:package:1", (), T0 + POLICY.package_timeout, 300)),
        (State.AWAITING_RESULT, FetchCycleResult(f"{EID}:package:1")),
        (State.REBOOTING, RebootServer(f"{EID}:reboot:1")),
        (State.AWAITING_BOOT, PollServer()),
        (State.EXITING_MAINTENANCE, SetMaintenance(False, f"{EID}:maintenance_off:1")),
        (State.RESTORING_POWER, PowerOff(f"{EID}:power_off:1")),
    ],
)
def test_each_state_asks_for_its_command(state: State, command):
    assert command_for(view(state, cycle=1, deadline_at=T0 + timedelta(minutes=1)), T0, POLICY) == command


def test_every_non_terminal_state_has_a_command():
    for state in State:
        if state not in TERMINAL:
            assert command_for(view(state), T0, POLICY) is not None


def test_view_key_names_the_step_and_cycle():
    assert view(cycle=7).key("reboot") == f"{EID}:reboot:7"


def test_terminal_property():
    assert {s for s in State if view(s).terminal} == {State.COMPLETED, State.FAILED, State.CANCELLED}


@pytest.mark.parametrize("state", [s for s in State if s not in TERMINAL])
def test_status_of_a_non_terminal_state_is_pending(state: State):
    assert status_of(state) == "pending"


@pytest.mark.parametrize(
    ("state", "expected"),
    [(State.COMPLETED, "completed"), (State.FAILED, "failed"), (State.CANCELLED, "cancelled")],
)
def test_status_of_a_terminal_state_is_its_name(state: State, expected: str):
    assert status_of(state) == expected


# --- property: random plausible runs ----------------------------------------------------------

BEHAVIOURS = ("ok", "reboot", "fail_once", "fail_always", "rollback", "phantom")


@dataclass
class FakeServer:
    """Just enough of a Windows server and its control plane to answer the machine's commands."""

    power: PowerState
    pending_reboot: bool
    catalog: dict[str, str]
    stuck: bool  # never comes back from a reboot (or a power-on)
    up: bool = False
    boot: int = 1
    in_maintenance: bool = False
    installed: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    tries: dict[str, int] = field(default_factory=dict)
    booting: bool = False
    going_down: bool = False  # a reboot was asked for but the server still answers with its old boot id
    reports: dict[str, CycleReport] = field(default_factory=dict)

    def status(self) -> ServerStatus:
        return status(
            up=self.up,
            boot_id=f"b{self.boot}",
            power=self.power,
            pending_reboot=self.pending_reboot or bool(self.pending),
            in_maintenance=self.in_maintenance,
        )

    def maybe_finish_boot(self, done: bool) -> None:
        if self.going_down:
            self.going_down, self.up = not done, not done
            return
        if self.booting and done and not self.stuck:
            self.booting = False
            self.up = True
            self.boot += 1
            self.installed |= {kb for kb in self.pending if self.catalog[kb] != "rollback"}
            self.pending.clear()
            self.pending_reboot = False

    def offered(self, exclude: tuple[str, ...] = ()) -> list[str]:
        return [kb for kb in sorted(self.catalog) if kb not in self.installed | self.pending and kb not in exclude]

    def run_cycle(self, exclude: tuple[str, ...]) -> CycleReport:
        results = []
        for kb in self.offered(exclude):
            behaviour = self.catalog[kb]
            self.tries[kb] = self.tries.get(kb, 0) + 1
            bad = behaviour == "fail_always" or (behaviour == "fail_once" and self.tries[kb] == 1)
            if not bad and behaviour in ("reboot", "rollback"):
                self.pending.add(kb)
            elif not bad and behaviour != "phantom":
                self.installed.add(kb)
            results.append(
                update(
                    kb,
                    code=ResultCode.FAILED if bad else ResultCode.SUCCEEDED,
                    hresult=0x80070643 if bad else 0,
                    reboot=not bad and kb in self.pending,
                )
            )
        return report(results, reboot_required=bool(self.pending) or self.pending_reboot)


def perform(server: FakeServer, command, data) -> object:
    """The engine's job, in miniature: one command against the fake server, as an event."""
    match command:
        case Abandon(outcome=outcome, reason=reason):
            return Abandoned(outcome, reason)
        case InspectServer():
            return ServerInspected(server.status())
        case PollServer():
            server.maybe_finish_boot(data.draw(st.integers(0, 2), label="boot not done yet") != 2)
            return ServerInspected(server.status())
        case CheckSettled():  # back from a reboot: the servicing stack is sometimes still busy
            busy = data.draw(st.integers(0, 3), label="servicing stack busy") == 3
            return SettleChecked(SettleStatus(up=server.up, boot_id=f"b{server.boot}", idle=server.up and not busy))
        case PowerOn():
            if server.power is not PowerState.STARTED:
                server.power, server.booting, server.up = PowerState.STARTED, True, False
            return PowerOnRequested()
        case SetMaintenance(on=on):
            server.in_maintenance = on
            return MaintenanceSet(on)
        case InvokeUpdatePackage(key=key, exclude_kbs=exclude):
            assert server.up and not server.booting, "the package was invoked on a server that is not up"
            if key not in server.reports:
                server.reports[key] = server.run_cycle(exclude)
            return PackageInvoked()
        case FetchCycleResult(key=key):
            if data.draw(st.integers(0, 2), label="still running") == 2:
                return CycleReported(report(running=True))
            return CycleReported(server.reports[key])
        case RebootServer():
            before = f"b{server.boot}"
            server.booting, server.going_down = True, True
            return RebootRequested(before)
        case PowerOff():
            server.power, server.up = PowerState.STOPPED, False
            return PowerOffRequested()
    raise AssertionError(f"unknown command {command!r}")  # pragma: no cover


kb_names = st.integers(5000000, 5000020).map(lambda n: f"KB{n}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    power=st.sampled_from(list(PowerState)),
    pending_reboot=st.booleans(),
    catalog=st.dictionaries(kb_names, st.sampled_from(BEHAVIOURS), max_size=6),
    stuck=st.integers(0, 9).map(lambda n: n == 0),
    max_cycles=st.integers(1, 6),
    max_attempts=st.integers(1, 3),
    chaos=st.sampled_from([0, 0, 1, 3]),  # percent per step of: cancel, clock jump; 4x that of fleet errors
    data=st.data(),
)
def test_random_runs_keep_the_invariants(power, pending_reboot, catalog, stuck, max_cycles, max_attempts, chaos, data):
    policy = Policy(
        max_cycles=max_cycles,
        max_attempts=max_attempts,
        reboot_timeout=timedelta(minutes=3),
        package_timeout=timedelta(minutes=4),
        power_timeout=timedelta(minutes=3),
        poll_interval=timedelta(seconds=40),
        settle_period=timedelta(seconds=50),
    )
    server = FakeServer(
        power=power, pending_reboot=pending_reboot, catalog=catalog, stuck=stuck, up=power is PowerState.STARTED
    )
    v = view()
    now = T0
    visited = [v.state]
    last_finished: CycleReport | None = None
    for _ in range(2000):
        # the engine's claim counts the attempt; a transient fleet error keeps it and retries later
        v = dataclasses.replace(v, attempts=v.attempts + 1)
        roll = data.draw(st.integers(0, 99), label="what happens") if chaos else 99
        if roll < chaos and not v.cancel_requested:
            v = dataclasses.replace(v, cancel_requested=True, cancelled_by="op")
        if chaos <= roll < 2 * chaos:
            now += timedelta(minutes=data.draw(st.integers(1, 10), label="clock jump"))

        before = v
        command = command_for(v, now, policy)
        # cleanup is never cancelled: it only stops when its own step keeps failing
        if v.state in CLEANUP and isinstance(command, Abandon):
            assert command.outcome is Outcome.FAILED and " failed " in command.reason
        if 2 * chaos <= roll < 6 * chaos and not isinstance(command, Abandon):
            # the fleet failed transiently before doing anything: no decision, the attempt stays counted
            v = dataclasses.replace(v, last_error="transient")
            now += timedelta(seconds=data.draw(st.integers(1, 120), label="backoff"))
            continue
        event = perform(server, command, data)
        d = decide(v, event, now, policy)  # type: ignore[arg-type]
        v = d.view
        if isinstance(event, CycleReported) and event.report.state is CycleState.FINISHED:
            last_finished = event.report
            # a KB offered again after it installed is quarantined as a loop
            for result in event.report.updates:
                if result.kb in before.installed_kbs:
                    assert v.quarantined.get(result.kb, "").startswith("update loop")

        # attempts reset after a decision
        assert v.attempts == 0 and v.last_error is None
        # cycle is bounded and never goes back
        assert 0 <= v.cycle <= policy.max_cycles
        assert v.cycle >= before.cycle
        # only waiting states carry a deadline, and the next look is never past it
        assert (v.deadline_at is not None) == (v.state in WAITING)
        if v.deadline_at is not None and d.next_run_at is not None and v.state is before.state:
            assert d.next_run_at <= v.deadline_at
        # cleanup knows how the run ends
        if v.state in CLEANUP:
            assert v.outcome is not None
        if v.state is State.RESTORING_POWER:
            assert v.prior_power_state is not PowerState.STARTED
        # an initiation is recorded exactly when a cycle finishes
        finished = isinstance(event, CycleReported) and event.report.state is CycleState.FINISHED
        assert (d.initiation is not None) == finished

        if visited[-1] is not v.state:
            visited.append(v.state)
        if v.terminal:
            assert d.next_run_at is None
            assert d.emails == ("end",)
            assert v.state is TERMINAL_OF[v.outcome]  # type: ignore[index]
            break
        assert d.emails == ()
        assert d.next_run_at is not None and d.next_run_at >= now
        now = d.next_run_at
    else:
        pytest.fail(f"run did not end: {visited}")

    note_event(f"ended {v.state.value}")
    note_event(f"ended after {v.cycle} of {policy.max_cycles} cycles")
    note_event(f"quarantined {len(v.quarantined)}")
    note_event(f"reason: {(v.failure_reason or 'none')[:30]}")
    # a finished run never moves again
    with pytest.raises(TransitionError):
        command_for(v, now, policy)
    with pytest.raises(TransitionError):
        decide(v, Abandoned(Outcome.CANCELLED, "late"), now, policy)
    # it went through cleanup, unless it ended before touching the server
    if visited[-2] is not State.REQUESTED:
        assert State.EXITING_MAINTENANCE in visited
    else:
        assert visited == [State.REQUESTED, v.state]
        assert v.state is not State.COMPLETED
    # a run that cleaned up without trouble leaves the server as it found it (a paused one ends stopped)
    if isinstance(event, MaintenanceSet | PowerOffRequested):
        assert not server.in_maintenance
        assert (server.power is PowerState.STARTED) == (power is PowerState.STARTED)
    # a completed run left nothing to install, nothing quarantined, no reboot owed
    if v.state is State.COMPLETED:
        assert last_finished is not None and last_finished.updates == () and not last_finished.reboot_required
        assert v.quarantined == {}
        assert v.failure_reason is None  # a cleanup that had to stop never ends COMPLETED
        assert server.offered() == []
        assert not server.pending
    # a run failed for quarantined KBs names every one of them
    if v.state is State.FAILED and "could not be installed" in (v.failure_reason or ""):
        assert v.quarantined
        assert all(kb in (v.failure_reason or "") for kb in v.quarantined)
    # a cancelled run was asked to be cancelled
    if v.state is State.CANCELLED:
        assert v.cancel_requested
    # a KB is quarantined only for a loop or for failing max_kb_failures times
    for kb, why in v.quarantined.items():
        assert why.startswith("update loop") or v.kb_failures.get(kb, 0) >= policy.max_kb_failures
