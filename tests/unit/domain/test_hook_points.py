"""Hooks in the state machine (orchestrator/domain/hook_points.py): a transition that crosses a point the run has
hooks for goes through running_hooks first, one hook per step; a failed pre hook stops the run before any change,
a failed post hook warns or fails it; post_run runs after cleanup and a cancel does not skip it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain.commands import RunHooks
from orchestrator.domain.events import Abandoned, CycleReported, HookRan, MaintenanceSet, ServerInspected
from orchestrator.domain.execution import ExecutionView, Outcome, Policy, State
from orchestrator.domain.machine import command_for, decide
from schemas.fleet import CycleReport, CycleState, PowerState, ResultCode, ServerStatus, UpdateResult

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
POLICY = Policy()
EID = "VA1-123456"


def plan(**points: list[str]) -> dict[str, dict[str, object]]:
    return {name: {"kind": "command", "points": pts, "command": "echo"} for name, pts in points.items()}


def view(state: State, hook_plan: dict[str, dict[str, object]] | None = None, **kw: object) -> ExecutionView:
    return ExecutionView(id=EID, server="VA1OSDPATCH33", state=state, hook_plan=hook_plan, **kw)  # type: ignore[arg-type]


def hooks(point: str, resume: State, cycle: int = 0, hook_plan: dict | None = None, **kw: object) -> ExecutionView:
    return view(State.RUNNING_HOOKS, hook_plan or plan(a=[point]), hook_point=point, hook_cycle=cycle,
                hook_resume=resume, **kw)


def started() -> ServerStatus:
    return ServerStatus(name="VA1OSDPATCH33", os_type="windows2019", power_state=PowerState.STARTED,
                        in_maintenance=False, up=True, boot_id="b1", pending_reboot=False)


def finished(reboot: bool = False) -> CycleReport:
    update = UpdateResult(kb="KB5000001", title="t", url="https://support.example/KB5000001",
                          result_code=ResultCode.SUCCEEDED, hresult=0, reboot_required=reboot)
    return CycleReport(key=f"{EID}:package:1", state=CycleState.FINISHED, started_at=T0 - timedelta(minutes=5),
                       finished_at=T0, updates=(update,), result_code=ResultCode.SUCCEEDED, hresult=0,
                       reboot_required=reboot)


def test_without_hooks_nothing_changes() -> None:
    d = decide(view(State.REQUESTED, {}), ServerInspected(started()), T0, POLICY)
    assert d.view.state is State.ENTERING_MAINTENANCE


def test_pre_maintenance_hooks_run_before_maintenance_goes_on() -> None:
    d = decide(view(State.REQUESTED, plan(drain=["pre_maintenance"])), ServerInspected(started()), T0, POLICY)
    assert d.view.state is State.RUNNING_HOOKS
    assert (d.view.hook_point, d.view.hook_cycle, d.view.hook_resume) == ("pre_maintenance", 0,
                                                                        State.ENTERING_MAINTENANCE)
    assert d.next_run_at == T0 and "pre_maintenance hooks first: drain" in d.note
    assert command_for(d.view, T0, POLICY) == RunHooks("pre_maintenance", 0, f"{EID}:hook:pre_maintenance:0")


def test_one_hook_per_step_then_the_run_goes_on() -> None:
    v = hooks("pre_maintenance", State.ENTERING_MAINTENANCE, hook_plan=plan(a=["pre_maintenance"],
                                                                             b=["pre_maintenance"]))
    more = decide(v, HookRan("a", ok=True, stops=True, detail="", remaining=1), T0, POLICY)
    assert more.view.state is State.RUNNING_HOOKS and more.next_run_at == T0
    done = decide(more.view, HookRan("b", ok=True, stops=True, detail="", remaining=0), T0, POLICY)
    assert done.view.state is State.ENTERING_MAINTENANCE and done.view.hook_point is None


@pytest.mark.parametrize("point", ["pre_maintenance", "pre_cycle"])
def test_a_failed_pre_hook_stops_the_run_whatever_its_on_failure(point: str) -> None:
    resume = State.ENTERING_MAINTENANCE if point == "pre_maintenance" else State.INVOKING_PACKAGE
    d = decide(hooks(point, resume, cycle=1), HookRan("a", ok=False, stops=False, detail="exit code 3", remaining=0),
               T0, POLICY)
    assert d.view.state is State.EXITING_MAINTENANCE and d.view.outcome is Outcome.FAILED
    assert d.view.failure_reason == f"{point} hook a failed: exit code 3"
    assert d.view.hook_point is None


def test_a_failed_post_cycle_hook_warns_or_fails_by_its_on_failure() -> None:
    v = hooks("post_cycle", State.REBOOTING, cycle=1)
    warned = decide(v, HookRan("a", ok=False, stops=False, detail="exit code 1", remaining=0), T0, POLICY)
    assert warned.view.state is State.REBOOTING and "warning only" in warned.note
    failed = decide(v, HookRan("a", ok=False, stops=True, detail="exit code 1", remaining=0), T0, POLICY)
    assert failed.view.state is State.EXITING_MAINTENANCE and failed.view.outcome is Outcome.FAILED


def test_post_cycle_hooks_run_once_the_cycle_is_recorded() -> None:
    v = view(State.AWAITING_RESULT, plan(log=["post_cycle"]), cycle=1, deadline_at=T0 + timedelta(hours=1))
    d = decide(v, CycleReported(finished(reboot=True)), T0, POLICY)
    assert d.initiation is not None  # the cycle is recorded in the same transition
    assert d.view.state is State.RUNNING_HOOKS and d.view.hook_resume is State.REBOOTING
    assert (d.view.hook_point, d.view.hook_cycle) == ("post_cycle", 1)


def test_post_cycle_hooks_lead_into_the_next_cycles_pre_cycle_hooks() -> None:
    both = plan(log=["post_cycle", "pre_cycle"])
    v = view(State.RUNNING_HOOKS, both, cycle=2, hook_point="post_cycle", hook_cycle=1,
             hook_resume=State.INVOKING_PACKAGE)
    d = decide(v, HookRan("log", ok=True, stops=True, detail="", remaining=0), T0, POLICY)
    assert d.view.state is State.RUNNING_HOOKS
    assert (d.view.hook_point, d.view.hook_cycle, d.view.hook_resume) == ("pre_cycle", 2, State.INVOKING_PACKAGE)


def test_post_run_hooks_run_after_cleanup_and_before_the_end() -> None:
    v = view(State.EXITING_MAINTENANCE, plan(bye=["post_run"]), cycle=2, outcome=Outcome.COMPLETED)
    d = decide(v, MaintenanceSet(False), T0, POLICY)
    assert d.view.state is State.RUNNING_HOOKS and d.view.hook_resume is State.COMPLETED
    assert d.emails == ()  # the end email waits for the real end
    end = decide(d.view, HookRan("bye", ok=True, stops=True, detail="", remaining=0), T0, POLICY)
    assert end.view.state is State.COMPLETED and end.emails == ("end",)


def test_a_failed_post_run_hook_fails_a_completed_run() -> None:
    v = hooks("post_run", State.COMPLETED, outcome=Outcome.COMPLETED)
    d = decide(v, HookRan("a", ok=False, stops=True, detail="HTTP 500", remaining=0), T0, POLICY)
    assert d.view.state is State.FAILED and d.view.failure_reason == "post_run hook a failed: HTTP 500"
    cancelled = hooks("post_run", State.CANCELLED, outcome=Outcome.CANCELLED, failure_reason="cancelled by bob")
    d = decide(cancelled, HookRan("a", ok=False, stops=True, detail="HTTP 500", remaining=0), T0, POLICY)
    assert d.view.state is State.CANCELLED  # the run's outcome stays; the reason says the hook failed too
    assert d.view.failure_reason == "cancelled by bob; post_run hook a failed: HTTP 500"


def test_a_cancel_does_not_skip_post_run_hooks_but_stops_pre_hooks() -> None:
    post = hooks("post_run", State.COMPLETED, outcome=Outcome.COMPLETED, cancel_requested=True)
    assert isinstance(command_for(post, T0, POLICY), RunHooks)
    pre = hooks("pre_cycle", State.INVOKING_PACKAGE, cycle=1, cancel_requested=True, cancelled_by="bob")
    abandon = command_for(pre, T0, POLICY)
    d = decide(pre, Abandoned(abandon.outcome, abandon.reason), T0, POLICY)  # type: ignore[union-attr]
    assert d.view.state is State.EXITING_MAINTENANCE and d.view.outcome is Outcome.CANCELLED


def test_post_run_hooks_that_keep_failing_to_run_end_the_run() -> None:
    v = hooks("post_run", State.COMPLETED, outcome=Outcome.COMPLETED)
    d = decide(v, Abandoned(Outcome.FAILED, "running a hook failed 5 times"), T0, POLICY)
    assert d.view.state is State.FAILED
    assert d.view.failure_reason == "post_run hooks stopped: running a hook failed 5 times"


def test_a_run_that_ends_at_requested_runs_no_post_run_hooks() -> None:
    v = view(State.REQUESTED, plan(bye=["post_run"]), cancel_requested=True)
    d = decide(v, Abandoned(Outcome.CANCELLED, "cancelled"), T0, POLICY)
    assert d.view.state is State.CANCELLED
