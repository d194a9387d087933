"""The execution state machine under patch selection (the package parameters): scan only, excluded KBs,
and the reboot policies never and always."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain import machine
from orchestrator.domain.machine import (
    CycleReported,
    Decision,
    ExecutionView,
    InvokeUpdatePackage,
    MaintenanceSet,
    Outcome,
    PackageInvoked,
    Policy,
    PollServer,
    RebootRequested,
    ServerInspected,
    State,
    command_for,
    decide,
)
from schemas.fleet import CycleReport, CycleState, PowerState, ResultCode, ServerStatus, SettleStatus, UpdateResult

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
POLICY = Policy()
EID = "VA1-123456"
SERVER = "VA1OSDPATCH33"
SCAN_ONLY = {"scanOnly": True}
NEVER = {"rebootPolicy": "never"}
ALWAYS = {"rebootPolicy": "always"}


def view(state: State, parameters: dict[str, object] | None = None, **kw: object) -> ExecutionView:
    return ExecutionView(id=EID, server=SERVER, state=state, parameters=parameters or {}, **kw)  # type: ignore[arg-type]


def awaiting_result(parameters: dict[str, object] | None = None, cycle: int = 1, **kw: object) -> ExecutionView:
    return view(State.AWAITING_RESULT, parameters, cycle=cycle, deadline_at=T0 + POLICY.package_timeout, **kw)


def status(up: bool = True, boot_id: str = "b1", pending_reboot: bool = False) -> ServerStatus:
    return ServerStatus(
        name=SERVER,
        os_type="windows2019",
        power_state=PowerState.STARTED,
        in_maintenance=True,
        up=up,
        boot_id=boot_id,
        pending_reboot=pending_reboot,
    )


def update(kb: str, ok: bool = True, reboot: bool = False) -> UpdateResult:
    return UpdateResult(
        kb=kb,
        title=f"Security update {kb}",
        url=f"https://support.example/{kb}",
        result_code=ResultCode.SUCCEEDED if ok else ResultCode.FAILED,
        hresult=0 if ok else 0x80070643,
        reboot_required=reboot,
    )


def finish_cycle(v: ExecutionView, *updates: UpdateResult, reboot: bool = False) -> Decision:
    rep = CycleReport(
        key=v.key("package"),
        state=CycleState.FINISHED,
        started_at=T0 - timedelta(minutes=5),
        finished_at=T0,
        updates=updates,
        reboot_required=reboot,
    )
    return decide(v, CycleReported(rep), T0, POLICY)


def back_from_reboot(v: ExecutionView) -> Decision:
    """REBOOTING → reboot requested → the server is back with a new boot id → settled (idle for the period)."""
    waiting = decide(v, RebootRequested("b1"), T0, POLICY).view
    assert waiting.state is State.AWAITING_BOOT
    settling = decide(waiting, ServerInspected(status(boot_id="b2")), T0, POLICY).view
    assert settling.state is State.SETTLING
    idle = machine.SettleChecked(SettleStatus(up=True, boot_id="b2", idle=True))
    settling = decide(settling, idle, T0, POLICY).view
    return decide(settling, idle, T0 + POLICY.settle_period, POLICY)


# --- scan only ----------------------------------------------------------------------------------


def test_scan_only_records_every_patch_as_pending():
    d = finish_cycle(awaiting_result(SCAN_ONLY), update("KB5000001"), update("KB5000002", ok=False))
    assert d.initiation is not None
    assert [(p.kb, p.status) for p in d.initiation.patches] == [("KB5000001", "pending"), ("KB5000002", "pending")]


def test_scan_only_initiation_says_what_would_be_installed():
    d = finish_cycle(awaiting_result(SCAN_ONLY), update("KB5000001"), update("KB5000002"))
    assert d.initiation is not None
    assert d.initiation.end_message == (
        "Scan Complete: 2 updates would be installed##https://support.example/KB5000001 "
        "https://support.example/KB5000002##"
    )
    assert d.initiation.updates_found == 2


def test_scan_only_completes_after_the_first_cycle_via_cleanup():
    d = finish_cycle(awaiting_result(SCAN_ONLY), update("KB5000001"))
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.COMPLETED
    assert d.view.failure_reason is None
    assert d.view.cycle == 1


def test_scan_only_does_not_reboot_when_the_cycle_requires_one():
    d = finish_cycle(awaiting_result(SCAN_ONLY), update("KB5000001", reboot=True), reboot=True)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.COMPLETED
    assert d.view.reboot_reason is None


def test_scan_only_leaves_the_kb_ledger_untouched():
    v = awaiting_result(SCAN_ONLY, kb_failures={"KB5000002": 1})
    d = finish_cycle(v, update("KB5000001"), update("KB5000002", ok=False))
    assert d.view.installed_count == 0
    assert d.view.installed_kbs == frozenset()
    assert d.view.kb_failures == {"KB5000002": 1}
    assert d.view.quarantined == {}


def test_scan_only_does_not_reboot_for_a_reboot_pending_before_the_run():
    v = view(State.CHECKING_PENDING_REBOOT, SCAN_ONLY)
    d = decide(v, ServerInspected(status(pending_reboot=True)), T0, POLICY)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 1
    assert d.view.reboot_reason is None


def test_scan_only_run_goes_through_one_cycle_and_cleanup():
    v = view(State.CHECKING_PENDING_REBOOT, SCAN_ONLY, prior_power_state=PowerState.STARTED)
    visited = [v.state]
    for event in (
        ServerInspected(status(pending_reboot=True)),
        PackageInvoked(),
        CycleReported(
            CycleReport(
                key=f"{EID}:package:1",
                state=CycleState.FINISHED,
                started_at=T0,
                finished_at=T0,
                updates=(update("KB5000001", reboot=True),),
                reboot_required=True,
            )
        ),
        MaintenanceSet(False),
    ):
        v = decide(v, event, T0, POLICY).view  # type: ignore[arg-type]
        visited.append(v.state)
    assert visited == [
        State.CHECKING_PENDING_REBOOT,
        State.INVOKING_PACKAGE,
        State.AWAITING_RESULT,
        State.EXITING_MAINTENANCE,
        State.COMPLETED,
    ]


# --- excluded KBs -------------------------------------------------------------------------------


def test_excluded_kbs_are_sent_to_the_package():
    v = view(State.INVOKING_PACKAGE, {"excludeKbs": ["KB5000009", "KB5000003"]}, cycle=1)
    assert command_for(v, T0, POLICY) == InvokeUpdatePackage(
        cycle=1, key=f"{EID}:package:1", exclude_kbs=("KB5000003", "KB5000009"),
        deadline=T0 + POLICY.package_timeout, heartbeat_seconds=POLICY.heartbeat_seconds,
    )


def test_excluded_kbs_are_merged_with_the_quarantined_ones_sorted_and_once():
    v = view(
        State.INVOKING_PACKAGE,
        {"excludeKbs": "KB5000009,KB5000002"},
        cycle=2,
        quarantined={"KB5000002": "failed 2 times (x)", "KB5000001": "update loop: y"},
    )
    cmd = command_for(v, T0, POLICY)
    assert isinstance(cmd, InvokeUpdatePackage)
    assert cmd.exclude_kbs == ("KB5000001", "KB5000002", "KB5000009")


# --- reboot policy never ------------------------------------------------------------------------


def test_reboot_policy_never_ends_the_updates_when_a_cycle_requires_a_reboot():
    d = finish_cycle(awaiting_result(NEVER, cycle=2), update("KB5000001", reboot=True), reboot=True)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.COMPLETED
    assert d.view.failure_reason is None
    assert d.view.reboot_reason == machine.REBOOT_SUPPRESSED
    assert d.view.installed_count == 1
    assert d.initiation is not None and d.initiation.reboot_required is True


def test_reboot_policy_never_with_a_quarantined_kb_fails_when_a_reboot_is_required():
    v = awaiting_result(NEVER, cycle=2, kb_failures={"KB5000002": 1})
    d = finish_cycle(v, update("KB5000001", reboot=True), update("KB5000002", ok=False), reboot=True)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == (
        "1 update could not be installed: KB5000002 failed 2 times (last: result code 4, HRESULT 0x80070643)"
    )
    assert d.view.reboot_reason == machine.REBOOT_SUPPRESSED


def test_reboot_policy_never_keeps_cycling_while_no_reboot_is_required():
    d = finish_cycle(awaiting_result(NEVER, cycle=1), update("KB5000001"))
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 2
    assert d.view.reboot_reason is None


def test_reboot_policy_never_completes_without_a_note_when_nothing_is_left():
    d = finish_cycle(awaiting_result(NEVER, cycle=2))
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.COMPLETED
    assert d.view.reboot_reason is None


def test_reboot_policy_never_does_not_reboot_for_a_reboot_pending_before_the_run():
    d = decide(view(State.CHECKING_PENDING_REBOOT, NEVER), ServerInspected(status(pending_reboot=True)), T0, POLICY)
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 1


# --- reboot policy always -----------------------------------------------------------------------


def test_reboot_policy_always_reboots_once_more_when_nothing_is_left():
    d = finish_cycle(awaiting_result(ALWAYS, cycle=3))
    assert d.view.state is State.REBOOTING
    assert d.view.reboot_reason == machine.FINAL_REBOOT
    assert d.view.outcome is None
    assert d.view.cycle == 3
    assert d.initiation is not None and d.initiation.updates_found == 0


def test_final_reboot_keeps_its_reason_while_waiting_for_the_boot():
    rebooting = finish_cycle(awaiting_result(ALWAYS, cycle=3)).view
    d = decide(rebooting, RebootRequested("b1"), T0, POLICY)
    assert d.view.state is State.AWAITING_BOOT
    assert d.view.reboot_reason == machine.FINAL_REBOOT


def test_server_back_from_the_final_reboot_ends_the_updates_completed():
    rebooting = finish_cycle(awaiting_result(ALWAYS, cycle=3)).view
    d = back_from_reboot(rebooting)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.COMPLETED
    assert d.view.failure_reason is None
    assert d.view.cycle == 3
    assert d.view.reboot_reason is None
    assert d.view.boot_id_before is None
    assert d.view.deadline_at is None


def test_final_reboot_at_the_last_allowed_cycle_still_completes():
    rebooting = finish_cycle(awaiting_result(ALWAYS, cycle=POLICY.max_cycles)).view
    d = back_from_reboot(rebooting)
    assert d.view.outcome is Outcome.COMPLETED


def test_final_reboot_with_quarantined_kbs_ends_the_updates_failed():
    rebooting = finish_cycle(awaiting_result(ALWAYS, cycle=3, quarantined={"KB5000002": "failed 2 times (x)"})).view
    assert rebooting.state is State.REBOOTING
    d = back_from_reboot(rebooting)
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == "1 update could not be installed: KB5000002 failed 2 times (x)"


def test_server_not_back_from_the_final_reboot_at_its_deadline_fails_the_run():
    v = view(
        State.AWAITING_BOOT, ALWAYS, cycle=3, boot_id_before="b1", reboot_reason=machine.FINAL_REBOOT, deadline_at=T0
    )
    assert command_for(v, T0, POLICY) == PollServer()
    d = decide(v, ServerInspected(status(up=False)), T0, POLICY)
    assert d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == f"server {SERVER} did not come back within 20m 0s after the reboot of cycle 3"


def test_reboot_policy_always_reboots_a_cycle_that_requires_it_then_searches_again():
    d = finish_cycle(awaiting_result(ALWAYS, cycle=1), update("KB5000001", reboot=True), reboot=True)
    assert d.view.state is State.REBOOTING
    assert d.view.reboot_reason == "cycle 1 requires a reboot"
    back = back_from_reboot(d.view)
    assert back.view.state is State.INVOKING_PACKAGE
    assert back.view.cycle == 2


def test_reboot_policy_always_keeps_cycling_while_updates_are_offered():
    d = finish_cycle(awaiting_result(ALWAYS, cycle=1), update("KB5000001"))
    assert d.view.state is State.INVOKING_PACKAGE
    assert d.view.cycle == 2


def test_reboot_policy_always_reboots_for_a_reboot_pending_before_the_run():
    d = decide(view(State.CHECKING_PENDING_REBOOT, ALWAYS), ServerInspected(status(pending_reboot=True)), T0, POLICY)
    assert d.view.state is State.REBOOTING
    assert d.view.reboot_reason == "a reboot was pending before the first cycle"


@pytest.mark.parametrize("parameters", [{}, {"rebootPolicy": "if_required"}], ids=["default", "if_required"])
def test_reboot_policy_if_required_completes_without_a_final_reboot(parameters: dict[str, object]):
    d = finish_cycle(awaiting_result(parameters, cycle=2))
    assert d.view.state is State.EXITING_MAINTENANCE
    assert d.view.outcome is Outcome.COMPLETED
    assert d.view.reboot_reason is None
