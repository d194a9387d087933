"""The tick's claim on PostgreSQL is one statement (`executions._claim_and_mark`): it must mark each row
dispatched for the window `executions.mark_dispatched` computes in Python (`redrive` at first, then as long as
the row has waited, up to 8 x), and hand the rows back soonest first."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestrator.engine import executions
from orchestrator.persistence import models
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support

pytestmark = pytest.mark.postgres

REDRIVE = timedelta(seconds=30)
# (seconds since the row became claimable, its lease expired that long ago instead of its timer)
WAITS = [(-2.0, False), (0.0, False), (15.0, False), (45.0, True), (60.0, False), (100.0, False), (1000.0, True)]


@pytest.fixture
def container(pg: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(5, len(WAITS), scenarios={Scenario.NORMAL: len(WAITS)})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=5,
                                            clock=clock.seconds)
    made = support.make_container(support.test_settings(pg), fleet, clock, support.ListDispatcher())
    support.register(made, specs)
    answers = made.service.execute_package("OSD", [s.name for s in specs], PackageRequest(packageId=DEFAULT_PACKAGE_ID),
                                           "t")
    assert all(a.is_queued for a in answers)
    yield made, clock, [a.execution_id for a in answers]
    made.close()


def test_one_statement_claim_marks_the_windows_mark_dispatched_gives(container) -> None:
    made, clock, ids = container
    now = clock()
    table = models.Execution.__table__
    with made.sessions.begin() as session:
        for execution_id, (waited, by_lease) in zip(ids, WAITS, strict=True):
            since = now - timedelta(seconds=waited)
            session.execute(sa.update(table).where(table.c.id == execution_id).values(
                next_run_at=since - timedelta(seconds=5) if by_lease else since,
                lease_expires_at=since if by_lease else None, lease_owner=None, dispatched_until=None))
    until = now + timedelta(seconds=5)
    with made.sessions.begin() as session:
        claimed = executions.claim_due_until(session, now, until, REDRIVE, limit=len(ids))
    with made.sessions.begin() as session:
        rows = {r.id: r for r in session.execute(sa.select(table).where(table.c.id.in_(ids)))}
    assert {execution_id for execution_id, _ in claimed} == set(ids)
    assert claimed == sorted(claimed, key=lambda item: (item[1], item[0]))  # soonest first
    seen = set()
    for execution_id in ids:
        row = rows[execution_id]
        since = max(row.next_run_at, row.lease_expires_at or row.next_run_at)
        growth = max(1, min(executions.REDRIVE_GROWTH, int((now - since) / REDRIVE)))
        assert row.dispatched_until == until + REDRIVE * growth, (execution_id, growth)
        seen.add(growth)
    assert seen == {1, 2, 3, 8}  # the clamp at both ends and the waits between
    with made.sessions.begin() as session:  # marked: the next tick of the same moment takes none of them
        assert executions.claim_due_until(session, now, until, REDRIVE, limit=len(ids)) == []


def test_a_claim_continues_after_the_last_row_the_previous_one_took(container) -> None:
    made, clock, ids = container
    now = clock()
    with made.sessions.begin() as session:
        session.execute(sa.update(models.Execution.__table__).where(models.Execution.__table__.c.id.in_(ids))
                        .values(next_run_at=now - timedelta(seconds=1), dispatched_until=None))
    taken: list[tuple[str, object]] = []
    after = None
    while True:
        with made.sessions.begin() as session:
            part = executions.claim_due_until(session, now, now, REDRIVE, limit=3, after=after)
        if not part:
            break
        taken += part
        after = (part[-1][1], part[-1][0])
    assert sorted(execution_id for execution_id, _ in taken) == sorted(ids)  # each once, in three claims
