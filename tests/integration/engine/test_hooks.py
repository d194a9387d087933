"""Pre/post hooks on real PostgreSQL (docs/HOOKS.md): each hook runs once at each of its points, in its order; a
failing pre hook stops the run before any change, with maintenance mode off; a failing post hook warns or fails
the run by its onFailure; a crash between a hook's intent and its call (or between the call and its outcome)
never runs it twice for the same point; the run's parameters select hooks by name; batches run hooks too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from orchestrator import bootstrap
from orchestrator.bootstrap import Container
from orchestrator.engine import rounds
from orchestrator.persistence import event_models, hook_models, models
from orchestrator.services import hooks as hook_service
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import faults
from simulation import fleet as simulated
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail
from workers.webhooks import MemoryHookCaller

KEY = Fernet.generate_key().decode()


class CrashOnce:
    """Crash hooks: the first time `point` is reached in running_hooks, the worker dies (SystemExit)."""

    def __init__(self) -> None:
        self.point: str | None = None

    def reached(self, point: str, execution_id: str, step: str) -> None:
        if point == self.point and step == "running_hooks":
            self.point = None
            raise SystemExit(f"killed at {point}")


@dataclass
class World:
    container: Container
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    fleet: simulated.SimulatedFleet
    caller: MemoryHookCaller
    crash: CrashOnce
    servers: list[str]

    def hook(self, name: str, **definition: Any) -> None:
        service = hook_service.HookService(self.container.sessions, self.clock, KEY)
        service.put("OSD", name, hook_service.parse_spec(definition), "jane")

    def run(self, *servers: str, **parameters: Any) -> list[str]:
        answers = self.container.service.execute_package(
            "OSD", list(servers), PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=parameters), "jane")
        return [a.execution_id or "" for a in answers]

    def drive(self) -> None:
        while True:
            try:
                support.drive(self.container, self.dispatcher, self.clock)
                return
            except SystemExit:  # the crashed step's lease expires; the tick re-drives it
                self.dispatcher.steps.clear()
                self.clock.advance(120)
                self.container.engine.tick()

    def runs(self, execution_id: str) -> list[Any]:
        with self.container.sessions() as session:
            return list(session.scalars(sa.select(hook_models.HookRun).where(
                hook_models.HookRun.execution_id == execution_id).order_by(hook_models.HookRun.id)))

    def execution(self, execution_id: str) -> models.Execution:
        return support.executions(self.container, [execution_id])[0]

    def events(self, kind: str) -> list[Any]:
        with self.container.sessions() as session:
            return list(session.scalars(sa.select(event_models.Event).where(event_models.Event.kind == kind)))


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 3, scenarios={Scenario.NORMAL: 3})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=3,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    settings = support.test_settings(pg, webhook_key=KEY)
    crash = CrashOnce()
    caller = MemoryHookCaller()
    container = bootstrap.build(settings, dispatcher=dispatcher, fleet=fleet, mailer=mail.MemoryMailer(),
                                clock=clock, hooks=crash, hook_caller=caller)
    support.register(container, specs)
    yield World(container, dispatcher, clock, fleet, caller, crash, sorted(s.name for s in specs))
    container.close()


def test_each_hook_runs_once_at_each_of_its_points(world: World) -> None:
    world.hook("announce", kind="http", points=["pre_maintenance", "post_run"], url="https://hooks.example/patch",
               secretHeaders={"Authorization": "Bearer s3cret"},
               body='{"server": "{{ execution.server }}", "point": "{{ hook.point }}", '
                    '"outcome": {{ execution.outcome | tojson }}}')
    world.hook("cycle-log", kind="command", points=["pre_cycle", "post_cycle"], command="echo cycle hook")
    server = world.servers[0]
    [eid] = world.run(server)
    world.drive()
    row = world.execution(eid)
    assert row.state == "completed", row.failure_reason
    runs = world.runs(eid)
    keys = Counter((r.point, r.cycle, r.hook_name) for r in runs)
    assert set(keys.values()) == {1}
    assert all(r.status == "ok" and r.ended_at is not None for r in runs)
    assert [k for k in keys if k[2] == "announce"] == [("pre_maintenance", 0, "announce"), ("post_run", row.cycle,
                                                                                          "announce")]
    cycles = sorted(k[1] for k in keys if k[0] == "pre_cycle")
    assert cycles == list(range(1, row.cycle + 1)) == sorted(k[1] for k in keys if k[0] == "post_cycle")
    commands = world.fleet.effects(server, EffectKind.COMMAND)
    assert len(commands) == 2 * row.cycle == len({e.key for e in commands})
    # the HTTP hook: rendered body, secret header opened at call time, idempotency key
    first, last = world.caller.calls
    assert first.headers["Authorization"] == "Bearer s3cret"
    assert first.headers["Idempotency-Key"] == f"{eid}:hook:pre_maintenance:0:announce"
    assert first.body == f'{{"server": "{server}", "point": "pre_maintenance", "outcome": null}}'.encode()
    assert last.body == f'{{"server": "{server}", "point": "post_run", "outcome": "completed"}}'.encode()
    # the pre_maintenance hook ran before maintenance mode went on
    first_run = runs[0]
    on = world.fleet.effects(server, EffectKind.MAINTENANCE_ON)[0]
    assert first_run.point == "pre_maintenance" and first_run.ended_at.timestamp() <= on.at
    detail = world.container.service.detail("OSD", server, eid)
    assert [(h.point, h.name, h.status) for h in detail.hooks] == [(r.point, r.hook_name, r.status) for r in runs]


def test_a_failing_pre_maintenance_hook_stops_the_run_before_any_change(world: World) -> None:
    world.hook("drain", kind="command", points=["pre_maintenance"], command="echo draining; fail pool refused")
    world.hook("undrain", kind="command", points=["post_run"], command="echo back in the pool")
    server = world.servers[0]
    [eid] = world.run(server)
    world.drive()
    row = world.execution(eid)
    assert row.state == "failed"
    assert row.failure_reason == "pre_maintenance hook drain failed: exit code 1: draining pool refused"
    assert world.fleet.effects(server, EffectKind.MAINTENANCE_ON) == []
    assert world.fleet.effects(server, EffectKind.INSTALL) == []
    assert world.fleet.status(server).in_maintenance is False
    assert [(r.hook_name, r.status) for r in world.runs(eid)] == [("drain", "failed"), ("undrain", "ok")]
    [failed] = world.events("hook.failed")
    assert failed.execution_id == eid and failed.payload["hook"] == "drain" and failed.payload["code"] == 1


def test_a_failing_pre_cycle_hook_fails_the_run_and_turns_maintenance_off(world: World) -> None:
    world.hook("snapshot", kind="command", points=["pre_cycle"], command="exit 4")
    server = world.servers[0]
    [eid] = world.run(server)
    world.drive()
    row = world.execution(eid)
    assert row.state == "failed" and row.failure_reason.startswith("pre_cycle hook snapshot failed: exit code 4")
    assert world.fleet.effects(server, EffectKind.INSTALL) == []
    assert world.fleet.status(server).in_maintenance is False


def test_a_failing_post_cycle_hook_warns_or_fails_by_its_on_failure(world: World) -> None:
    world.hook("smoke", kind="command", points=["post_cycle"], command="fail smoke test red", onFailure="warn")
    warned, failed = world.servers[:2]
    [warn_id] = world.run(warned)
    world.drive()
    assert world.execution(warn_id).state == "completed"
    assert {r.status for r in world.runs(warn_id)} == {"failed"}
    world.hook("smoke", kind="command", points=["post_cycle"], command="fail smoke test red", onFailure="fail")
    [fail_id] = world.run(failed)
    world.drive()
    row = world.execution(fail_id)
    assert row.state == "failed" and row.failure_reason == "post_cycle hook smoke failed: exit code 1: smoke test red"
    assert [r.cycle for r in world.runs(fail_id)] == [1]  # the run stopped after the first cycle's hook
    assert world.fleet.status(failed).in_maintenance is False


@pytest.mark.parametrize("point", ["after_intent", "after_effect"])
def test_a_crash_around_a_command_hook_never_runs_it_twice(world: World, point: str) -> None:
    world.hook("drain", kind="command", points=["pre_maintenance"], command="echo drained")
    server = world.servers[0]
    [eid] = world.run(server)
    world.crash.point = point
    world.drive()
    assert world.crash.point is None, "the crash point was reached"
    assert world.execution(eid).state == "completed"
    [run] = world.runs(eid)
    assert (run.status, run.attempts, run.output) == ("ok", 2, "drained")  # asked again, answered from the first
    assert len(world.fleet.effects(server, EffectKind.COMMAND)) == 1


def test_an_http_hook_interrupted_after_its_call_is_not_sent_again(world: World) -> None:
    world.hook("notify", kind="http", points=["post_run"], url="https://hooks.example/done", onFailure="warn")
    [eid] = world.run(world.servers[0])
    world.crash.point = "after_effect"
    world.drive()
    assert world.execution(eid).state == "completed"  # onFailure warn: the unknown outcome is a warning
    [run] = world.runs(eid)
    assert run.status == "unknown" and "not sent again" in (run.output or "")
    assert len(world.caller.calls) == 1


def test_the_runs_parameters_select_hooks_by_name(world: World) -> None:
    world.hook("a", kind="command", points=["pre_maintenance"], command="echo a")
    world.hook("b", kind="command", points=["pre_maintenance"], command="echo b")
    first, second, third = world.servers
    ids = [world.run(first, hooks="b")[0], world.run(second, hooks="none")[0], world.run(third, hooks=["zz"])[0]]
    world.drive()
    assert [r.hook_name for r in world.runs(ids[0])] == ["b"]
    assert world.runs(ids[1]) == []
    row = world.execution(ids[2])
    assert row.state == "failed" and "parameters name hook zz, which account OSD does not have" in row.failure_reason
    assert world.fleet.effects(third, EffectKind.MAINTENANCE_ON) == []


def test_a_hook_changed_after_a_run_started_does_not_change_that_run(world: World) -> None:
    world.hook("a", kind="command", points=["post_run"], command="echo first")
    [eid] = world.run(world.servers[0])
    world.container.engine.advance(eid)  # the first step fixes the run's hook plan
    world.hook("a", kind="command", points=["post_run"], command="echo second")
    world.drive()
    assert [r.output for r in world.runs(eid)] == ["first"]


def test_batches_run_the_hooks_of_many_runs(world: World) -> None:
    world.hook("drain", kind="command", points=["pre_maintenance", "post_run"], command="echo ok")
    ids = world.run(*world.servers)
    for _ in range(200):
        due = support.active(world.container)
        if not due:
            break
        rounds.run(world.container.engine, due)
        world.clock.advance(1)
    assert {world.execution(e).state for e in ids} == {"completed"}
    assert all([(r.point, r.status) for r in world.runs(e)] == [("pre_maintenance", "ok"), ("post_run", "ok")]
               for e in ids)


class Crash(BaseException):
    """A simulated process death: no `except Exception` in the engine swallows it."""


def _crash() -> None:
    raise Crash


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_crashes_in_every_window_of_every_hook_run_each_hook_once_per_point(pg: str, mode: str) -> None:
    """Hooks at all four points on every run; each run dies after the intent, after the call and after the commit
    of its first, second and third hook steps, on a control plane failing 5 % of calls, one step per task or in
    batches. Every run still completes, and the simulator ran each hook's command once per point."""
    clock = support.FakeClock()
    specs = build_fleet_specs(6, 4, scenarios={Scenario.NORMAL: 4})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(reboot_seconds=30,
                                            package_seconds=20), seed=6, clock=clock.seconds,
                                            transient_error_rate=0.05)
    dispatcher = support.ListDispatcher()
    crash = faults.CrashHooks([], crash=_crash)
    settings = support.test_settings(pg, lease_seconds=10.0, max_attempts=12, reboot_timeout_seconds=300.0)
    container = bootstrap.build(settings, dispatcher=dispatcher, fleet=fleet, mailer=mail.MemoryMailer(),
                                clock=clock, hooks=crash, hook_caller=MemoryHookCaller())
    support.register(container, specs)
    service = hook_service.HookService(container.sessions, clock, KEY)
    for name, points in (("edge", ["pre_maintenance", "post_run"]), ("around", ["pre_cycle", "post_cycle"])):
        service.put("OSD", name, hook_service.parse_spec({"kind": "command", "points": points,
                                                          "command": f"echo {name}"}), "chaos")
    answers = container.service.execute_package("OSD", [s.name for s in specs],
                                                PackageRequest(packageId=DEFAULT_PACKAGE_ID), "chaos")
    ids = [a.execution_id or "" for a in answers]
    crash.rules = faults.parse(",".join(f"{point}@{eid}/running_hooks#{n}" for eid in ids for n in (1, 2, 3)
                                        for point in ("after_intent", "after_effect", "after_commit")))
    engine = container.engine
    crashed = 0
    for _ in range(20_000):
        dispatcher.emails.clear()  # emails are not what this test is about
        while dispatcher.steps:
            try:
                if mode == "batch":  # everything due in one batch; what it hands back (interrupted steps) runs alone
                    due = list(dict.fromkeys(dispatcher.steps))
                    dispatcher.steps.clear()
                    rounds.run(engine, due)
                    handed_back = list(dict.fromkeys(dispatcher.steps))
                    dispatcher.steps.clear()
                    for execution_id in handed_back:
                        engine.advance(execution_id)
                else:
                    engine.advance(dispatcher.steps.popleft())
            except Crash:
                crashed += 1
            dispatcher.emails.clear()
        if not support.active(container):
            break
        clock.advance(1.0)
        engine.tick()
    else:
        raise AssertionError(f"still active: {support.active(container)}")
    assert crashed >= len(ids) * 3
    fleet.transient_error_rate = 0.0
    with container.sessions() as session:
        runs = list(session.scalars(sa.select(hook_models.HookRun)))
    for eid in ids:
        row = support.executions(container, [eid])[0]
        assert row.state == "completed", (eid, row.failure_reason)
        mine = [r for r in runs if r.execution_id == eid]
        assert {(r.point, r.hook_name) for r in mine if r.cycle == 0 or r.point == "post_run"} >= {
            ("pre_maintenance", "edge"), ("post_run", "edge")}
        assert sorted(r.cycle for r in mine if r.point == "pre_cycle") == list(range(1, row.cycle + 1))
    assert all(r.status == "ok" and r.ended_at is not None for r in runs)
    commands = Counter(e.key for e in fleet.effects(kind=EffectKind.COMMAND))
    assert set(commands.values()) == {1} and set(commands) == {r.key for r in runs}
