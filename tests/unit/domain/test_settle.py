"""Settled after every reboot (orchestrator/domain/settle.py): up with a new boot id, the servicing stack idle,
and idle for the settle period, all within the reboot's deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.domain.machine import (
    FINAL_REBOOT,
    WAITING,
    CheckSettled,
    ExecutionView,
    Outcome,
    Policy,
    ServerInspected,
    SettleChecked,
    State,
    command_for,
    decide,
)
from schemas.fleet import PowerState, ServerStatus, SettleStatus

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = Policy(settle_period=timedelta(seconds=60), poll_interval=timedelta(seconds=30),
                reboot_timeout=timedelta(minutes=20))
CONFIGURING = "configuring updates: TrustedInstaller is busy"


def back(reboot_reason: str = "cycle 1 requires a reboot", cycle: int = 1) -> ExecutionView:
    """A run whose server just came back from its reboot with a new boot id: SETTLING."""
    waiting = ExecutionView(id="VA1-000001", server="VA1OSDPATCH01", state=State.AWAITING_BOOT, cycle=cycle,
                            boot_id_before="b1", reboot_reason=reboot_reason, deadline_at=T0 + POLICY.reboot_timeout)
    status = ServerStatus(name="VA1OSDPATCH01", os_type="Windows 2012 R2", power_state=PowerState.STARTED,
                          in_maintenance=True, up=True, boot_id="b2", pending_reboot=False)
    d = decide(waiting, ServerInspected(status), T0, POLICY)
    assert d.view.state is State.SETTLING and d.next_run_at == T0
    assert "waiting for the servicing stack to settle" in d.note
    return d.view


def look(idle: bool = True, boot_id: str = "b2", up: bool = True, reboot_required: bool = False,
         detail: str = "") -> SettleChecked:
    return SettleChecked(SettleStatus(up=up, boot_id=boot_id, idle=idle, reboot_required=reboot_required,
                                      detail=detail))


def test_back_with_a_new_boot_id_settles_first_keeping_the_reboot_deadline() -> None:
    v = back()
    assert v.state in WAITING and v.deadline_at == T0 + POLICY.reboot_timeout and v.boot_id_before is None
    assert command_for(v, T0, POLICY) == CheckSettled()


def test_a_server_still_configuring_updates_is_waited_for_and_recorded_once() -> None:
    first = decide(back(), look(False, detail=CONFIGURING), T0, POLICY)
    assert first.view.state is State.SETTLING and first.view.settled_since is None
    assert first.note == f"waiting for the servicing stack to settle: {CONFIGURING}"
    assert first.audit  # the operator sees it in the history
    assert first.next_run_at == T0 + POLICY.poll_interval
    again = decide(first.view, look(False, detail=CONFIGURING), T0 + timedelta(seconds=30), POLICY)
    assert again.view.state is State.SETTLING and not again.audit  # the same observation: not recorded again


def test_idle_for_the_settle_period_starts_the_next_cycle() -> None:
    busy = decide(back(), look(False, detail=CONFIGURING), T0, POLICY).view
    t1 = T0 + timedelta(seconds=30)
    idle = decide(busy, look(), t1, POLICY)
    assert idle.view.state is State.SETTLING and idle.view.settled_since == t1 and idle.audit
    assert idle.next_run_at == t1 + POLICY.poll_interval  # 30 s, before the 60 s period is over
    mid = decide(idle.view, look(), t1 + timedelta(seconds=30), POLICY)
    assert mid.view.state is State.SETTLING and not mid.audit and mid.next_run_at == t1 + POLICY.settle_period
    done = decide(mid.view, look(), t1 + POLICY.settle_period, POLICY)
    assert done.view.state is State.INVOKING_PACKAGE and done.view.cycle == 2
    assert done.note == "server is back and settled: servicing stack idle for 1m 0s: cycle 2"
    assert done.view.settled_since is None and done.view.settle_boot_id is None and done.view.reboot_reason is None
    assert done.view.deadline_at is None


def test_busy_again_restarts_the_settle_period() -> None:
    idle = decide(back(), look(), T0, POLICY).view
    busy = decide(idle, look(False, detail=CONFIGURING), T0 + timedelta(seconds=40), POLICY)
    assert busy.view.settled_since is None and busy.audit
    t2 = T0 + timedelta(seconds=70)
    idle_again = decide(busy.view, look(), t2, POLICY)
    assert idle_again.view.settled_since == t2  # counted from this look, not the first one
    assert decide(idle_again.view, look(), t2 + timedelta(seconds=59), POLICY).view.state is State.SETTLING


def test_a_second_reboot_while_settling_restarts_the_period() -> None:
    idle = decide(back(), look(), T0, POLICY).view
    rebooted = decide(idle, look(boot_id="b3"), T0 + timedelta(seconds=30), POLICY)
    assert rebooted.view.settled_since == T0 + timedelta(seconds=30) and rebooted.view.settle_boot_id == "b3"
    assert rebooted.note.startswith("the server rebooted again (boot id b3)") and rebooted.audit
    down = decide(rebooted.view, look(up=False, idle=False, boot_id="b3"), T0 + timedelta(seconds=60), POLICY)
    assert down.view.settled_since is None and "not up" in down.note


def test_the_reboot_timeout_bounds_the_settle_wait() -> None:
    v = decide(back(), look(False, detail=CONFIGURING), T0, POLICY).view
    late = T0 + timedelta(minutes=19, seconds=50)
    last = decide(v, look(False, detail=CONFIGURING), late, POLICY)
    assert last.next_run_at == T0 + POLICY.reboot_timeout  # a last look at the deadline
    failed = decide(last.view, look(False, detail=CONFIGURING), T0 + POLICY.reboot_timeout, POLICY)
    assert failed.view.state is State.EXITING_MAINTENANCE and failed.view.outcome is Outcome.FAILED
    assert failed.view.failure_reason == (
        f"server VA1OSDPATCH01 came back after the reboot of cycle 1 but did not settle within 20m 0s: {CONFIGURING} "
        "(settle period 1m 0s)")


def test_idle_but_too_short_at_the_deadline_fails_saying_so() -> None:
    v = decide(back(), look(), T0 + POLICY.reboot_timeout - timedelta(seconds=10), POLICY).view
    failed = decide(v, look(), T0 + POLICY.reboot_timeout, POLICY)
    assert failed.view.outcome is Outcome.FAILED and "idle for 0m 10s only" in (failed.view.failure_reason or "")


def test_after_the_final_reboot_a_reboot_still_required_is_not_settled() -> None:
    v = decide(back(FINAL_REBOOT, cycle=3), look(reboot_required=True), T0, POLICY)
    assert v.view.settled_since is None and "a reboot is still required after the final reboot" in v.note
    idle = decide(v.view, look(), T0 + timedelta(seconds=30), POLICY).view
    done = decide(idle, look(), T0 + timedelta(seconds=90), POLICY)
    assert done.view.state is State.EXITING_MAINTENANCE and done.view.outcome is Outcome.COMPLETED
    assert done.note.startswith("server is back from the final reboot and settled")


def test_a_reboot_required_before_another_cycle_does_not_hold_the_settle() -> None:
    idle = decide(back(), look(reboot_required=True), T0, POLICY)
    assert idle.view.settled_since == T0  # the next cycle's package finds it and reboots (blocked_by)
    assert decide(idle.view, look(reboot_required=True), T0 + POLICY.settle_period, POLICY).view.cycle == 2


def test_a_zero_settle_period_settles_at_the_first_idle_look() -> None:
    policy = Policy(settle_period=timedelta(0))
    assert decide(back(), look(), T0, policy).view.state is State.INVOKING_PACKAGE
