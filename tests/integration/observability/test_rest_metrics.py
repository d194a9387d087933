"""The REST API's `/metrics`, in process: requests by route template (a server name or an execution id in
the path never becomes a label), latency histograms, logins by outcome (a throttled user's 429 included),
report-channel posts by outcome; `/metrics` itself is not in the OpenAPI document."""

from __future__ import annotations

from datetime import timedelta

from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from orchestrator.entrypoints.rest import create_app
from orchestrator.services import auth
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from tests import scrape
from tests.integration.services.test_windows import make_world


def test_requests_logins_and_report_posts_are_counted_by_template_and_outcome(pg: str) -> None:
    specs = build_fleet_specs(4, 1, scenarios={Scenario.NORMAL: 1})
    world = make_world(pg, specs, simulated.SimTimings.instant())
    accounts = auth.AuthService(world.container.sessions, world.clock, timedelta(days=1),
                                hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    accounts.create_user("jane", "OSD", ["ServerAdmin"], "a long enough password")
    with TestClient(create_app(world.container, auth_service=accounts)) as client:
        before = scrape.parse(client.get("/metrics").text)
        for _ in range(7):
            client.post("/v2/authentication/login", json={"username": "jane", "password": "wrong password!"})
        world.clock.advance(3600)  # the lock has passed
        token = client.post("/v2/authentication/login",
                            json={"username": "jane", "password": "a long enough password"}).json()["bearerToken"]
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get(f"/v2/servers/osd/{specs[0].name}", headers=headers).status_code == 200
        assert client.get("/v2/servers/osd/VA1OSDNOPE99", headers=headers).status_code == 404
        assert client.post("/v2/patchaas/executions/VA1-123456/reports", content=b"{}",
                           headers={"Authorization": "Bearer not-a-report-token"}).status_code == 404  # no such run
        assert client.get("/no/such/path").status_code == 404
        answer = client.get("/metrics")
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    assert answer.headers["content-type"].startswith("text/plain")
    after = scrape.parse(answer.text)

    def grew(name: str, **labels: str) -> float:
        return scrape.value(after, name, **labels) - scrape.value(before, name, **labels)

    assert grew("patchaas_logins_total", outcome="bad_credentials") >= 5
    assert grew("patchaas_logins_total", outcome="throttled") >= 1
    assert grew("patchaas_logins_total", outcome="ok") == 1
    assert grew("patchaas_http_requests_total", route="/v2/servers/{alias}/{serverId}", status="200") == 1
    assert grew("patchaas_http_requests_total", route="/v2/servers/{alias}/{serverId}", status="404") == 1
    assert grew("patchaas_http_request_duration_seconds_count", route="/v2/servers/{alias}/{serverId}",
                method="GET") == 2
    assert grew("patchaas_http_requests_total", route="unmatched", status="404") == 1
    assert grew("patchaas_report_posts_total", outcome="not_found") == 1
    for series in scrape.series(after, "patchaas_http_requests_total"):
        assert "VA1" not in series["route"] and "nope" not in series["route"].lower()
    world.container.close()
