"""`SimulatedFleet.perform_many` (simulation/bulk_effects.py) on the in-memory and the PostgreSQL store: each
call does what its own call would do, once per key, and a call that fails leaves nothing behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from orchestrator.ports import FleetError, FleetRefused
from schemas.fleet import CycleState, PackageRun, PowerState
from simulation.fleet import SimTimings, SimulatedFleet
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import FleetStore, MemoryStore, SqlStore
from tests.integration.simulation.test_simulated_fleet_sql import PG_URL


@pytest.fixture(params=["memory", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[FleetStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sql = SqlStore(PG_URL, prefix=f"sim_b{uuid.uuid4().hex[:10]}_")
    yield sql
    sql.drop()
    sql.dispose()


def _run(server: str, key: str) -> PackageRun:
    return PackageRun(package_id="pkg", execution_id="VA1-100001", cycle=1)


def test_a_bulk_call_does_each_effect_once_and_answers_each_outcome(store: FleetStore) -> None:
    specs = build_fleet_specs(1, 4, scenarios={Scenario.NORMAL: 3, Scenario.POWERED_OFF: 1})
    fleet = SimulatedFleet.create(specs, store, SimTimings.instant(), seed=1)
    names = [s.name for s in specs]
    stopped = next(s.name for s in specs if s.power_state is not PowerState.STARTED)
    running = [n for n in names if n != stopped]
    calls = [("set_maintenance", (running[0], True, "k-m")),
             ("invoke_package", (running[1], "k-p", _run(running[1], "k-p"))),
             ("reboot", (stopped, "k-r")),  # a stopped server cannot reboot: that call alone fails
             ("reboot", (running[2], "k-r2")),
             ("power_on", ("VA1OSDNOSUCH01", "k-x"))]  # an unknown server: refused
    outcomes = fleet.perform_many(calls)
    assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
    assert isinstance(outcomes[2], FleetError) and not isinstance(outcomes[2], FleetRefused)
    assert isinstance(outcomes[4], FleetRefused)
    assert fleet.status(running[0]).in_maintenance
    report = fleet.cycle_result(running[1], "k-p")
    assert report is not None and report.state is CycleState.FINISHED
    assert [e.kind for e in fleet.effects(stopped)] == []  # the failed call left nothing behind
    assert [e.kind for e in fleet.effects(running[2])] == [EffectKind.REBOOT]
    again = fleet.perform_many(calls[:4])  # the same keys again: nothing new happens
    assert again[0] is None and again[1] is None and again[3] is None
    assert [e.kind for e in fleet.effects(running[2])] == [EffectKind.REBOOT]
    installs = [e for e in fleet.effects(running[1]) if e.kind is EffectKind.INSTALL]
    assert installs and len(installs) == len({(e.key, e.kb) for e in installs})
    kinds = [e.kind for e in fleet.effects(running[0])]
    assert kinds == [EffectKind.MAINTENANCE_ON, EffectKind.MAINTENANCE_ON]  # the control plane takes it again


def test_a_bulk_call_gives_the_same_result_as_single_calls(store: FleetStore) -> None:
    specs = build_fleet_specs(2, 3, scenarios={Scenario.NORMAL: 3})
    bulk = SimulatedFleet.create(specs, store, SimTimings.instant(), seed=2)
    single = SimulatedFleet.create(specs, MemoryStore(), SimTimings.instant(), seed=2)
    calls = [("invoke_package", (s.name, f"k-{s.name}", _run(s.name, "k"))) for s in specs]
    assert bulk.perform_many(calls) == [None, None, None]
    for operation, args in calls:
        getattr(single, operation)(*args)
    for spec in specs:
        key = f"k-{spec.name}"
        mine, theirs = bulk.cycle_result(spec.name, key), single.cycle_result(spec.name, key)
        assert mine is not None and theirs is not None
        assert mine.model_dump(exclude={"started_at", "finished_at"}) == theirs.model_dump(
            exclude={"started_at", "finished_at"})
