"""Compliance from real runs on the simulated fleet, on PostgreSQL: completed, failed with a quarantined KB,
a scan that found updates, a server never patched, one being patched; through the service, REST and CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.entrypoints.cli.main import app as cli_app
from orchestrator.entrypoints.rest import create_app
from orchestrator.services import compliance
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from tests import support
from tests.integration.services.test_windows import PASSWORD, World, login, make_world


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    specs = build_fleet_specs(21, 5, scenarios={Scenario.NORMAL: 2, Scenario.BROKEN_KB: 1,
                                                          Scenario.UP_TO_DATE: 2})
    made = make_world(pg, specs, simulated.SimTimings(reboot_seconds=30, package_seconds=20))
    yield made
    made.container.close()


def by_scenario(world: World) -> dict[Scenario, list[str]]:
    found: dict[Scenario, list[str]] = {}
    for spec in world.specs:
        found.setdefault(spec.scenario, []).append(spec.name)
    return found


def run(world: World, servers: list[str], **parameters: object) -> None:
    answers = world.container.service.execute_package(
        "OSD", servers, PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=dict(parameters)), "jane")
    assert all(a.is_queued for a in answers), answers
    world.drive(step_seconds=5)


def test_compliance_follows_each_servers_last_finished_run(world: World, pg: str) -> None:
    names = by_scenario(world)
    normal, other_normal = names[Scenario.NORMAL]
    [broken] = names[Scenario.BROKEN_KB]
    fresh, never = names[Scenario.UP_TO_DATE]
    run(world, [normal, broken])
    run(world, [other_normal], scanOnly=True)  # a scan: updates are offered, nothing installs
    run(world, [fresh])
    found = {s.server: s for s in compliance.for_account(world.container.service, "OSD").servers}
    assert found[normal].status == "compliant" and found[normal].installed > 0 and found[normal].missing == ()
    assert found[fresh].status == "compliant" and "nothing left to install" in found[fresh].reason
    assert found[broken].status == "non_compliant" and len(found[broken].failed) == 1
    assert found[broken].execution_status == "failed" and found[broken].failed[0] in found[broken].reason
    scan = found[other_normal]
    assert scan.status == "non_compliant" and len(scan.missing) > 0 and "found" in scan.reason
    assert found[never].status == "unknown" and found[never].as_of is None
    # a real run after the scan makes it compliant; while a run is in progress the last answer stands
    answers = world.container.service.execute_package(
        "OSD", [other_normal, never], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={}), "jane")
    assert all(a.is_queued for a in answers)
    during = {s.server: s for s in compliance.for_account(world.container.service, "OSD").servers}
    assert during[other_normal].status == "non_compliant" and during[other_normal].patching_now
    assert during[never].status == "unknown" and during[never].patching_now and "running" in during[never].reason
    world.drive(step_seconds=5)
    after = compliance.for_account(world.container.service, "OSD")
    assert {s.server: s.status for s in after.servers}[other_normal] == "compliant"
    assert after.counts() == {"compliant": 4, "non_compliant": 1, "unknown": 0}
    # stale: a month later, with a two-week limit, every answer is flagged
    world.clock.advance(timedelta(days=30).total_seconds())
    old = compliance.for_account(world.container.service, "OSD", stale_after=timedelta(days=14))
    assert all(s.stale for s in old.servers)


def test_rest_and_cli_compliance(world: World, pg: str) -> None:
    names = by_scenario(world)
    run(world, [names[Scenario.BROKEN_KB][0], names[Scenario.UP_TO_DATE][0]])
    from argon2 import PasswordHasher

    from orchestrator.services import auth

    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = auth.AuthService(world.container.sessions, world.clock, timedelta(days=14), hasher=cheap)
    accounts.create_user("viewer", "OSD", ["AccountViewer"], PASSWORD)
    with TestClient(create_app(world.container, auth_service=accounts)) as client:
        viewer = login(client, "viewer")
        answer = client.get("/v2/patchaas/osd/compliance", headers=viewer)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["counts"] == {"compliant": 1, "non_compliant": 1, "unknown": 3}
        broken = next(s for s in body["servers"] if s["server"] == names[Scenario.BROKEN_KB][0])
        assert broken["status"] == "non_compliant" and broken["executionStatus"] == "failed" and broken["failed"]
        scoped = client.get("/v2/patchaas/osd/compliance?group=va1-0001&staleAfterDays=30", headers=viewer)
        assert scoped.status_code == 200 and len(scoped.json()["servers"]) == 5
        missing = client.get("/v2/patchaas/osd/compliance?group=va1-0099", headers=viewer)
        assert missing.status_code == 404 and "group va1-0099 not found" in missing.json()["message"]
        bad = client.get("/v2/patchaas/osd/compliance?staleAfterDays=0", headers=viewer)
        assert bad.status_code == 400 and "staleAfterDays" in bad.json()["message"]
        assert client.get("/v2/patchaas/osd/compliance").status_code == 401
    runner = CliRunner()
    env = {"PATCHAAS_DATABASE_URL": pg, "PATCHAAS_BROKER_URL": "memory://"}
    shown = runner.invoke(cli_app, ["compliance", "--alias", "OSD"], env=env)
    assert shown.exit_code == 3, shown.output  # not every server is compliant
    assert "1 compliant, 1 non-compliant, 3 unknown" in shown.output
    as_json = runner.invoke(cli_app, ["compliance", "--alias", "OSD", "--json"], env=env)
    assert json.loads(as_json.output)["counts"]["unknown"] == 3
    nope = runner.invoke(cli_app, ["compliance", "--alias", "OSD", "--group", "va1-0099"], env=env)
    assert nope.exit_code == 1 and "group va1-0099 not found" in nope.output
    assert support.active(world.container) == []
