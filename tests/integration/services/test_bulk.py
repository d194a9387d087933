"""Accepting many servers at once (orchestrator/services/bulk.py) on real PostgreSQL answers and writes exactly what
the one-server-at-a-time path does, and two racing group actions still give each server one execution."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from orchestrator.domain import packages
from orchestrator.persistence import models
from orchestrator.services import bulk
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support

PACKAGE = PackageRequest(packageId=DEFAULT_PACKAGE_ID)


@pytest.fixture
def world(pg: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(9, 12, scenarios={Scenario.NORMAL: 10, Scenario.UNSUPPORTED_OS: 2})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=9,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher)
    support.register(container, specs)
    yield container, specs
    container.close()


def _rows(container, table, key: str) -> dict[str, dict[str, object]]:
    with container.sessions() as session:
        return {row._asdict()[key]: row._asdict() for row in session.execute(sa.select(table))}


def test_bulk_rows_are_the_rows_of_the_one_by_one_path(world) -> None:
    container, specs = world
    normal = [s.name for s in specs if s.scenario is Scenario.NORMAL]
    service = container.service
    service.bulk_from = 10_000  # one by one
    one_by_one = service.execute_package("OSD", normal[:4], PACKAGE, "jane")
    service.bulk_from = 2
    at_once = service.execute_package("OSD", normal[4:8], PACKAGE, "jane")
    assert all(a.is_queued for a in one_by_one + at_once)
    executions = _rows(container, models.Execution.__table__, "server_name")
    outbox = {row["execution_id"]: row for row in _rows(container, models.Outbox.__table__, "id").values()}

    def shape(row: dict[str, object], *ids: str) -> dict[str, object]:
        text = {k: v for k, v in row.items() if k not in ("id", "server_name", "execution_id")}
        for k, v in text.items():
            for i in ids:
                if isinstance(v, str):
                    v = v.replace(i, "<id>")
            text[k] = v
        return text

    def both(answer) -> tuple[dict[str, object], dict[str, object]]:
        execution = executions[answer.server]
        email = outbox[answer.execution_id]
        ids = (answer.execution_id, answer.server)
        return shape(execution, *ids), shape(email, *ids)

    expected = both(one_by_one[0])
    for answer in one_by_one[1:] + at_once:
        assert both(answer) == expected


def test_bulk_answers_are_the_answers_of_the_one_by_one_path(world) -> None:
    container, specs = world
    normal = [s.name for s in specs if s.scenario is Scenario.NORMAL]
    unsupported = next(s.name for s in specs if s.scenario is Scenario.UNSUPPORTED_OS)
    container.service.execute_package("OSD", [normal[0]], PACKAGE, "t")  # already being patched
    request = [normal[0], normal[1], "VA1OSDNOPE99", "not a name", unsupported, normal[2], normal[1].lower(),
               normal[3]]
    pkg = packages.get(DEFAULT_PACKAGE_ID)
    service = container.service
    now = support.FakeClock()()

    def answers(bulk_path: bool) -> list[tuple[str, bool, str | None]]:
        with container.sessions() as session:
            if bulk_path:
                got = bulk.queue_many(service, session, "OSD", request, pkg, PACKAGE, "t", now)
            else:
                got = [service.queue_one(session, "OSD", raw, pkg, PACKAGE, "t", now) for raw in request]
            queued = {a.execution_id: "<new>" for a, _ in got if a.is_queued and a.execution_id}
            out = []
            for answer, outbox_id in got:
                message = answer.error_message
                for eid, placeholder in queued.items():
                    message = message.replace(eid, placeholder) if message else message
                assert (outbox_id is not None) == answer.is_queued
                out.append((answer.server, answer.is_queued, message))
            session.rollback()
            return out

    one_by_one = answers(False)
    assert answers(True) == one_by_one
    assert [queued for _, queued, _ in one_by_one] == [False, True, False, False, False, True, False, True]


def test_two_group_actions_racing_give_each_server_one_execution(world) -> None:
    container, specs = world
    normal = [s.name for s in specs if s.scenario is Scenario.NORMAL]
    barrier = threading.Barrier(2)
    results: list[list] = [[], []]

    def run(i: int, names: list[str]) -> None:
        barrier.wait()
        results[i] = container.service.execute_package("OSD", names, PACKAGE, f"r{i}")

    threads = [threading.Thread(target=run, args=(0, normal[:8])), threading.Thread(target=run, args=(1, normal[2:]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = Counter(a.server for a in results[0] + results[1] if a.is_queued)
    assert set(queued) == set(normal) and set(queued.values()) == {1}
    refused = [a for a in results[0] + results[1] if not a.is_queued]
    assert all("already being patched" in (a.error_message or "") for a in refused)
    with container.sessions() as session:
        active = Counter(session.scalars(sa.select(models.Execution.server_name)
                                         .where(models.Execution.ended_at.is_(None))))
        emails = session.scalar(sa.select(sa.func.count()).select_from(models.Outbox))
    assert set(active.values()) == {1} and len(active) == len(normal)
    assert emails == len(normal)


def test_id_collisions_are_inserted_again_in_bulk_with_new_ids(world, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.common import QueryCounter
    from orchestrator.domain import naming

    container, specs = world
    normal = [s.name for s in specs if s.scenario is Scenario.NORMAL]
    service = container.service
    service.bulk_from = 2
    first = service.execute_package("OSD", normal[:4], PACKAGE, "jane")
    taken = [a.execution_id for a in first]
    fresh = iter(range(200_001, 300_000))
    drawn = iter([*taken, taken[0]])  # every first draw collides with a row, or with this request's own

    def new_id(datacenter: str) -> str:
        return next(drawn, None) or f"{datacenter.upper()}-{next(fresh)}"

    monkeypatch.setattr(naming, "new_execution_id", new_id)
    counter = QueryCounter(container.db_engine)
    try:
        second = service.execute_package("OSD", normal[4:10], PACKAGE, "jane")
    finally:
        counter.close()
    assert all(a.is_queued for a in second)
    ids = [a.execution_id for a in second]
    assert len(set(ids)) == 6 and not set(ids) & set(taken)
    assert counter.by_statement["SAVEPOINT"] == 0  # never the per-server path
    with container.sessions() as session:
        emails = dict(session.execute(sa.select(models.Outbox.execution_id, models.Outbox.kind)).all())
    assert all(emails.get(i) == "start" for i in ids)
