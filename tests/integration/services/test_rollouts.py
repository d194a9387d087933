"""Rate-controlled rollouts on real PostgreSQL with an injected clock: the engine's steps, the tick and the
rollout gate driven synchronously (tests/support.py), the simulated fleet's own record checked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.bootstrap import Container
from orchestrator.domain import rate_control
from orchestrator.persistence import db, migrate, models
from orchestrator.services import inventory, rollouts
from orchestrator.services.errors import NotFound, ServiceError
from orchestrator.services.window_specs import WindowSpec
from orchestrator.services.windows import WindowService
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, SimServerSpec, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

PACKAGE = PackageRequest(packageId=DEFAULT_PACKAGE_ID)


@dataclass
class World:
    container: Container
    fleet: simulated.SimulatedFleet
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    mailer: mail.MemoryMailer
    specs: list[SimServerSpec]
    samples: list[int] = field(default_factory=list)

    def gate(self) -> rollouts.GateReport:
        return rollouts.RolloutGate.of(self.container.service).run()

    def running(self) -> int:
        """Released (due at some point) and not ended: started, as the gate counts them."""
        with self.container.sessions() as session:
            return int(session.scalar(
                sa.select(sa.func.count()).select_from(models.Execution).where(
                    models.Execution.rollout_id.is_not(None), models.Execution.ended_at.is_(None),
                    models.Execution.next_run_at.is_not(None))) or 0)

    def sample(self) -> None:
        self.samples.append(self.running())

    def most_in_maintenance(self) -> int:
        """The simulator's own record: the most servers in maintenance mode at once."""
        now = most = 0
        for effect in self.fleet.effects():
            now += {"maintenance_on": 1, "maintenance_off": -1}.get(effect.kind.value, 0)
            most = max(most, now)
        return most

    def drive(self, step_seconds: float = 5.0) -> None:
        support.drive(self.container, self.dispatcher, self.clock, step_seconds=step_seconds,
                      on_tick=self.gate, on_step=self.sample)

    def rows(self) -> list[models.Execution]:
        return support.executions(self.container)


def make_world(pg: str, scenarios: dict[Scenario, int], count: int = 50,
               groups: dict[str, list[int]] | None = None) -> World:
    clock = support.FakeClock()
    specs = build_fleet_specs(5, count, scenarios=scenarios)
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=30, package_seconds=20, power_seconds=10), seed=5, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    mailer = mail.MemoryMailer()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher, mailer)
    placement = {i: "va1-0001" for i in range(count)}
    with container.sessions.begin() as session:
        inventory.ensure_account(session, "OSD", "OSD", "VA1", "ops@osd.example", db.utcnow())
        inventory.ensure_group(session, "OSD", "va1-0001", "all")
        for gid, members in (groups or {}).items():
            inventory.ensure_group(session, "OSD", gid, gid, "va1-0001")
            placement.update(dict.fromkeys(members, gid))
        inventory.register_servers(session, "OSD", (
            inventory.ServerSpec(s.name, s.os_type, s.power_state.value, placement[i]) for i, s in enumerate(specs)))
    return World(container, fleet, dispatcher, clock, mailer, specs)


@pytest.fixture
def worlds(pg: str) -> Iterator[list[World]]:
    made: list[World] = []
    yield made
    for world in made:
        world.container.close()


def test_fifty_servers_at_most_five_at_a_time(pg: str, worlds: list[World]) -> None:
    world = make_world(pg, {Scenario.NORMAL: 50})
    worlds.append(world)
    rate = rate_control.RateControl.parse("5", None)
    answers = world.container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t", rate)
    assert len(answers) == 50 and all(a.is_queued for a in answers)
    assert len(world.dispatcher.steps) == 5  # only the first five were handed to workers
    assert len(world.dispatcher.emails) == 5  # … with their start emails
    world.drive()
    rows = world.rows()
    assert all(r.state == "completed" for r in rows), Counter(r.state for r in rows)
    assert max(world.samples) == 5 and world.most_in_maintenance() == 5, (max(world.samples),
                                                                          world.most_in_maintenance())
    assert len(world.samples) > 500  # sampled at every step
    # released in position order, five at a time: the sixth started only once one of the first five had ended
    by_position = sorted(rows, key=lambda r: r.rollout_position or 0)
    first_end = min(r.ended_at for r in by_position[:5] if r.ended_at)
    assert all(r.started_at >= first_end for r in by_position[5:])
    sent = Counter(m["X-Patchaas-Kind"] for m in world.mailer.sent)
    assert sent == {"start": 50, "end": 50}
    info = world.container.service.rollout("OSD", rows[0].rollout_id or 0)
    assert info.state == "completed" and info.ended_at is not None and info.counts["completed"] == 50
    assert info.concurrency_limit == 5 and info.total == 50


def test_an_error_threshold_that_trips_skips_the_rest_and_lets_running_ones_finish(
    pg: str, worlds: list[World]
) -> None:
    # servers 01 normal, 02-04 a KB that always fails, the rest normal: the first five start together
    world = make_world(pg, {Scenario.NORMAL: 1, Scenario.BROKEN_KB: 3})
    worlds.append(world)
    rate = rate_control.RateControl.parse("10%", 2)  # 5 at a time; a third failure crosses the threshold
    answers = world.container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t", rate)
    assert all(a.is_queued for a in answers)
    world.drive()
    rows = world.rows()
    states = Counter(r.state for r in rows)
    assert states["failed"] == 3, states
    reason = "skipped: error threshold crossed (3 of 50 failed)"
    skipped = [r for r in rows if r.cancelled_by == "rollout"]
    ran = [r for r in rows if r.cancelled_by != "rollout"]
    assert skipped and all(r.failure_reason == reason and r.state == "cancelled" for r in skipped)
    assert all(r.end_message == f"Updating Cancelled: {reason}" for r in skipped)
    assert len(ran) + len(skipped) == 50 and states["completed"] == len(ran) - 3
    for row in ran:  # every server that started finished its run, whatever happened meanwhile
        assert row.state in ("completed", "failed") and not world.fleet.status(row.server_name).in_maintenance
    for row in skipped:  # never touched: no effect on the simulator, no email
        assert world.fleet.effects(row.server_name) == []
    mailed = {m["X-Patchaas-Execution"] for m in world.mailer.sent}
    assert mailed == {r.id for r in ran}
    assert max(world.samples) <= 5 and world.most_in_maintenance() <= 5
    info = world.container.service.rollout("OSD", rows[0].rollout_id or 0)
    assert info.state == "stopped" and info.stop_reason == reason and info.ended_at is not None
    assert info.counts == {"held": 0, "running": 0, "completed": len(ran) - 3, "failed": 3,
                           "cancelled": len(skipped)}
    # the audit trail says why
    with world.container.sessions() as session:
        notes = session.scalars(sa.select(models.ExecutionEvent.note).where(
            models.ExecutionEvent.execution_id == skipped[0].id)).all()
    assert notes == [reason]


def test_waves_run_in_order(pg: str, worlds: list[World]) -> None:
    # 12 servers; the canary group va1-0002 holds servers 10-12, named as wave 1; servers 01-02 are wave 2
    world = make_world(pg, {Scenario.NORMAL: 12}, count=12, groups={"va1-0002": [9, 10, 11]})
    worlds.append(world)
    names = [s.name for s in world.specs]
    rate = rate_control.RateControl.parse(3, None, [["va1-0002"], [names[0], names[1]]])
    answers = world.container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t", rate)
    assert [a.server for a in answers] == sorted(names)  # CLC answers in request order
    world.drive()
    rows = {r.server_name: r for r in world.rows()}
    waves = [[rows[n] for n in names[9:]], [rows[n] for n in names[:2]], [rows[n] for n in names[2:9]]]
    assert [sorted({r.rollout_wave for r in w}) for w in waves] == [[0], [1], [2]]
    for earlier, later in zip(waves, waves[1:], strict=False):
        assert max(r.ended_at for r in earlier if r.ended_at) <= min(r.started_at for r in later)
    assert all(r.state == "completed" for r in rows.values())
    assert max(world.samples) == 3


def test_a_failing_canary_wave_stops_the_rollout(pg: str, worlds: list[World]) -> None:
    world = make_world(pg, {Scenario.BROKEN_KB: 1}, count=6, groups={"va1-0002": [0]})
    worlds.append(world)
    rate = rate_control.RateControl.parse(None, 0, [["va1-0002"]])
    world.container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t", rate)
    world.drive()
    rows = world.rows()
    assert Counter(r.state for r in rows) == {"failed": 1, "cancelled": 5}
    assert {r.failure_reason for r in rows if r.state == "cancelled"} == {
        "skipped: error threshold crossed (1 of 6 failed)"}


def test_the_gate_is_idempotent_and_a_held_execution_can_be_cancelled(pg: str, worlds: list[World]) -> None:
    world = make_world(pg, {Scenario.NORMAL: 4}, count=4)
    worlds.append(world)
    answers = world.container.service.execute_package(
        "OSD", [s.name for s in world.specs], PACKAGE, "t", rate_control.RateControl.parse(1, None))
    assert world.gate().released == [] and world.gate().released == []  # one is running: nothing more
    held = answers[-1]
    world.container.service.cancel("OSD", held.server, held.execution_id or "", "jane", "not this one")
    world.drive()
    rows = {r.id: r for r in world.rows()}
    assert rows[held.execution_id or ""].state == "cancelled"
    assert rows[held.execution_id or ""].cancelled_by == "jane"
    assert Counter(r.state for r in rows.values()) == {"completed": 3, "cancelled": 1}


def test_plain_requests_are_unchanged_and_bad_options_are_refused(pg: str, worlds: list[World]) -> None:
    world = make_world(pg, {Scenario.NORMAL: 3}, count=3)
    worlds.append(world)
    service = world.container.service
    answers = service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t")
    assert len(world.dispatcher.steps) == 3 and all(r.rollout_id is None for r in world.rows())
    world.drive()
    with pytest.raises(NotFound, match="group va1-0099 not found"):
        service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t",
                                          rate_control.RateControl.parse(1, None, [["va1-0099"]]))
    with pytest.raises(ServiceError, match="wave 1: 'nope' is neither"):
        service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t",
                                          rate_control.RateControl.parse(1, None, [["nope"]]))
    # a server already being patched is answered as before, and the rollout counts only what was queued
    first = service.execute_package("OSD", [answers[0].server], PACKAGE, "t")
    assert first[0].is_queued
    more = service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "t", rate_control.RateControl.parse(1, 0))
    assert [a.is_queued for a in more] == [False, True, True]
    assert "already being patched" in (more[0].error_message or "")
    info = service.rollout("OSD", service.rollout_of("OSD", more[1].execution_id or "") or 0)
    assert info.total == 2 and info.counts["running"] == 1 and info.counts["held"] == 1


def test_a_rate_controlled_window_on_sqlite(tmp_path: Path) -> None:
    """The embedded default's database: the same migrations, the insert-or-ignore key and the gate."""

    url = f"sqlite:///{tmp_path / 'w.db'}"
    migrate.upgrade(url)
    clock = support.FakeClock(datetime(2026, 11, 10, 21, 0, tzinfo=UTC))
    specs = build_fleet_specs(6, 6, scenarios={Scenario.NORMAL: 6})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=30, package_seconds=20), seed=6, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(url), fleet, clock, dispatcher)
    try:
        support.register(container, specs)
        windows = WindowService(container.service)
        windows.create("OSD", WindowSpec(name="nightly", groups=["va1-0001"], cron="0 22 * * *", max_concurrency=2,
                                         max_errors=0), "t")
        clock.now = datetime(2026, 11, 10, 22, 0, 1, tzinfo=UTC)
        gate = rollouts.RolloutGate.of(container.service)
        samples: list[int] = []

        def beat() -> None:
            windows.start_due()
            gate.run()

        def running() -> None:
            samples.append(sum(1 for r in support.executions(container) if r.ended_at is None and r.next_run_at))

        support.drive(container, dispatcher, clock, step_seconds=5, on_tick=beat, on_step=running)
        assert len(windows.start_due()) == 0
        rows = support.executions(container)
        assert len(rows) == 6 and {r.state for r in rows} == {"completed"} and max(samples) == 2
    finally:
        container.close()
