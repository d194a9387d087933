"""The Windows behaviours of issue 12, end to end without a database: the pure state machine (machine.py)
drives the simulated fleet (simulation/package_run.py) the way the engine's one step does, with a clock that
jumps to each decision's next run. Each scenario ends in its terminal state, and the simulator's record (its
effects, what it installed) shows why."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain import machine
from orchestrator.domain.machine import Decision, ExecutionView, InitiationRecord, Policy, State
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.fleet import BlockedBy, CycleReport, CycleState, HeartbeatReport, PackageRun, ResultCode
from simulation.fleet import SimTimings, SimulatedFleet
from simulation.package_run import DIED
from simulation.specs import WINDOWS_BEHAVIOURS, Scenario, SimServerSpec, build_fleet_specs
from simulation.store import MemoryStore

START = 1_700_000_000.0
POLICY = Policy(package_timeout=timedelta(minutes=10), heartbeat_seconds=60, heartbeat_grace=timedelta(minutes=3),
                busy_backoff=timedelta(seconds=30))


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def at(self) -> datetime:
        return datetime.fromtimestamp(self.now, tz=UTC)


@dataclass
class Run:
    """A finished run: its last view, every cycle it recorded, every decision's note, every running report."""

    view: ExecutionView
    cycles: list[InitiationRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    running: list[CycleReport] = field(default_factory=list)
    deadlines: list[datetime] = field(default_factory=list)


def perform(fleet: SimulatedFleet, command: machine.Command, view: ExecutionView, run: Run) -> machine.Event:
    """What the engine's `Stepper.perform` does, without intents (nothing crashes here)."""
    server = view.server
    match command:
        case machine.Abandon(outcome=outcome, reason=reason):
            return machine.Abandoned(outcome, reason)
        case machine.InspectServer() | machine.PollServer():
            return machine.ServerInspected(fleet.status(server))
        case machine.CheckSettled():
            return machine.SettleChecked(fleet.settled(server))
        case machine.PowerOn(key=key):
            fleet.power_on(server, key)
            return machine.PowerOnRequested()
        case machine.SetMaintenance(on=on, key=key):
            fleet.set_maintenance(server, on, key)
            return machine.MaintenanceSet(on)
        case machine.InvokeUpdatePackage(cycle=cycle, key=key, exclude_kbs=exclude, deadline=deadline,
                                         heartbeat_seconds=beat):
            fleet.invoke_package(server, key, PackageRun(
                package_id=view.package_id, execution_id=view.id, cycle=cycle, exclude_kbs=exclude,
                parameters=dict(view.parameters), deadline=deadline, heartbeat_seconds=beat))
            return machine.PackageInvoked()
        case machine.FetchCycleResult(key=key):
            report = fleet.cycle_result(server, key)
            assert report is not None
            if report.state is CycleState.RUNNING:
                run.running.append(report)
            return machine.CycleReported(report)
        case machine.RebootServer(key=key):
            before = fleet.status(server).boot_id
            fleet.reboot(server, key)
            return machine.RebootRequested(before)
        case machine.PowerOff(key=key):
            fleet.power_off(server, key)
            return machine.PowerOffRequested()
    raise AssertionError(command)


def patch(spec: SimServerSpec, policy: Policy = POLICY, parameters: dict[str, object] | None = None,
          timings: SimTimings | None = None) -> tuple[Run, SimulatedFleet]:
    clock = Clock()
    fleet = SimulatedFleet.create([spec], MemoryStore(), timings or SimTimings(30, 20, 10), seed=3, clock=clock)
    run = Run(ExecutionView(id="VA1-000001", server=spec.name, state=State.REQUESTED, package_id=DEFAULT_PACKAGE_ID,
                            parameters=parameters or {}))
    for _ in range(5000):
        view = run.view
        if view.terminal:
            return run, fleet
        now = clock.at()
        decision: Decision = machine.decide(view, perform(fleet, machine.command_for(view, now, policy), view, run),
                                            now, policy)
        run.view = dataclasses.replace(decision.view, attempts=0)
        run.notes.append(decision.note)
        if decision.initiation is not None:
            run.cycles.append(decision.initiation)
        if run.view.deadline_at is not None and run.view.state is State.AWAITING_RESULT:
            run.deadlines.append(run.view.deadline_at)
        if decision.next_run_at is not None:
            clock.now = max(clock.now, decision.next_run_at.timestamp())
    raise AssertionError(f"still running: {run.view.state}")


def spec_of(scenario: Scenario, seed: int = 12) -> SimServerSpec:
    return build_fleet_specs(seed, 1, scenarios={scenario: 1})[0]


def reboots(fleet: SimulatedFleet, spec: SimServerSpec) -> int:
    return Counter(e.kind for e in fleet.effects(spec.name))["reboot"]


def assert_fully_patched(run: Run, fleet: SimulatedFleet, spec: SimServerSpec) -> None:
    assert run.view.state is State.COMPLETED, run.view.failure_reason
    assert fleet.installed_kbs(spec.name) == {u.kb for u in spec.updates}
    assert fleet.offered_kbs(spec.name) == []
    kinds = Counter(e.kind for e in fleet.effects(spec.name))
    assert kinds["maintenance_on"] == kinds["maintenance_off"] == 1
    installs = [(e.key, e.kb) for e in fleet.effects(spec.name, "install")]
    assert len(installs) == len(set(installs)) and {kb for _, kb in installs} == {u.kb for u in spec.updates}


def test_a_normal_server_still_ends_completed() -> None:
    spec = spec_of(Scenario.NORMAL)
    run, fleet = patch(spec)
    assert_fully_patched(run, fleet, spec)
    assert not any(c.end_message.startswith("Update Install Blocked") for c in run.cycles)


def test_a_reboot_pending_that_the_control_plane_does_not_report_is_rebooted_not_failed() -> None:
    spec = spec_of(Scenario.REBOOT_PENDING_INSTALL)
    normal, normal_fleet = patch(dataclasses.replace(spec, scenario=Scenario.NORMAL))
    run, fleet = patch(spec)
    assert_fully_patched(run, fleet, spec)
    first = run.cycles[0]
    assert first.end_message.startswith("Update Install Blocked: a reboot is pending (reboot_pending)")
    assert first.patches == () and first.reboot_required and first.result_code == 0
    assert run.view.kb_failures.get(machine.SEARCH_FAILURES) is None and not run.view.quarantined
    assert reboots(fleet, spec) == reboots(normal_fleet, spec) + 1  # the pending one, done before installing
    assert len(run.cycles) == len(normal.cycles) + 1


def test_a_reboot_pending_with_the_reboot_policy_never_fails_saying_so() -> None:
    spec = spec_of(Scenario.REBOOT_PENDING_INSTALL)
    run, fleet = patch(spec, parameters={"rebootPolicy": "never"})
    assert run.view.state is State.FAILED
    assert "a reboot is pending on the server" in (run.view.failure_reason or "")
    assert "the reboot policy is never" in (run.view.failure_reason or "")
    assert reboots(fleet, spec) == 0 and fleet.installed_kbs(spec.name) == set()
    assert not fleet.status(spec.name).in_maintenance


def test_an_exclusive_update_is_installed_alone_and_the_rest_next_cycle() -> None:
    spec = spec_of(Scenario.EXCLUSIVE_UPDATE)
    stack = [u.kb for u in spec.updates if u.classification.value == "Servicing Stack Updates"]
    assert stack, "the scenario needs a servicing stack update"
    run, fleet = patch(spec)
    assert_fully_patched(run, fleet, spec)
    alone = next(c for c in run.cycles if c.patches and c.patches[0].kb in stack)
    assert [p.kb for p in alone.patches] == [stack[0]]  # nothing else in that installer call
    first_install = next(e for e in fleet.effects(spec.name, "install"))
    assert first_install.kb == stack[0]


def test_a_partial_search_is_never_converged() -> None:
    spec = spec_of(Scenario.PARTIAL_SEARCH)
    run, fleet = patch(spec)
    assert_fully_patched(run, fleet, spec)
    failed, partial = run.cycles[0], run.cycles[1]
    assert failed.end_message.startswith("Update Cycle Failed: the update search failed")
    assert "search warnings: 0x8024402C" in failed.end_message
    assert partial.result_code == ResultCode.SUCCEEDED_WITH_ERRORS and partial.patches
    assert "the search was partial (result code 3)" in partial.end_message
    assert run.cycles[-1].updates_found == 0  # converged only on a complete search


def test_a_busy_installer_is_waited_for_then_the_run_completes() -> None:
    spec = spec_of(Scenario.INSTALLER_BUSY)
    run, fleet = patch(spec)
    assert_fully_patched(run, fleet, spec)
    blocked = [c.end_message for c in run.cycles if c.end_message.startswith("Update Install Blocked")]
    assert len(blocked) == 2 and "(installer_busy)" in blocked[0] and "(another_run)" in blocked[1]
    assert run.view.kb_failures.get(machine.BUSY_WAITS) == 2 and not run.view.quarantined
    waits = [n for n in run.notes if "trying again in" in n]
    assert [w.split("trying again in ")[1].split(":")[0] for w in waits] == ["0m 30s", "1m 0s"]  # backoff doubles


def test_a_busy_installer_past_the_retries_fails_with_the_reason() -> None:
    spec = spec_of(Scenario.INSTALLER_BUSY)
    run, fleet = patch(spec, policy=dataclasses.replace(POLICY, busy_retries=1))
    assert run.view.state is State.FAILED
    assert "another run held the server's install lock in 2 cycles" in (run.view.failure_reason or "")
    assert fleet.installed_kbs(spec.name) == set()


def test_a_package_run_that_dies_is_retried_with_its_error_shown() -> None:
    spec = spec_of(Scenario.PACKAGE_DIES)
    run, fleet = patch(spec)
    assert_fully_patched(run, fleet, spec)
    assert run.cycles[0].end_message.startswith(f"Update Cycle Failed: {DIED}")
    assert run.view.kb_failures.get(machine.SEARCH_FAILURES) == 1


def test_a_cycle_longer_than_the_package_timeout_lives_on_its_heartbeats() -> None:
    spec = spec_of(Scenario.LONG_CYCLE)
    run, fleet = patch(spec)
    assert_fully_patched(run, fleet, spec)
    beats = [r for r in run.running if isinstance(r, HeartbeatReport)]
    assert beats and max(b.beats for b in beats) >= 10  # a 15-minute cycle at one a minute
    first = run.deadlines[0]
    assert max(run.deadlines) > first  # extended past the package timeout, heartbeat by heartbeat
    assert any("heartbeat" in n and "installing" in n for n in run.notes)


def test_the_same_cycle_without_heartbeats_fails_at_the_package_timeout() -> None:
    spec = spec_of(Scenario.LONG_CYCLE)
    run, fleet = patch(spec, policy=dataclasses.replace(POLICY, heartbeat_seconds=0))
    assert run.view.state is State.FAILED
    assert run.view.failure_reason == "the update package did not finish cycle 1 within 10m 0s"
    assert not fleet.status(spec.name).in_maintenance


def test_heartbeats_never_carry_a_cycle_past_the_ceiling() -> None:
    spec = spec_of(Scenario.LONG_CYCLE)
    ceiling = dataclasses.replace(POLICY, package_ceiling=timedelta(minutes=12))
    run, _ = patch(spec, policy=ceiling)
    assert run.view.state is State.FAILED
    assert "within the ceiling of 12m 0s (it was still sending heartbeats)" in (run.view.failure_reason or "")


@pytest.mark.parametrize("scenario", WINDOWS_BEHAVIOURS)
def test_every_behaviour_is_what_the_package_reports(scenario: Scenario) -> None:
    """The simulator's first installing cycle of each scenario carries the marker windows-update.ps1 sends."""
    spec = spec_of(scenario)
    clock = Clock()
    fleet = SimulatedFleet.create([spec], MemoryStore(), SimTimings.instant(), seed=3, clock=clock)
    deadline = clock.at() + timedelta(minutes=10)
    fleet.invoke_package(spec.name, "VA1-000001:package:1", PackageRun(
        package_id=DEFAULT_PACKAGE_ID, execution_id="VA1-000001", cycle=1, deadline=deadline, heartbeat_seconds=60))
    report = fleet.cycle_result(spec.name, "VA1-000001:package:1")
    assert report is not None
    expected = {
        Scenario.REBOOT_PENDING_INSTALL: lambda r: r.blocked_by is BlockedBy.REBOOT_PENDING and r.remaining,
        Scenario.EXCLUSIVE_UPDATE: lambda r: len(r.updates) == 1 and r.remaining,
        Scenario.PARTIAL_SEARCH: lambda r: r.search_result_code is ResultCode.FAILED and r.search_warnings,
        Scenario.INSTALLER_BUSY: lambda r: r.blocked_by is BlockedBy.INSTALLER_BUSY and r.result_code == 5,
        Scenario.PACKAGE_DIES: lambda r: r.error == DIED and r.result_code == 4 and not r.updates,
        Scenario.LONG_CYCLE: lambda r: r.state is CycleState.RUNNING,
    }[scenario]
    assert expected(report), report
    for update in report.updates:
        assert update.update_id and update.revision_number is not None
