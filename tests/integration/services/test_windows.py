"""Scheduled patch windows on real PostgreSQL with an injected clock: an occurrence starts exactly once
whatever repeats (the task twice, two at once, a restarted beat), the cutoff stops a long run safely with
the reason in the end email, the next occurrence patches the rest, and the REST and CLI management."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.bootstrap import Container
from orchestrator.entrypoints.cli.main import app as cli_app
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import db, models
from orchestrator.services import auth, inventory, rollouts
from orchestrator.services.errors import Conflict, ServiceError
from orchestrator.services.window_specs import WindowSpec
from orchestrator.services.windows import WindowService
from orchestrator.settings import DEFAULT_PACKAGE_ID
from simulation import fleet as simulated
from simulation.specs import Scenario, SimServerSpec, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

PASSWORD = "correct horse battery"
NIGHTLY = {"cron": "0 22 * * *", "timezone": "UTC", "duration": "2h", "cutoff": "30m"}


@dataclass
class World:
    container: Container
    fleet: simulated.SimulatedFleet
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    mailer: mail.MemoryMailer
    specs: list[SimServerSpec]

    @property
    def windows(self) -> WindowService:
        return WindowService(self.container.service)

    def beat(self) -> None:
        """What beat sends every tick besides the engine's tick: the window task and the rollout gate."""
        self.windows.start_due()
        rollouts.RolloutGate.of(self.container.service).run()

    def drive(self, step_seconds: float = 60.0) -> None:
        support.drive(self.container, self.dispatcher, self.clock, step_seconds=step_seconds, on_tick=self.beat)

    def occurrences(self) -> list[models.WindowOccurrence]:
        with self.container.sessions() as session:
            return list(session.scalars(sa.select(models.WindowOccurrence).order_by(models.WindowOccurrence.id)))


def make_world(pg: str, specs: list[SimServerSpec], timings: simulated.SimTimings,
               start: datetime = datetime(2026, 11, 10, 21, 0, tzinfo=UTC), **settings: object) -> World:
    clock = support.FakeClock(start)
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), timings, seed=8, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    mailer = mail.MemoryMailer()
    container = support.make_container(support.test_settings(pg, **settings), fleet, clock, dispatcher, mailer)
    support.register(container, specs)
    return World(container, fleet, dispatcher, clock, mailer, specs)


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    specs = build_fleet_specs(8, 4, scenarios={Scenario.NORMAL: 4})
    made = make_world(pg, specs, simulated.SimTimings(reboot_seconds=30, package_seconds=20))
    yield made
    made.container.close()


def executions(world: World) -> list[models.Execution]:
    return support.executions(world.container)


def test_an_occurrence_starts_exactly_once_whatever_repeats(world: World) -> None:
    created = world.windows.create("OSD", WindowSpec(name="nightly", groups=["va1-0001"], max_concurrency=2,
                                                     **NIGHTLY), "jane")
    assert created.next_occurrences[0] == datetime(2026, 11, 10, 22, 0, tzinfo=UTC)
    assert world.windows.start_due() == []  # 21:00: not open yet
    world.clock.now = datetime(2026, 11, 10, 22, 0, 5, tzinfo=UTC)
    [started] = world.windows.start_due()
    assert started.queued == 4 and started.starts_at == datetime(2026, 11, 10, 22, 0, tzinfo=UTC)
    assert world.windows.start_due() == []  # the task runs again
    # beat restarts: a new process with its own container on the same database
    again = support.make_container(support.test_settings(world.container.settings.database_url), world.fleet,
                                   world.clock, support.ListDispatcher())
    try:
        assert WindowService(again.service).start_due() == []
    finally:
        again.close()
    # two window tasks at the same moment (two beats by mistake): still one occurrence
    world.clock.advance(60)
    barrier = threading.Barrier(2)
    results: list[int] = []

    def race() -> None:
        barrier.wait()
        results.append(len(world.windows.start_due()))

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0, 0]
    [occurrence] = world.occurrences()
    assert occurrence.not_after == datetime(2026, 11, 10, 23, 30, tzinfo=UTC)
    rows = executions(world)
    assert len(rows) == 4 and {r.rollout_id for r in rows} == {occurrence.rollout_id}
    assert all(r.not_after == occurrence.not_after for r in rows)
    assert all(r.requested_by == "window nightly" for r in rows)
    world.drive()
    assert {r.state for r in executions(world)} == {"completed"}
    assert len(world.occurrences()) == 1  # driving on to 22:0x did not start it again
    # the next night's occurrence patches again (nothing left to install: one empty cycle each)
    world.clock.now = datetime(2026, 11, 11, 22, 0, 30, tzinfo=UTC)
    world.drive()
    assert len(world.occurrences()) == 2 and len(executions(world)) == 8


def test_a_window_created_during_an_occurrence_waits_for_the_next_one(world: World) -> None:
    world.clock.now = datetime(2026, 11, 10, 22, 10, tzinfo=UTC)
    world.windows.create("OSD", WindowSpec(name="nightly", groups=["va1-0001"], **NIGHTLY), "jane")
    assert world.windows.start_due() == [] and executions(world) == []


def test_an_occurrence_missed_until_its_cutoff_is_not_started_late(world: World) -> None:
    world.windows.create("OSD", WindowSpec(name="nightly", groups=["va1-0001"], **NIGHTLY), "jane")
    world.clock.now = datetime(2026, 11, 10, 23, 30, tzinfo=UTC)  # beat was down from 21:00 to the cutoff
    assert world.windows.start_due() == [] and world.occurrences() == []


def test_the_monthly_rule_in_a_time_zone_fires_at_local_time(world: World) -> None:
    world.windows.create("OSD", WindowSpec(name="patch-friday", servers=[world.specs[0].name],
                                           monthly="second Tuesday + 3 days at 22:00", timezone="Europe/Berlin",
                                           duration="4h", cutoff="1h"), "jane")
    world.clock.now = datetime(2026, 11, 13, 20, 59, tzinfo=UTC)
    assert world.windows.start_due() == []
    world.clock.now = datetime(2026, 11, 13, 21, 0, 1, tzinfo=UTC)  # Friday 22:00:01 in Berlin (CET)
    [started] = world.windows.start_due()
    assert started.queued == 1 and started.starts_at == datetime(2026, 11, 13, 21, 0, tzinfo=UTC)
    assert executions(world)[0].not_after == datetime(2026, 11, 14, 0, 0, tzinfo=UTC)


def test_the_cutoff_stops_a_long_run_safely_and_the_next_window_patches_the_rest(pg: str) -> None:
    # one server with several waves of updates; a cycle takes 50 minutes and a reboot 10
    specs = build_fleet_specs(8, 2, scenarios={Scenario.NORMAL: 2})
    world = make_world(pg, specs[:1], simulated.SimTimings(reboot_seconds=600, package_seconds=3000),
                       package_timeout_seconds=7200.0, reboot_timeout_seconds=1800.0, poll_interval_seconds=30.0)
    try:
        name = specs[0].name
        world.windows.create("OSD", WindowSpec(name="nightly", servers=[name], **NIGHTLY), "jane")
        world.clock.now = datetime(2026, 11, 10, 22, 0, 5, tzinfo=UTC)
        world.drive()
        [first] = executions(world)
        not_after = datetime(2026, 11, 10, 23, 30, tzinfo=UTC)
        assert first.state == "cancelled" and first.outcome == "cancelled"
        reason = first.failure_reason or ""
        assert reason.startswith("the patch window closes at 2026-11-10 23:30 UTC (end minus cutoff): no new "
                                 f"update cycle started after cycle {first.cycle}; it resumes in the next window")
        with world.container.sessions() as session:
            starts = session.scalars(sa.select(models.Initiation.started_at).where(
                models.Initiation.execution_id == first.id)).all()
        assert starts and all(s < not_after for s in starts)  # no cycle began after end minus cutoff
        # a safe state: out of maintenance, no reboot owed by us, and the customer is told why
        status = world.fleet.status(name)
        assert not status.in_maintenance and status.up
        kinds = [e.kind.value for e in world.fleet.effects(name)]
        assert kinds.count("maintenance_on") == 1 and kinds[-1] == "maintenance_off"
        [end] = [m for m in world.mailer.sent if m["X-Patchaas-Kind"] == "end"]
        body = end.get_content()
        assert "Patching cancelled" in end["Subject"] and "the patch window closes at 2026-11-10 23:30 UTC" in body
        assert "it resumes in the next window" in body and "Maintenance mode was turned off" in body
        installed_first = world.fleet.installed_kbs(name)
        assert installed_first and len(installed_first) < len(specs[0].updates)
        # the next night: the rest is patched
        world.clock.now = datetime(2026, 11, 11, 22, 0, 5, tzinfo=UTC)
        world.drive()
        second = [r for r in executions(world) if r.id != first.id]
        assert len(second) == 1 and second[0].state == "completed", (second[0].state, second[0].failure_reason)
        assert world.fleet.installed_kbs(name) >= {u.kb for u in specs[0].updates}
        assert len(world.occurrences()) == 2
    finally:
        world.container.close()


def test_held_servers_are_skipped_when_the_window_closes_before_their_turn(pg: str) -> None:
    specs = build_fleet_specs(8, 3, scenarios={Scenario.NORMAL: 3})
    world = make_world(pg, specs, simulated.SimTimings(reboot_seconds=600, package_seconds=1500),
                       package_timeout_seconds=7200.0, reboot_timeout_seconds=1800.0, poll_interval_seconds=30.0)
    try:
        world.windows.create("OSD", WindowSpec(name="short", groups=["va1-0001"], max_concurrency=1,
                                               cron="0 22 * * *", duration="1h", cutoff="15m"), "jane")
        world.clock.now = datetime(2026, 11, 10, 22, 0, 5, tzinfo=UTC)
        world.drive()
        rows = sorted(executions(world), key=lambda r: r.rollout_position or 0)
        assert rows[0].state == "cancelled" and "the patch window closes" in (rows[0].failure_reason or "")
        for row in rows[1:]:
            assert row.cancelled_by == "rollout" and row.failure_reason == (
                "skipped: the patch window closed at 2026-11-10 22:45 UTC (end minus cutoff) before this server's "
                "turn; it is patched in the next window")
            assert world.fleet.effects(row.server_name) == []
    finally:
        world.container.close()


def test_windows_are_validated_and_managed(world: World) -> None:
    service = world.windows
    with pytest.raises(ServiceError, match="cutoff"):
        service.create("OSD", WindowSpec(name="w", groups=["va1-0001"], cron="0 22 * * *", duration="1h",
                                         cutoff="1h"), "jane")
    with pytest.raises(ServiceError, match="group va1-0042 not found"):
        service.create("OSD", WindowSpec(name="w", groups=["va1-0042"], cron="0 22 * * *"), "jane")
    created = service.create("OSD", WindowSpec(name="w", groups=["va1-0001"], cron="0 22 * * *"), "jane")
    with pytest.raises(Conflict, match="already has a window named 'w'"):
        service.create("OSD", WindowSpec(name="w", groups=["va1-0001"], cron="0 23 * * *"), "jane")
    assert [w.name for w in service.list_windows("OSD")] == ["w"]
    assert service.find("OSD", "w") == created.id
    service.delete("OSD", created.id)
    assert service.list_windows("OSD") == []


# --- REST -----------------------------------------------------------------------------------------------


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = auth.AuthService(world.container.sessions, world.clock, timedelta(days=14), hasher=cheap)
    with world.container.sessions.begin() as session:
        inventory.ensure_account(session, "XYZ", "XYZ", "VA1", "ops@xyz.example", db.utcnow())
    accounts.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    accounts.create_user("viewer", "OSD", ["AccountViewer"], PASSWORD)
    accounts.create_user("xavier", "XYZ", ["AccountAdmin"], PASSWORD)
    with TestClient(create_app(world.container, auth_service=accounts)) as test_client:
        yield test_client


def login(client: TestClient, username: str) -> dict[str, str]:
    answer = client.post("/v2/authentication/login", json={"username": username, "password": PASSWORD})
    return {"Authorization": f"Bearer {answer.json()['bearerToken']}"}


WINDOW: dict[str, Any] = {"name": "patch-friday", "groups": ["va1-0001"],
                          "monthly": "second Tuesday + 3 days at 22:00", "timezone": "Europe/Berlin",
                          "duration": "4h", "cutoff": "30m", "maxConcurrency": "50%", "maxErrors": 1}


def test_rest_windows_create_list_get_delete(world: World, client: TestClient) -> None:
    jane = login(client, "jane")
    answer = client.post("/v2/patchaas/osd/windows", json=WINDOW, headers=jane)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["scheduleKind"] == "monthly" and body["schedule"] == "second Tuesday + 3 days at 22:00"
    assert body["nextOccurrences"][0] == "2026-11-13T21:00:00Z"
    assert body["maxConcurrency"] == "50%" and body["maxErrors"] == "1" and body["cutoff"] == "30m"
    window_id = body["id"]
    assert [w["id"] for w in client.get("/v2/patchaas/OSD/windows", headers=jane).json()] == [window_id]
    viewer = login(client, "viewer")
    assert client.get(f"/v2/patchaas/osd/windows/{window_id}", headers=viewer).status_code == 200
    assert client.post("/v2/patchaas/osd/windows", json=WINDOW | {"name": "x"}, headers=viewer).status_code == 403
    xavier = login(client, "xavier")
    assert client.get(f"/v2/patchaas/osd/windows/{window_id}", headers=xavier).status_code == 404
    assert client.get(f"/v2/patchaas/xyz/windows/{window_id}", headers=xavier).status_code == 404
    duplicate = client.post("/v2/patchaas/osd/windows", json=WINDOW, headers=jane)
    assert duplicate.status_code == 409 and "already has a window" in duplicate.json()["message"]
    # the occurrence starts; the window's answer shows it with its rollout
    world.clock.now = datetime(2026, 11, 13, 21, 0, 10, tzinfo=UTC)
    world.beat()
    detail = client.get(f"/v2/patchaas/osd/windows/{window_id}", headers=jane).json()
    [recent] = detail["recentOccurrences"]
    assert recent["startsAt"] == "2026-11-13T21:00:00Z" and recent["notAfter"] == "2026-11-14T00:30:00Z"
    rollout = client.get(f"/v2/patchaas/osd/rollouts/{recent['rolloutId']}", headers=jane).json()
    assert rollout["total"] == 4 and rollout["concurrencyLimit"] == 2 and rollout["counts"]["running"] == 2
    deleted = client.delete(f"/v2/patchaas/osd/windows/{window_id}", headers=jane)
    assert deleted.status_code == 200 and deleted.json()["name"] == "patch-friday"
    assert client.get(f"/v2/patchaas/osd/windows/{window_id}", headers=jane).status_code == 404
    assert client.get("/v2/patchaas/osd/windows", headers=jane).json() == []


@pytest.mark.parametrize("change,message", [
    ({"monthly": None, "cron": "0 25 * * *"}, "bad cron expression '0 25 * * *'"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"cutoff": "4h"}, "the cutoff (4h) must be shorter than the duration (4h)"),
    ({"cron": "0 22 * * 5"}, "exactly one schedule"),
    ({"maxConcurrency": "0%"}, "maxConcurrency must be a percentage between 1% and 100%"),
    ({"groups": [], "servers": []}, "a window needs targets"),
    ({"package": {"packageId": DEFAULT_PACKAGE_ID, "parameters": {"healthChecks": [{"name": "db", "kind": "tcp"}]}}},
     "healthChecks.0: Value error, tcp checks need `host`"),
])
def test_rest_window_validation_is_a_clear_400(client: TestClient, change: dict[str, Any], message: str) -> None:
    answer = client.post("/v2/patchaas/osd/windows", json=WINDOW | change, headers=login(client, "jane"))
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["message"]


def test_rest_group_action_with_rate_control_keeps_the_clc_answers(world: World, client: TestClient) -> None:
    jane = login(client, "jane")
    body = {"groups": ["va1-0001"], "package": {"packageId": DEFAULT_PACKAGE_ID, "parameters": {}},
            "maxConcurrency": "25%", "maxErrors": 0, "waves": [[world.specs[3].name]]}
    answer = client.post("/v2/operations/osd/groups/executePackage", json=body, headers=jane)
    assert answer.status_code == 200, answer.text
    items = answer.json()
    assert [set(i) for i in items] == [{"server", "isQueued", "links", "executionId"}] * 4
    statuses = [client.get(i["links"][0]["href"], headers=jane).json()["status"] for i in items]
    assert statuses == ["notStarted"] * 4
    world.drive(step_seconds=5)
    rows = {r.server_name: r for r in executions(world)}
    assert rows[world.specs[3].name].rollout_position == 0 and {r.state for r in rows.values()} == {"completed"}
    bad = client.post("/v2/operations/osd/groups/executePackage", json=body | {"maxConcurrency": "ten"},
                      headers=jane)
    assert bad.status_code == 400 and "maxConcurrency" in bad.json()["message"]


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_window_create_list_delete(world: World, pg: str) -> None:
    runner = CliRunner()
    env = {"PATCHAAS_DATABASE_URL": pg, "PATCHAAS_BROKER_URL": "memory://"}
    bad = runner.invoke(cli_app, ["window", "create", "--alias", "OSD", "--name", "w", "--group", "va1-0001",
                                  "--cron", "0 22 * *"], env=env)
    assert bad.exit_code == 2 and "bad cron expression" in bad.output
    bad = runner.invoke(cli_app, ["window", "create", "--alias", "OSD", "--name", "w", "--group", "va1-0001",
                                  "--cron", "0 22 * * *", "--timezone", "Nowhere/Land"], env=env)
    assert bad.exit_code == 2 and "unknown time zone" in bad.output
    bad = runner.invoke(cli_app, ["window", "create", "--alias", "OSD", "--name", "w", "--group", "va1-0001",
                                  "--cron", "0 22 * * *", "--duration", "1h", "--cutoff", "2h"], env=env)
    assert bad.exit_code == 2 and "must be shorter than the duration" in bad.output
    made = runner.invoke(cli_app, ["window", "create", "--alias", "OSD", "--name", "patch-friday", "--group",
                                   "va1-0001", "--monthly", "second Tuesday + 3 days at 22:00", "--timezone",
                                   "Europe/Berlin", "--duration", "4h", "--cutoff", "30m", "--max-concurrency",
                                   "10%", "--max-errors", "2"], env=env)
    assert made.exit_code == 0, made.output
    assert "patch-friday" in made.output and "second Tuesday + 3 days at 22:00" in made.output
    listed = runner.invoke(cli_app, ["window", "list", "--alias", "OSD"], env=env)
    assert listed.exit_code == 0 and "patch-friday" in listed.output and "next:" in listed.output
    missing = runner.invoke(cli_app, ["window", "delete", "--alias", "OSD", "nope"], env=env)
    assert missing.exit_code == 1 and "window nope not found" in missing.output
    deleted = runner.invoke(cli_app, ["window", "delete", "--alias", "OSD", "patch-friday"], env=env)
    assert deleted.exit_code == 0 and "deleted" in deleted.output
    bad = runner.invoke(cli_app, ["execute", "--alias", "OSD", "--group", "va1-0001", "--max-concurrency", "ten"],
                        env=env)
    assert bad.exit_code == 2 and "maxConcurrency must be a count" in bad.output


# --- editing, pausing, resuming -------------------------------------------------------------------------


def test_a_paused_window_starts_nothing_and_resumes_from_its_next_occurrence(world: World) -> None:
    created = world.windows.create("OSD", WindowSpec(name="nightly", groups=["va1-0001"], **NIGHTLY), "jane")
    paused = world.windows.update("OSD", created.id, {"enabled": False})
    assert not paused.enabled and paused.next_occurrences == ()
    world.clock.now = datetime(2026, 11, 10, 22, 0, 5, tzinfo=UTC)
    assert world.windows.start_due() == [] and world.occurrences() == []
    # resumed while the 22:00 occurrence is open: it is not started late, the next night's is
    world.clock.now = datetime(2026, 11, 10, 22, 20, tzinfo=UTC)
    resumed = world.windows.update("OSD", created.id, {"enabled": True})
    assert resumed.enabled and resumed.next_occurrences[0] == datetime(2026, 11, 11, 22, 0, tzinfo=UTC)
    assert world.windows.start_due() == [] and executions(world) == []
    world.clock.now = datetime(2026, 11, 11, 22, 0, 5, tzinfo=UTC)
    [started] = world.windows.start_due()
    assert started.queued == 4
    # pausing during a running occurrence leaves its rollout alone: the run completes
    world.windows.update("OSD", created.id, {"enabled": False})
    world.drive()
    assert {r.state for r in executions(world)} == {"completed"} and len(world.occurrences()) == 1


def test_an_edit_applies_from_the_next_occurrence_and_never_restarts_an_open_one(world: World) -> None:
    created = world.windows.create("OSD", WindowSpec(name="nightly", groups=["va1-0001"], max_concurrency=1,
                                                     **NIGHTLY), "jane")
    world.clock.now = datetime(2026, 11, 10, 22, 0, 5, tzinfo=UTC)
    [first] = world.windows.start_due()
    # moved to 22:30 the same night while the 22:00 occurrence runs: 22:30 (after the change) is a new
    # occurrence of the new schedule; the open one keeps its rollout and its rate control
    world.clock.now = datetime(2026, 11, 10, 22, 10, tzinfo=UTC)
    edited = world.windows.update("OSD", created.id, {"cron": "30 22 * * *", "max_concurrency": "50%",
                                                      "cutoff": "15m"})
    assert edited.schedule_kind == "cron" and edited.schedule == "30 22 * * *" and edited.cutoff == "15m"
    assert edited.max_concurrency == "50%" and edited.next_occurrences[0] == datetime(2026, 11, 10, 22, 30,
                                                                                         tzinfo=UTC)
    assert world.windows.start_due() == []  # 22:10: the old occurrence is not started again
    with world.container.sessions() as session:
        rollout = session.get(models.Rollout, first.rollout_id)
        assert rollout is not None and rollout.max_concurrency == "1"
    # a monthly rule replaces the cron expression; the name can change; everything is validated
    monthly = world.windows.update("OSD", created.id, {"monthly": "second Tuesday at 22:00",
                                                        "name": "patch-tuesday"})
    assert monthly.schedule_kind == "monthly" and monthly.name == "patch-tuesday"
    assert world.windows.find("OSD", "patch-tuesday") == created.id
    with pytest.raises(ServiceError, match="must be shorter than the duration"):
        world.windows.update("OSD", created.id, {"cutoff": "2h"})
    with pytest.raises(ServiceError, match="cannot change created_by"):
        world.windows.update("OSD", created.id, {"created_by": "mallory"})
    with pytest.raises(ServiceError, match="group va1-0042 not found"):
        world.windows.update("OSD", created.id, {"groups": ["va1-0042"]})
    world.windows.create("OSD", WindowSpec(name="other", groups=["va1-0001"], **NIGHTLY), "jane")
    with pytest.raises(Conflict, match="already has a window named 'other'"):
        world.windows.update("OSD", created.id, {"name": "other"})
    unchanged = world.windows.get("OSD", created.id)  # a refused change leaves the window as it was
    assert unchanged.name == "patch-tuesday" and unchanged.cutoff == "15m"


def test_rest_window_patch_pauses_edits_and_refuses_clearly(world: World, client: TestClient) -> None:
    jane = login(client, "jane")
    window_id = client.post("/v2/patchaas/osd/windows", json=WINDOW, headers=jane).json()["id"]
    url = f"/v2/patchaas/osd/windows/{window_id}"
    paused = client.patch(url, json={"enabled": False}, headers=jane)
    assert paused.status_code == 200, paused.text
    assert paused.json()["enabled"] is False and paused.json()["nextOccurrences"] == []
    edited = client.patch(url, json={"enabled": True, "cron": "0 23 * * 5", "maxErrors": None}, headers=jane)
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert body["enabled"] is True and body["scheduleKind"] == "cron" and body["maxErrors"] is None
    assert body["maxConcurrency"] == "50%"  # untouched
    for change, status, message in (
        ({}, 400, "nothing to change"),
        ({"name": None}, 400, "name cannot be null"),
        ({"cutoff": "5h"}, 400, "must be shorter than the duration"),
        ({"cron": None}, 400, "exactly one schedule"),
        ({"timezone": "Mars/Olympus"}, 400, "unknown time zone"),
    ):
        answer = client.patch(url, json=change, headers=jane)
        assert answer.status_code == status and message in answer.json()["message"], (change, answer.text)
    assert client.patch(url, json={"enabled": False}, headers=login(client, "viewer")).status_code == 403
    assert client.patch(url, json={"enabled": False}, headers=login(client, "xavier")).status_code == 404
    client.post("/v2/patchaas/osd/windows", json=WINDOW | {"name": "second"}, headers=jane)
    taken = client.patch(url, json={"name": "second"}, headers=jane)
    assert taken.status_code == 409 and "already has a window named 'second'" in taken.json()["message"]
    assert client.get(url, headers=jane).json()["name"] == "patch-friday"


def test_cli_window_edit_pause_resume(world: World, pg: str) -> None:
    runner = CliRunner()
    env = {"PATCHAAS_DATABASE_URL": pg, "PATCHAAS_BROKER_URL": "memory://"}
    world.windows.create("OSD", WindowSpec(name="nightly", groups=["va1-0001"], max_errors=2, **NIGHTLY), "jane")
    paused = runner.invoke(cli_app, ["window", "pause", "--alias", "OSD", "nightly"], env=env)
    assert paused.exit_code == 0 and "paused" in paused.output, paused.output
    shown = runner.invoke(cli_app, ["window", "show", "--alias", "OSD", "nightly"], env=env)
    assert "(paused)" in shown.output and "next:" not in shown.output
    resumed = runner.invoke(cli_app, ["window", "resume", "--alias", "OSD", "nightly"], env=env)
    assert resumed.exit_code == 0 and "(paused)" not in resumed.output and "next:" in resumed.output
    edited = runner.invoke(cli_app, ["window", "edit", "--alias", "OSD", "nightly", "--cron", "0 3 * * 6",
                                     "--max-errors", "none", "--duration", "3h"], env=env)
    assert edited.exit_code == 0, edited.output
    assert '"0 3 * * 6"' in edited.output and "3h long" in edited.output and "max errors none" in edited.output
    nothing = runner.invoke(cli_app, ["window", "edit", "--alias", "OSD", "nightly"], env=env)
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    bad = runner.invoke(cli_app, ["window", "edit", "--alias", "OSD", "nightly", "--cutoff", "9h"], env=env)
    assert bad.exit_code == 2 and "must be shorter than the duration" in bad.output
    missing = runner.invoke(cli_app, ["window", "pause", "--alias", "OSD", "nope"], env=env)
    assert missing.exit_code == 1 and "window nope not found" in missing.output
