"""Readiness (`/readyz`, `patchaas status`) against the real PostgreSQL and Redis, and a closed port or an
unmigrated database where they must say what is down; the overview's counts on real executions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator import bootstrap
from orchestrator.bootstrap import Container
from orchestrator.entrypoints.cli.main import app as cli_app
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import models
from orchestrator.services import health
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1
REQUEST = PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={})


@pytest.fixture
def world(pg: str) -> Iterator[tuple[Container, support.ListDispatcher, support.FakeClock]]:
    clock = support.FakeClock()
    specs = build_fleet_specs(4, 4, scenarios={Scenario.NORMAL: 4})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(), seed=3,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher)
    support.register(container, specs)
    yield container, dispatcher, clock
    container.close()


def test_readyz_is_200_when_postgresql_and_redis_answer_and_503_naming_what_is_down(
    pg: str, redis_url: str, tmp_path: Path
) -> None:
    clock = support.FakeClock()
    for broker, database, status, words in (
        (redis_url, pg, 200, []),
        (CLOSED, pg, 503, ["broker:"]),
        (redis_url, f"sqlite:///{tmp_path / 'empty.db'}", 503, ["database:", "schema at migration none",
                                                                "patchaas db upgrade"]),
    ):
        settings = support.test_settings(database, broker_url=broker)
        container = bootstrap.build(settings, dispatcher=support.ListDispatcher(), clock=clock)
        try:
            with TestClient(create_app(container)) as client:
                assert client.get("/healthz").json() == {"status": "ok"}  # liveness checks nothing else
                answer = client.get("/readyz")
                assert answer.status_code == status, answer.text
                body = answer.json()
                assert [c["name"] for c in body["checks"]] == ["database", "broker"]
                if status == 200:
                    assert body["status"] == "ready" and all(c["ok"] for c in body["checks"])
                else:
                    assert all(word in body["message"] for word in words), body["message"]
        finally:
            container.close()


def test_the_overview_counts_active_overdue_retrying_unsent_and_servers_left_in_maintenance(world) -> None:  # type: ignore[no-untyped-def]
    container, dispatcher, clock = world
    answers = container.service.execute_package_on_groups("OSD", ["va1-0001"], REQUEST, "jane")
    ids = [str(a.execution_id) for a in answers]
    assert len(ids) == 4
    first = health.overview(container.sessions, clock())
    assert sum(first.active.values()) == 4 and first.overdue == 0 and first.unsent_emails == 4
    # nobody runs the steps for two minutes: every timer is overdue; one lease expired, one step retrying
    clock.advance(120)
    with container.sessions.begin() as session:
        session.execute(sa.update(models.Execution).where(models.Execution.id == ids[0])
                        .values(lease_owner="dead-worker", lease_expires_at=clock() - timedelta(seconds=5)))
        session.execute(sa.update(models.Execution).where(models.Execution.id == ids[1]).values(attempts=2))
    late = health.overview(container.sessions, clock())
    assert late.overdue == 4 and late.oldest_overdue_seconds is not None and late.oldest_overdue_seconds >= 120
    assert late.expired_leases == 1 and late.retrying == 1 and not late.healthy
    assert late.oldest_unsent_seconds is not None and late.oldest_unsent_seconds >= 120
    dispatcher.steps.extend(ids)
    support.drive(container, dispatcher, clock)
    done = health.overview(container.sessions, clock())
    assert done.active == {} and done.overdue == 0 and done.unsent_emails == 0 and done.healthy
    # a run whose cleanup stopped: its server may still be in maintenance until a later run cleans up
    with container.sessions.begin() as session:
        session.execute(sa.update(models.Execution).where(models.Execution.id == ids[2])
                        .values(failure_reason="cleanup stopped: control plane unreachable"))
        server = session.get(models.Execution, ids[2]).server_name  # type: ignore[union-attr]
    stuck = health.overview(container.sessions, clock())
    assert stuck.left_in_maintenance == ((server, ids[2]),) and not stuck.healthy
    assert stuck.as_dict()["left_in_maintenance"] == [{"server": server, "execution_id": ids[2]}]
    clock.advance(60)
    [again] = container.service.execute_package("OSD", [server], REQUEST, "jane")
    assert again.is_queued
    assert health.overview(container.sessions, clock()).left_in_maintenance == ()


def test_cli_status_exit_codes_and_json(pg: str, redis_url: str) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli_app, ["status"], env={"PATCHAAS_DATABASE_URL": pg, "PATCHAAS_BROKER_URL": redis_url})
    assert ok.exit_code == 0, ok.output
    assert "database  ok" in ok.output and "broker    ok" in ok.output and "active    0" in ok.output
    down = runner.invoke(cli_app, ["status", "--json"], env={"PATCHAAS_DATABASE_URL": pg,
                                                               "PATCHAAS_BROKER_URL": CLOSED})
    assert down.exit_code == 1
    report = json.loads(down.output)
    assert report["ready"] is False and [c["ok"] for c in report["checks"]] == [True, False]
    assert report["overview"]["active"] == {} and report["overview"]["healthy"] is True
