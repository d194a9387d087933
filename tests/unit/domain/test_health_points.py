"""Health checks in the state machine (orchestrator/domain/health_points.py): the baseline before maintenance, the
checks after a reboot and after the last cycle, retries, and `onHealthFailure` fail / continue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import event_log, health_points
from orchestrator.domain.machine import (
    Abandon,
    Abandoned,
    CheckResult,
    CheckSettled,
    CycleReported,
    Decision,
    ExecutionView,
    FetchCycleResult,
    HealthChecked,
    InspectServer,
    InvokeUpdatePackage,
    MaintenanceSet,
    Outcome,
    PackageInvoked,
    Policy,
    PollServer,
    RebootRequested,
    RebootServer,
    RunHealthChecks,
    ServerInspected,
    SetMaintenance,
    SettleChecked,
    State,
    command_for,
    decide,
)
from schemas.fleet import CycleReport, CycleState, PowerState, ServerStatus, SettleStatus, UpdateResult

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = Policy(settle_period=timedelta(0))
WEB = {"name": "web", "kind": "http", "url": "http://10.0.0.5/health", "retries": 1, "retryDelaySeconds": 30}
IIS = {"name": "iis", "kind": "service", "service": "W3SVC", "retries": 0, "afterEveryReboot": True}


def view(state: State, checks: list[dict[str, Any]], on_failure: str = "fail", **kw: Any) -> ExecutionView:
    return ExecutionView(id="VA1-000001", server="VA1OSDPATCH01", state=state, account="OSD",
                         parameters={"healthChecks": checks, "onHealthFailure": on_failure}, **kw)


def status() -> ServerInspected:
    return ServerInspected(ServerStatus(name="VA1OSDPATCH01", os_type="Windows 2012 R2", power_state=PowerState.STARTED,
                                        in_maintenance=False, up=True, boot_id="b1", pending_reboot=False))


def ran(*results: tuple[str, int, bool]) -> HealthChecked:
    return HealthChecked(tuple(CheckResult(name, attempt, ok, "HTTP 200" if ok else "HTTP 503, expected 200",
                                           T0, T0) for name, attempt, ok in results))


def nothing_left(v: ExecutionView) -> CycleReported:
    return CycleReported(CycleReport(key=v.key("package"), state=CycleState.FINISHED, started_at=T0, finished_at=T0))


def final_checks(checks: list[dict[str, Any]], on_failure: str = "fail", **kw: Any) -> Decision:
    v = view(State.AWAITING_RESULT, checks, on_failure, cycle=2, deadline_at=T0 + timedelta(hours=1), **kw)
    return decide(v, nothing_left(v), T0, POLICY)


def test_the_baseline_runs_before_maintenance_goes_on() -> None:
    d = decide(view(State.REQUESTED, [WEB, IIS]), status(), T0, POLICY)
    assert d.view.state is State.CHECKING_HEALTH and d.next_run_at == T0
    assert d.note == "server is started; health checks before maintenance (baseline) first: web, iis"
    assert command_for(d.view, T0, POLICY) == RunHealthChecks("baseline", 0, "VA1-000001:health:baseline:0",
                                                              (("web", 1), ("iis", 1)))
    passed = decide(d.view, ran(("web", 1, True), ("iis", 1, True)), T0, POLICY)
    assert passed.view.state is State.ENTERING_MAINTENANCE
    assert [(r.phase, r.name, r.status) for r in passed.health] == [("baseline", "web", "ok"),
                                                                     ("baseline", "iis", "ok")]
    assert passed.view.health == {"baseline_failed": [], "warnings": []}


def test_a_run_without_checks_takes_no_detour() -> None:
    assert decide(view(State.REQUESTED, []), status(), T0, POLICY).view.state is State.ENTERING_MAINTENANCE


def test_a_failed_attempt_is_retried_after_its_delay_then_fails_for_good() -> None:
    checking = decide(view(State.REQUESTED, [WEB, IIS]), status(), T0, POLICY).view
    first = decide(checking, ran(("web", 1, False), ("iis", 1, True)), T0, POLICY)
    assert first.view.state is State.CHECKING_HEALTH and first.next_run_at == T0 + timedelta(seconds=30)
    assert [r.status for r in first.health] == ["retrying", "ok"] and first.audit
    assert command_for(first.view, T0, POLICY).due == (("web", 2),)  # iis passed: not run again
    last = decide(first.view, ran(("web", 2, False)), T0 + timedelta(seconds=30), POLICY)
    assert [r.status for r in last.health] == ["failed"]
    # a baseline failure: it was broken before patching; the run goes on and remembers it
    assert last.view.state is State.ENTERING_MAINTENANCE and last.view.health["baseline_failed"] == ["web"]
    facts = event_log.of_decision(first.view, last)
    assert [(f.kind, f.payload["check"], f.payload["phase"]) for f in facts] == [
        ("health_check.failed", "web", "baseline")]


def test_after_the_last_cycle_a_failure_under_fail_ends_the_run_with_maintenance_left_on() -> None:
    d = final_checks([WEB])
    assert d.view.state is State.CHECKING_HEALTH and d.view.outcome is Outcome.COMPLETED
    assert d.initiation is not None  # the cycle is recorded with the transition, as ever
    retry = decide(d.view, ran(("web", 1, False)), T0, POLICY).view
    end = decide(retry, ran(("web", 2, False)), T0 + timedelta(seconds=30), POLICY)
    assert end.view.state is State.FAILED and end.view.outcome is Outcome.FAILED and end.emails == ("end",)
    assert end.view.failure_reason == ("health check web (HTTP 503, expected 200) failed after the last cycle (2); "
                                       f"{health_points.HEALTH_HOLD}")
    kinds = [f.kind for f in event_log.of_decision(retry, end)]
    assert kinds == ["health_check.failed", "run.ended", "server.left_in_maintenance"]


def test_under_continue_the_run_completes_with_a_warning() -> None:
    d = final_checks([{**WEB, "retries": 0}], "continue")
    end = decide(d.view, ran(("web", 1, False)), T0, POLICY)
    assert end.view.state is State.EXITING_MAINTENANCE and end.view.outcome is Outcome.COMPLETED
    assert end.view.failure_reason == ("warning: health check web (HTTP 503, expected 200) failed after the last cycle "
                                       "(2) (onHealthFailure: continue)")


def test_a_check_already_failing_at_the_baseline_does_not_fail_the_run() -> None:
    d = final_checks([{**WEB, "retries": 0}], health={"baseline_failed": ["web"], "warnings": ["w0"]})
    end = decide(d.view, ran(("web", 1, False)), T0, POLICY)
    assert end.view.state is State.EXITING_MAINTENANCE and end.view.outcome is Outcome.COMPLETED
    assert end.view.failure_reason == ("warning: w0; web (HTTP 503, expected 200) failed after the last cycle (2), "
                                       "as at the baseline")


def test_checks_after_a_reboot_run_before_the_next_cycle() -> None:
    settling = view(State.SETTLING, [WEB, IIS], cycle=1, settle_boot_id="b2", deadline_at=T0 + timedelta(minutes=5))
    d = decide(settling, SettleChecked(SettleStatus(up=True, boot_id="b2", idle=True)), T0, POLICY)
    assert d.view.state is State.CHECKING_HEALTH and d.view.cycle == 1 and d.view.deadline_at is None
    assert command_for(d.view, T0, POLICY).due == (("iis", 1),)  # only the afterEveryReboot ones
    nxt = decide(d.view, ran(("iis", 1, True)), T0, POLICY)
    assert nxt.view.state is State.INVOKING_PACKAGE and nxt.view.cycle == 2
    down = decide(d.view, ran(("iis", 1, False)), T0, POLICY)  # no retries: the run stops, maintenance stays on
    assert down.view.state is State.FAILED and "failed after the reboot of cycle 1" in (down.view.failure_reason or "")


def test_a_cancel_while_checking_cleans_up() -> None:
    checking = decide(view(State.REQUESTED, [WEB]), status(), T0, POLICY).view
    d = decide(checking, Abandoned(Outcome.CANCELLED, "cancelled by op"), T0, POLICY)
    assert d.view.state is State.EXITING_MAINTENANCE and d.view.outcome is Outcome.CANCELLED


# --- random runs: the health invariants ---------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(cycles=st.integers(1, 3), retries=st.integers(0, 2), after_reboot=st.booleans(),
       on_failure=st.sampled_from(["fail", "continue"]), data=st.data())
def test_random_runs_never_complete_with_a_check_patching_broke_under_fail(
        cycles: int, retries: int, after_reboot: bool, on_failure: str, data: st.DataObject) -> None:
    checks = [{**WEB, "retries": retries}, {**IIS, "afterEveryReboot": after_reboot}]
    v = view(State.REQUESTED, checks, on_failure)
    now, boot, left = T0, 1, cycles
    recorded: set[tuple[str, int, str, int]] = set()
    failed_after_patching = False
    for _ in range(300):
        command = command_for(v, now, POLICY)
        match command:
            case InspectServer() | PollServer():
                boot += isinstance(command, PollServer)
                event: Any = ServerInspected(ServerStatus(
                    name=v.server, os_type="Windows 2012 R2", power_state=PowerState.STARTED, in_maintenance=False,
                    up=True, boot_id=f"b{boot}", pending_reboot=False))
            case CheckSettled():
                event = SettleChecked(SettleStatus(up=True, boot_id=f"b{boot}", idle=True))
            case SetMaintenance(on=on):
                event = MaintenanceSet(on)
            case InvokeUpdatePackage():
                event = PackageInvoked()
            case FetchCycleResult(key=key):
                left -= 1
                report = CycleReport(key=key, state=CycleState.FINISHED, started_at=now, finished_at=now,
                                     reboot_required=left > 0, updates=(UpdateResult(
                                         kb=f"KB{5000000 + left}", title="u", result_code=2),) if left >= 0 else ())
                event = CycleReported(report)
            case RebootServer():
                event = RebootRequested(f"b{boot}")
            case RunHealthChecks(phase=phase, due=due):
                outcomes = [(name, attempt, data.draw(st.booleans(), label=f"{phase} {name} {attempt} ok"))
                            for name, attempt in due]
                event = ran(*outcomes)
            case Abandon(outcome=outcome, reason=reason):
                event = Abandoned(outcome, reason)
            case _:
                raise AssertionError(f"unexpected {command!r}")
        d = decide(v, event, now, POLICY)
        for r in d.health:
            key = (r.phase, r.cycle, r.name, r.attempt)
            assert key not in recorded  # one result per attempt
            recorded.add(key)
            baseline_broken = r.name in (v.health or {}).get("baseline_failed", [])
            if r.status == "failed" and r.phase != "baseline" and not baseline_broken:
                failed_after_patching = True
        v = d.view
        if v.terminal:
            break
        assert d.next_run_at is not None and d.next_run_at >= now
        now = d.next_run_at
    else:
        raise AssertionError("the run did not end")
    if failed_after_patching and on_failure == "fail":
        assert v.state is State.FAILED and health_points.HEALTH_HOLD in (v.failure_reason or "")
    elif failed_after_patching:
        assert v.state is State.COMPLETED and (v.failure_reason or "").startswith(health_points.WARNING)
    else:
        assert v.state is State.COMPLETED
