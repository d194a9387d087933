"""A batch round's effects in one bulk call (orchestrator/engine/effects.py) on real PostgreSQL: every intent
is committed before the bulk call, each call's outcome is its step's, a bulk call that fails as a whole
falls back to one call each, and the tick's keyset claims take every due row once."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from orchestrator.engine import batch
from orchestrator.engine.effects import RoundFleet
from orchestrator.persistence import models
from orchestrator.ports import FleetError
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from tests.integration.engine.test_batch import PACKAGE, BatchDispatcher, _assert_once, drive

EFFECTS = ("set_maintenance", "power_on", "power_off", "reboot", "invoke_package")


class Spy:
    """The simulated fleet, counting single effect calls and bulk calls; optionally failing."""

    def __init__(self, inner: simulated.SimulatedFleet, sessions: Any = None) -> None:
        self.inner = inner
        self.sessions = sessions
        self.single: Counter[tuple[str, str]] = Counter()  # (operation, server)
        self.bulk_calls: list[list[tuple[str, tuple[Any, ...]]]] = []
        self.fail_bulk = 0  # this many bulk calls raise as a whole
        self.fail_server: str | None = None  # this server's effects fail (transiently) once
        self.unintended: list[tuple[str, str]] = []  # (server, key) of bulk calls whose intent was not committed
        for name in EFFECTS:
            setattr(self, name, self._single(name))

    def _single(self, name: str) -> Any:
        def call(*args: Any) -> None:
            self.single[(name, str(args[0]))] += 1
            getattr(self.inner, name)(*args)

        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def perform_many(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[BaseException | None]:
        self.bulk_calls.append(list(calls))
        if self.sessions is not None:  # what another connection sees now: every intent must be there
            table = models.Execution.__table__
            with self.sessions() as session:
                intents = {(r.server_name, (r.intent or {}).get("key")) for r in session.execute(
                    sa.select(table.c.server_name, table.c.intent).where(table.c.ended_at.is_(None)))}
            for operation, args in calls:
                key = args[2] if operation == "set_maintenance" else args[1]
                if (args[0], key) not in intents:
                    self.unintended.append((args[0], key))
        if self.fail_bulk:
            self.fail_bulk -= 1
            raise FleetError("the whole bulk call failed")
        failing = next((i for i, (_, args) in enumerate(calls) if args[0] == self.fail_server), None)
        if failing is None:
            return self.inner.perform_many(calls)
        self.fail_server = None  # that call fails before its effect; the others are done
        outcomes = self.inner.perform_many(calls[:failing] + calls[failing + 1:])
        return [*outcomes[:failing], FleetError("this one call failed"), *outcomes[failing:]]


def _setup(pg: str, count: int = 6):
    clock = support.FakeClock()
    specs = build_fleet_specs(5, count, scenarios={Scenario.NORMAL: count})
    inner = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=30, package_seconds=20, power_seconds=10), seed=5, clock=clock.seconds)
    spy = Spy(inner)
    dispatcher = BatchDispatcher()
    container = support.make_container(support.test_settings(pg), spy, clock, dispatcher)  # type: ignore[arg-type]
    spy.sessions = container.sessions
    support.register(container, specs)
    return container, spy, dispatcher, clock, specs


def _run(container, dispatcher, clock) -> list[str]:
    answers = container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "test")
    dispatcher.steps.clear()
    dispatcher.batches.append([a.execution_id for a in answers if a.is_queued])
    drive(container, dispatcher, clock, batch.BatchConfig(fleet_threads=4))
    return [a.execution_id for a in answers if a.is_queued]


def test_a_rounds_effects_go_in_one_bulk_call_after_their_intents(pg: str) -> None:
    container, spy, dispatcher, clock, specs = _setup(pg)
    try:
        ids = _run(container, dispatcher, clock)
        assert {r.state for r in support.executions(container, ids)} == {"completed"}
        assert spy.bulk_calls and max(len(c) for c in spy.bulk_calls) == len(specs)  # the whole round at once
        assert spy.unintended == []  # every call's intent was committed before the bulk call
        for spec in specs:
            _assert_once(spy.inner, spec.name)
    finally:
        container.close()


def test_a_failed_bulk_call_falls_back_to_one_call_each(pg: str) -> None:
    container, spy, dispatcher, clock, specs = _setup(pg)
    spy.fail_bulk = 1
    try:
        ids = _run(container, dispatcher, clock)
        assert {r.state for r in support.executions(container, ids)} == {"completed"}
        assert sum(spy.single.values()) >= len(specs)  # the failed round's effects, one call each
        for spec in specs:
            _assert_once(spy.inner, spec.name)
    finally:
        container.close()


def test_one_failed_call_of_a_bulk_call_retries_only_its_step(pg: str) -> None:
    container, spy, dispatcher, clock, specs = _setup(pg)
    spy.fail_server = specs[2].name
    try:
        ids = _run(container, dispatcher, clock)
        assert {r.state for r in support.executions(container, ids)} == {"completed"}
        tried = Counter((operation, args[0]) for calls in spy.bulk_calls for operation, args in calls)
        tried.update(spy.single)  # the retried step runs alone (its attempt count is up): one call
        failed = specs[2].name
        assert tried[("set_maintenance", failed)] == 3  # on (failed once, then again), off
        assert all(tried[("set_maintenance", s.name)] == 2 for s in specs if s.name != failed)  # on, off
        for spec in specs:
            _assert_once(spy.inner, spec.name)
    finally:
        container.close()


def test_a_round_fleet_records_effects_only_for_the_step_it_runs() -> None:
    done: list[tuple[str, tuple[Any, ...]]] = []

    class Inner:
        def reboot(self, server: str, key: str) -> None:
            done.append(("reboot", (server, key)))

        def status(self, server: str) -> str:
            return f"status of {server}"

    fleet = RoundFleet(Inner())
    assert fleet.status("A") == "status of A"  # reads go through
    fleet.record("step", lambda: fleet.reboot("A", "k1"))
    assert fleet.calls == [("step", "reboot", ("A", "k1"))] and done == []
    fleet.reboot("B", "k2")  # outside `record`: the call is made
    assert done == [("reboot", ("B", "k2"))]


def test_a_tick_of_many_claims_takes_every_due_row_once_even_at_the_same_due_time(pg: str) -> None:
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 7, scenarios={Scenario.NORMAL: 7})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=3,
                                            clock=clock.seconds)
    dispatcher = BatchDispatcher()
    container = support.make_container(support.test_settings(pg, tick_batch=2), fleet, clock, dispatcher)
    try:
        support.register(container, specs)
        answers = container.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
        ids = [a.execution_id for a in answers]
        now = clock()
        with container.sessions.begin() as session:  # all due at the very same instant: the keyset's ties
            session.execute(sa.update(models.Execution).values(next_run_at=now - timedelta(seconds=1),
                                                               dispatched_until=None))
        dispatcher.steps.clear()
        dispatcher.batches.clear()
        assert container.engine.tick()[0] == 7  # four claims of 2 in one tick
        handed = list(dispatcher.steps) + [i for b in dispatcher.batches for i in b]
        assert sorted(handed) == sorted(ids)
        assert container.engine.tick()[0] == 0
    finally:
        container.close()
