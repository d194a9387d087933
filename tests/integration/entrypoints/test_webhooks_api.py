"""The webhooks and events REST API on real PostgreSQL, and `patchaas webhook …`: an operator subscribes
(the generated secret is answered once, never again; a Slack URL is not echoed), a viewer only reads,
another account gets 404, bad input gets a 400 message; a disabled subscription shows why; the account's
event history pages with `after` and holds the audit trail (who requested, cancelled, changed a window)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from orchestrator.bootstrap import Container
from orchestrator.entrypoints.cli.main import app as cli
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import event_models
from orchestrator.services import auth
from orchestrator.settings import DEFAULT_PACKAGE_ID
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

PASSWORD = "correct horse battery"
KEY = Fernet.generate_key().decode()
HOOK = {"name": "ops", "url": "https://hooks.example.com/patchaas", "kinds": ["run.*", "window.*"]}


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


def _world(pg: str, key: str | None) -> Iterator[World]:
    clock = support.FakeClock()
    specs = build_fleet_specs(21, 2, scenarios={Scenario.NORMAL: 2})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=21,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    settings = support.test_settings(pg, webhook_key=key)
    container = support.make_container(settings, fleet, clock, dispatcher, mail.MemoryMailer())
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


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    yield from _world(pg, KEY)


def test_an_operator_subscribes_and_the_secret_is_answered_once(world: World) -> None:
    jane = world.login()
    created = world.client.post("/v2/patchaas/osd/webhooks", json=HOOK, headers=jane)
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and body["enabled"] is True and body["kinds"] == ["run.*", "window.*"]
    assert body["url"] == HOOK["url"] and body["createdBy"] == "jane" and body["format"] == "json"
    listed = world.client.get("/v2/patchaas/OSD/webhooks", headers=jane)
    one = world.client.get(f"/v2/patchaas/OSD/webhooks/{body['id']}", headers=jane)
    assert listed.status_code == one.status_code == 200
    assert secret not in listed.text and secret not in one.text and one.json()["secret"] is None
    with world.container.sessions() as session:
        row = session.get(event_models.WebhookSubscription, body["id"])
        assert row is not None and row.secret_sealed and secret not in row.secret_sealed  # sealed at rest
    assert one.json()["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0}
    given = world.client.post("/v2/patchaas/OSD/webhooks", headers=jane, json={
        **HOOK, "name": "given", "secret": "a-secret-of-my-own-choosing"})
    assert given.status_code == 201 and given.json()["secret"] is None  # not echoed
    slack = world.client.post("/v2/patchaas/OSD/webhooks", headers=jane, json={
        "name": "chat", "format": "slack", "url": "https://hooks.slack.com/services/T000/B000/XXXXSECRET"})
    assert slack.status_code == 201 and slack.json()["url"] == "https://hooks.slack.com/…"
    assert "XXXXSECRET" not in world.client.get("/v2/patchaas/OSD/webhooks", headers=jane).text
    again = world.client.post("/v2/patchaas/OSD/webhooks", json=HOOK, headers=jane)
    assert again.status_code == 409 and "already has a webhook named 'ops'" in again.json()["message"]
    gone = world.client.delete(f"/v2/patchaas/OSD/webhooks/{body['id']}", headers=jane)
    assert gone.status_code == 200 and gone.json()["name"] == "ops"
    assert world.client.get(f"/v2/patchaas/OSD/webhooks/{body['id']}", headers=jane).status_code == 404


def test_viewers_read_other_accounts_get_404_and_bad_input_a_message(world: World) -> None:
    jane, viewer, xavier = world.login(), world.login("viewer"), world.login("xavier")
    denied = world.client.post("/v2/patchaas/OSD/webhooks", json=HOOK, headers=viewer)
    assert denied.status_code == 403 and "may not run operations" in denied.json()["message"]
    hook = world.client.post("/v2/patchaas/OSD/webhooks", json=HOOK, headers=jane).json()
    assert world.client.get("/v2/patchaas/OSD/webhooks", headers=viewer).status_code == 200
    for call in (world.client.get(f"/v2/patchaas/OSD/webhooks/{hook['id']}", headers=xavier),
                 world.client.get(f"/v2/patchaas/XYZ/webhooks/{hook['id']}", headers=xavier),
                 world.client.delete(f"/v2/patchaas/OSD/webhooks/{hook['id']}", headers=xavier),
                 world.client.get("/v2/patchaas/OSD/events", headers=xavier)):
        assert call.status_code == 404 and "message" in call.json()
    for bad, words in (({"kinds": ["run.exploded"]}, "unknown event kind"), ({"format": "xml"}, "unknown format"),
                       ({"url": "ftp://example.com/x"}, "http(s) URL"), ({"secretRef": "HOOK"}, "env:NAME"),
                       ({"secret": "short"}, "secret"), ({"name": "-bad"}, "webhook name")):
        answer = world.client.post("/v2/patchaas/OSD/webhooks", json={**HOOK, "name": "other", **bad}, headers=jane)
        assert answer.status_code == 400 and words in answer.json()["message"], (bad, answer.text)


def test_a_disabled_subscription_shows_why_and_can_be_enabled_again(world: World) -> None:
    jane = world.login()
    hook = world.client.post("/v2/patchaas/OSD/webhooks", json=HOOK, headers=jane).json()
    with world.container.sessions.begin() as session:  # what the outbox writes (tests/integration/engine)
        session.execute(sa.update(event_models.WebhookSubscription).values(
            enabled=False, disabled_reason="disabled after 9 failed attempts in a row over 24 h",
            disabled_at=world.clock(), consecutive_failures=9, last_error="HTTP 502"))
    shown = world.client.get(f"/v2/patchaas/OSD/webhooks/{hook['id']}", headers=jane).json()
    assert shown["enabled"] is False and shown["disabledReason"].startswith("disabled after 9 failed attempts")
    assert shown["lastError"] == "HTTP 502" and shown["consecutiveFailures"] == 9
    enabled = world.client.post(f"/v2/patchaas/OSD/webhooks/{hook['id']}/enable", headers=jane).json()
    assert enabled["enabled"] is True and enabled["disabledReason"] is None and enabled["consecutiveFailures"] == 0


def test_the_event_history_pages_with_after_and_holds_the_audit_trail(world: World) -> None:
    jane = world.login()
    queued = world.client.post("/v2/operations/OSD/servers/executePackage", headers=jane, json={
        "servers": world.servers, "package": {"packageId": DEFAULT_PACKAGE_ID, "parameters": {}}}).json()
    ids = {a["server"]: a["executionId"] for a in queued}
    stopped, patched = world.servers
    cancelled = world.client.post(f"/rest/servers/OSD/server/{stopped}/patch/{ids[stopped]}/cancel", headers=jane,
                                  json={"reason": "change freeze"})
    assert cancelled.status_code == 202, cancelled.text
    window = world.client.post("/v2/patchaas/OSD/windows", headers=jane, json={
        "name": "nightly", "servers": [world.servers[1]], "cron": "0 22 * * *", "duration": "2h", "cutoff": "30m"})
    assert window.status_code == 201, window.text
    paused = world.client.patch(f"/v2/patchaas/OSD/windows/{window.json()['id']}", headers=jane,
                                json={"enabled": False})
    assert paused.status_code == 200
    support.drive(world.container, world.dispatcher, world.clock)
    page = world.client.get("/v2/patchaas/OSD/events?limit=3", headers=jane)
    assert page.status_code == 200 and len(page.json()) == 3
    everything, after = list(page.json()), page.headers["X-Next-After"]
    while True:
        more = world.client.get(f"/v2/patchaas/OSD/events?limit=3&after={after}", headers=jane)
        if not more.json():
            assert "X-Next-After" not in more.headers
            break
        everything += more.json()
        after = more.headers["X-Next-After"]
    sequences = [e["sequence"] for e in everything]
    assert sequences == sorted(sequences) and len({e["id"] for e in everything}) == len(everything)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for event in everything:
        by_kind.setdefault(event["kind"], []).append(event)
    assert {e["actor"] for e in by_kind["run.requested"]} == {"jane"} and len(by_kind["run.requested"]) == 2
    [cancel] = by_kind["run.cancel_requested"]
    assert cancel["actor"] == "jane" and cancel["data"]["reason"] == "change freeze"
    assert by_kind["window.created"][0]["actor"] == "jane" and by_kind["window.paused"][0]["actor"] == "jane"
    assert {e["data"]["username"] for e in by_kind["user.created"]} == {"jane", "viewer"}  # OSD's users only
    ended = {e["executionId"]: e["data"]["status"] for e in by_kind["run.ended"]}
    assert ended == {ids[stopped]: "cancelled", ids[patched]: "completed"}
    assert [e["executionId"] for e in by_kind["run.started"]] == [ids[patched]]  # cancelled before it started
    runs = world.client.get("/v2/patchaas/OSD/events?kind=run.ended&kind=run.requested", headers=jane).json()
    assert {e["kind"] for e in runs} == {"run.ended", "run.requested"}
    one = world.client.get(f"/v2/patchaas/OSD/events?executionId={cancel['executionId']}", headers=jane).json()
    assert {e["executionId"] for e in one} == {cancel["executionId"]}
    assert world.client.get("/v2/patchaas/OSD/events?kind=bogus", headers=jane).status_code == 400


def test_without_a_key_only_secret_references_are_accepted(pg: str) -> None:
    for world in _world(pg, None):
        jane = world.login()
        refused = world.client.post("/v2/patchaas/OSD/webhooks", json=HOOK, headers=jane)
        assert refused.status_code == 400 and "PATCHAAS_WEBHOOK_KEY" in refused.json()["message"]
        ok = world.client.post("/v2/patchaas/OSD/webhooks", json={**HOOK, "secretRef": "env:OPS_HOOK_SECRET"},
                               headers=jane)
        assert ok.status_code == 201 and ok.json()["secretRef"] == "env:OPS_HOOK_SECRET" and ok.json()["secret"] is None


def test_the_cli_creates_lists_and_deletes(pg: str, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHAAS_DATABASE_URL", pg)
    monkeypatch.setenv("PATCHAAS_WEBHOOK_KEY", KEY)
    runner = CliRunner()
    made = runner.invoke(cli, ["webhook", "create", "--alias", "OSD", "--name", "cli-hook", "--url",
                               "https://hooks.example.com/x", "--kind", "run.ended", "--by", "ops"])
    assert made.exit_code == 0, made.output
    assert "signing secret (shown once): whsec_" in made.output
    listed = runner.invoke(cli, ["webhook", "list", "--alias", "OSD"])
    assert listed.exit_code == 0 and "cli-hook" in listed.output and "whsec_" not in listed.output
    bad = runner.invoke(cli, ["webhook", "create", "--alias", "OSD", "--name", "x", "--url", "gopher://x"])
    assert bad.exit_code == 2 and "http(s) URL" in bad.output
    history = runner.invoke(cli, ["webhook", "events", "--alias", "OSD", "--kind", "webhook.*", "--json"])
    assert history.exit_code == 0 and '"actor": "ops"' in history.output and '"webhook.created"' in history.output
    gone = runner.invoke(cli, ["webhook", "delete", "--alias", "OSD", "cli-hook"])
    assert gone.exit_code == 0 and "deleted" in gone.output
    missing = runner.invoke(cli, ["webhook", "delete", "--alias", "OSD", "cli-hook"])
    assert missing.exit_code == 1 and "not found" in missing.output
