"""The hooks REST API on real PostgreSQL, and `patchaas hook …`: an operator puts (201, then 200 on replace),
lists, reads and deletes hooks; secret headers are sealed and never answered; a viewer only reads; another account
gets 404; bad definitions get a 400 message; every change is an audit event; the detail answer shows the runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.bootstrap import Container
from orchestrator.entrypoints.cli.main import app as cli
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import event_models, hook_models
from orchestrator.services import auth
from orchestrator.services import hooks as hook_service
from orchestrator.services.errors import ServiceError
from orchestrator.settings import DEFAULT_PACKAGE_ID
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

PASSWORD = "correct horse battery"
KEY = Fernet.generate_key().decode()
DRAIN = {"kind": "command", "points": ["pre_maintenance"], "command": "echo drained", "timeoutSeconds": 30}
NOTIFY = {"kind": "http", "points": ["post_run"], "url": "https://hooks.example.com/done", "onFailure": "warn",
          "headers": {"X-Team": "ops"}, "secretHeaders": {"Authorization": "Bearer very-secret-token"},
          "body": '{"server": "{{ execution.server }}"}'}


@dataclass
class World:
    container: Container
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    client: TestClient
    servers: list[str]

    def login(self, username: str = "jane") -> dict[str, str]:
        answer = self.client.post("/v2/authentication/login", json={"username": username, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['bearerToken']}"}


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    clock = support.FakeClock()
    specs = build_fleet_specs(23, 1, scenarios={Scenario.NORMAL: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=23,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg, webhook_key=KEY), fleet, clock, dispatcher,
                                       mail.MemoryMailer())
    support.register(container, specs)
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = auth.AuthService(container.sessions, clock, timedelta(days=14), hasher=cheap)
    accounts.create_account("XYZ", "XYZ", "VA1", "ops@xyz.example")
    accounts.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    accounts.create_user("viewer", "OSD", ["AccountViewer"], PASSWORD)
    accounts.create_user("xavier", "XYZ", ["AccountAdmin"], PASSWORD)
    with TestClient(create_app(container, auth_service=accounts)) as client:
        yield World(container, dispatcher, clock, client, [s.name for s in specs])
    container.close()


def test_an_operator_puts_lists_reads_and_deletes_hooks(world: World) -> None:
    jane = world.login()
    created = world.client.put("/v2/patchaas/osd/hooks/drain", json=DRAIN, headers=jane)
    assert created.status_code == 201, created.text
    assert created.json()["points"] == ["pre_maintenance"] and created.json()["createdBy"] == "jane"
    replaced = world.client.put("/v2/patchaas/OSD/hooks/drain", json={**DRAIN, "command": "echo again"}, headers=jane)
    assert replaced.status_code == 200 and replaced.json()["command"] == "echo again"
    notify = world.client.put("/v2/patchaas/OSD/hooks/notify", json=NOTIFY, headers=jane)
    assert notify.status_code == 201, notify.text
    assert notify.json()["secretHeaderNames"] == ["Authorization"] and notify.json()["headers"] == {"X-Team": "ops"}
    listed = world.client.get("/v2/patchaas/OSD/hooks", headers=jane)
    assert [h["name"] for h in listed.json()] == ["drain", "notify"]
    one = world.client.get("/v2/patchaas/OSD/hooks/notify", headers=jane)
    assert one.status_code == 200 and one.json()["onFailure"] == "warn"
    for answer in (notify, listed, one):
        assert "very-secret-token" not in answer.text
    with world.container.sessions() as session:
        row = session.scalar(sa.select(hook_models.Hook).where(hook_models.Hook.name == "notify"))
        assert row is not None and row.secret_sealed and "very-secret-token" not in row.secret_sealed
        assert "very-secret-token" not in json.dumps(row.definition)
    gone = world.client.delete("/v2/patchaas/OSD/hooks/drain", headers=jane)
    assert gone.status_code == 200 and gone.json()["name"] == "drain"
    missing = world.client.get("/v2/patchaas/OSD/hooks/drain", headers=jane)
    assert missing.status_code == 404 and missing.json()["message"] == "hook drain not found"
    with world.container.sessions() as session:
        audit = session.execute(sa.select(event_models.Event.kind, event_models.Event.actor)
                                .where(event_models.Event.kind.like("hook.%")).order_by(event_models.Event.id)).all()
    assert [tuple(a) for a in audit] == [("hook.created", "jane"), ("hook.updated", "jane"), ("hook.created", "jane"),
                                         ("hook.deleted", "jane")]


@pytest.mark.parametrize(("body", "message"), [
    ({"kind": "command", "points": ["pre_cycle"]}, "a command hook needs `command`"),
    ({"kind": "http", "points": ["post_run"], "url": "ftp://files.example/x"}, "an http(s) URL"),
    ({"kind": "http", "points": ["post_run"], "url": "https://a.example/x", "body": "{% if %}"}, "does not parse"),
    ({"kind": "http", "points": ["post_run"], "url": "https://a.example/x", "headersRef": "vault:x"},
     "headersRef must be env:NAME"),
    ({"kind": "command", "points": ["sometime"], "command": "x"}, "points"),
])
def test_a_bad_definition_gets_a_400_message(world: World, body: dict[str, object], message: str) -> None:
    answer = world.client.put("/v2/patchaas/OSD/hooks/bad", json=body, headers=world.login())
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text


def test_a_viewer_reads_and_another_account_sees_nothing(world: World) -> None:
    world.client.put("/v2/patchaas/OSD/hooks/drain", json=DRAIN, headers=world.login())
    viewer = world.login("viewer")
    assert world.client.get("/v2/patchaas/OSD/hooks", headers=viewer).status_code == 200
    assert world.client.put("/v2/patchaas/OSD/hooks/x", json=DRAIN, headers=viewer).status_code == 403
    xavier = world.login("xavier")
    assert world.client.get("/v2/patchaas/OSD/hooks/drain", headers=xavier).status_code == 404
    assert world.client.delete("/v2/patchaas/OSD/hooks/drain", headers=xavier).status_code == 404
    assert world.client.get("/v2/patchaas/OSD/hooks").status_code == 401
    bad_name = world.client.put("/v2/patchaas/OSD/hooks/Not%20OK", json=DRAIN, headers=world.login())
    assert bad_name.status_code == 400 and "message" in bad_name.json()


def test_the_detail_answer_shows_the_runs_hooks(world: World) -> None:
    jane = world.login()
    world.client.put("/v2/patchaas/OSD/hooks/drain", json=DRAIN, headers=jane)
    server = world.servers[0]
    queued = world.client.post("/v2/operations/OSD/servers/executePackage", headers=jane, json={
        "servers": [server], "package": {"packageId": DEFAULT_PACKAGE_ID, "parameters": {}}})
    assert queued.status_code == 200, queued.text
    execution_id = queued.json()[0]["executionId"]
    support.drive(world.container, world.dispatcher, world.clock)
    detail = world.client.get(f"/rest/servers/OSD/server/{server}/patch/{execution_id}", headers=jane)
    assert detail.status_code == 200, detail.text
    [hook] = detail.json()["hooks"]
    assert (hook["name"], hook["point"], hook["status"], hook["output"]) == ("drain", "pre_maintenance", "ok",
                                                                             "drained")
    assert detail.json()["status"] == "completed" and "patches" in detail.json()  # the CLC fields stay
    refused = world.client.post("/v2/operations/OSD/servers/executePackage", headers=jane, json={
        "servers": [server], "package": {"packageId": DEFAULT_PACKAGE_ID, "parameters": {"hooks": "Bad Name"}}})
    assert refused.status_code == 400 and "hooks" in refused.json()["message"]


def test_the_cli_puts_lists_shows_and_deletes(pg: str, world: World, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("PATCHAAS_DATABASE_URL", pg)
    monkeypatch.setenv("PATCHAAS_WEBHOOK_KEY", KEY)
    definition = tmp_path / "notify.json"
    definition.write_text(json.dumps(NOTIFY))
    runner = CliRunner()
    made = runner.invoke(cli, ["hook", "put", "--alias", "OSD", "--name", "notify", "--file", str(definition)])
    assert made.exit_code == 0 and "created hook notify (http) at post_run" in made.output, made.output
    listed = runner.invoke(cli, ["hook", "list", "--alias", "OSD", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["secretHeaderNames"] == ["Authorization"]
    shown = runner.invoke(cli, ["hook", "show", "--alias", "OSD", "--name", "notify"])
    assert shown.exit_code == 0 and "very-secret-token" not in shown.output
    bad = runner.invoke(cli, ["hook", "put", "--alias", "OSD", "--name", "x", "--file", "-"],
                        input='{"kind": "command", "points": ["pre_cycle"]}')
    assert bad.exit_code == 2 and "a command hook needs `command`" in bad.output
    gone = runner.invoke(cli, ["hook", "delete", "--alias", "OSD", "--name", "notify"])
    assert gone.exit_code == 0 and "deleted hook notify" in gone.output
    missing = runner.invoke(cli, ["hook", "delete", "--alias", "OSD", "--name", "notify"])
    assert missing.exit_code == 1 and "hook notify not found" in missing.output


def test_without_a_key_secret_headers_are_refused_and_references_accepted(world: World) -> None:
    service = hook_service.HookService(world.container.sessions, world.clock, None)
    with pytest.raises(ServiceError, match="PATCHAAS_WEBHOOK_KEY"):
        service.put("OSD", "notify", hook_service.parse_spec(NOTIFY), "jane")
    by_ref = {k: v for k, v in NOTIFY.items() if k != "secretHeaders"} | {"headersRef": "file:/run/secrets/hook"}
    info, created = service.put("OSD", "notify", hook_service.parse_spec(by_ref), "jane")
    assert created and info.definition["headersRef"] == "file:/run/secrets/hook"
