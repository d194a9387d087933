"""The console's pages over a real PostgreSQL, in process (TestClient): login into a session cookie, CSRF on
every form, account scoping (another account's pages are 404 pages), the pages against the REST answers, the
action form validated with the REST messages, cancel, window pause/resume, and the CSV downloads (also over
REST with `Accept: text/csv`). The engine is driven synchronously with the fake clock of the `world` fixture."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrator.entrypoints.console import session
from orchestrator.services import auth, rollouts
from tests import support
from tests.integration.entrypoints.test_rest_api import PACKAGE, PASSWORD, World, server, world  # noqa: F401

CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


def console_login(client: TestClient, username: str = "jane", password: str = PASSWORD) -> httpx.Response:
    form = client.get("/console/login")
    assert form.status_code == 200
    return client.post("/console/login", data={"username": username, "password": password,
                                               "csrf_token": csrf_of(form.text), "next": "/console/overview"},
                       follow_redirects=False)


@pytest.fixture
def jane(world: World) -> TestClient:  # noqa: F811
    answer = console_login(world.client)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/overview", answer.text
    return world.client


@pytest.fixture
def xavier(world: World) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(world.client.app) as client:
        assert console_login(client, "xavier").status_code == 303
        yield client


def drive_with_gate(world: World) -> None:  # noqa: F811
    gate = rollouts.RolloutGate.of(world.container.service)
    support.drive(world.container, world.dispatcher, world.clock, on_tick=gate.run)


def form_token(client: TestClient, path: str = "/console/overview") -> str:
    return csrf_of(client.get(path).text)


# --- login, session cookie, CSRF ---------------------------------------------------------------------


def test_login_sets_an_httponly_samesite_strict_session_cookie(world: World) -> None:  # noqa: F811
    answer = console_login(world.client)
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith("patchaas_session"))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http here
    page = world.client.get("/console/overview")
    assert page.status_code == 200 and "Fleet overview" in page.text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["X-Frame-Options"] == "DENY"


def test_the_session_cookie_is_secure_over_https(world: World) -> None:  # noqa: F811
    with TestClient(world.client.app, base_url="https://testserver") as client:
        cookie = next(v for k, v in console_login(client).headers.multi_items()
                      if k == "set-cookie" and v.startswith("patchaas_session"))
        assert "Secure" in cookie


def test_a_wrong_login_says_clcs_message_and_sets_no_session(world: World) -> None:  # noqa: F811
    answer = console_login(world.client, password="not the password")
    assert answer.status_code == 400 and auth.CLC_BAD_LOGIN.replace("'", "&#39;") in answer.text
    assert session.SESSION_COOKIE not in world.client.cookies
    assert world.client.get("/console/overview", follow_redirects=False).status_code == 303


def test_pages_without_a_session_send_the_browser_to_the_login_form(world: World) -> None:  # noqa: F811
    answer = world.client.get(f"/console/servers/{server(1)}?limit=5", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/console/login?next=/console/servers/{server(1)}%3Flimit%3D5"
    live = world.client.get("/console/overview/runs", headers={"X-Requested-With": "fetch"})
    assert live.status_code == 401


def test_a_login_form_without_its_double_submit_token_is_refused(world: World) -> None:  # noqa: F811
    world.client.get("/console/login")
    answer = world.client.post("/console/login", data={"username": "jane", "password": PASSWORD},
                               follow_redirects=False)
    assert answer.status_code == 403 and "CSRF" in answer.text
    assert session.SESSION_COOKIE not in world.client.cookies


def test_every_form_without_its_csrf_token_is_refused(world: World, jane: TestClient) -> None:  # noqa: F811
    execution_id = world.execute([server(2)], world.login())[0]["executionId"]
    for path, data in [("/console/actions", {"target": "groups", "groups": "va1-0001"}),
                       (f"/console/servers/{server(2)}/executions/{execution_id}/cancel", {}),
                       ("/console/logout", {})]:
        for token in (None, "forged", session.csrf_token("another session")):
            body = dict(data, **({"csrf_token": token} if token else {}))
            answer = jane.post(path, data=body, follow_redirects=False)
            assert answer.status_code == 403 and "CSRF" in answer.text, (path, token, answer.text[:500])
    assert len(world.dispatcher.steps) == 1  # only the REST execute above; the forms did nothing
    assert jane.get("/console/overview").status_code == 200  # still logged in


def test_logout_revokes_the_session(world: World, jane: TestClient) -> None:  # noqa: F811
    token = jane.cookies[session.SESSION_COOKIE]
    answer = jane.post("/console/logout", data={"csrf_token": form_token(jane)}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
    with TestClient(world.client.app) as thief:  # the old cookie is worth nothing now
        thief.cookies.set(session.SESSION_COOKIE, token, path="/console")
        assert thief.get("/console/overview", follow_redirects=False).status_code == 303
    rest = world.client.get(f"/v2/servers/osd/{server(1)}", headers={"Authorization": f"Bearer {token}"})
    assert rest.status_code == 401


# --- account scoping ------------------------------------------------------------------------------------


def test_another_accounts_pages_are_404_pages(world: World, xavier: TestClient) -> None:  # noqa: F811
    jane_api = world.login()
    execution_id = world.execute([server(1)], jane_api)[0]["executionId"]
    rollout = world.client.post("/v2/operations/osd/groups/executePackage", headers=jane_api,
                                json={"groups": ["va1-0002"], "package": PACKAGE, "maxConcurrency": 1}).json()
    rollout_id = world.container.service.rollout_of("OSD", rollout[0]["executionId"])
    window = world.client.post("/v2/patchaas/osd/windows", headers=jane_api,
                               json={"name": "nightly", "groups": ["va1-0001"], "cron": "0 2 * * *"}).json()
    drive_with_gate(world)
    for path in [f"/console/servers/{server(1)}", f"/console/servers/{server(1)}/executions/{execution_id}",
                 f"/console/servers/{server(1)}/history.csv",
                 f"/console/servers/{server(1)}/executions/{execution_id}/patches.csv",
                 f"/console/rollouts/{rollout_id}", f"/console/windows/{window['id']}",
                 "/console/compliance?group=va1-0001"]:
        answer = xavier.get(path)
        assert answer.status_code == 404, (path, answer.status_code)
        assert "text/html" in answer.headers["content-type"] and "Traceback" not in answer.text
    token = form_token(xavier)
    for path in [f"/console/servers/{server(1)}/executions/{execution_id}/cancel",
                 f"/console/windows/{window['id']}/pause"]:
        assert xavier.post(path, data={"csrf_token": token}).status_code == 404
    assert server(1) not in xavier.get("/console/overview").text
    assert xavier.get("/console/servers/VA1XYZWEB01").status_code == 200


def test_bad_addresses_are_html_pages_not_traces(jane: TestClient) -> None:
    for path, status in [("/console/servers/nope", 400), ("/console/servers/VA1OSDPATCH01?limit=0", 400),
                         ("/console/servers/VA1OSDPATCH01/executions/VA1-123456", 404),
                         ("/console/servers/VA1OSDPATCH99", 404), ("/console/no/such/page", 404)]:
        answer = jane.get(path)
        assert answer.status_code == status and "text/html" in answer.headers["content-type"], (path, answer.text)
        assert "Traceback" not in answer.text


# --- pages against the REST answers ---------------------------------------------------------------------


def test_history_and_detail_pages_show_what_rest_answers(world: World, jane: TestClient) -> None:  # noqa: F811
    api = world.login()
    ids = []
    for _ in range(3):
        ids.append(world.execute([server(4)], api)[0]["executionId"])
        world.drive()
        world.clock.advance(60)
    summary = world.client.get(f"/rest/servers/osd/server/{server(4)}/patch", params={"limit": 2}, headers=api)
    page = jane.get(f"/console/servers/{server(4)}", params={"limit": 2})
    assert re.findall(r'<tr data-execution="([^"]+)"', page.text) == [e["execution_id"] for e in summary.json()]
    assert f"cursor={summary.headers['X-Next-Cursor']}" in page.text
    older = jane.get(f"/console/servers/{server(4)}", params={"limit": 2, "cursor": summary.headers["X-Next-Cursor"]})
    assert re.findall(r'<tr data-execution="([^"]+)"', older.text) == [ids[0]]
    detail = world.client.get(f"/rest/servers/osd/server/{server(4)}/patch/{ids[0]}", headers=api).json()
    html = jane.get(f"/console/servers/{server(4)}/executions/{ids[0]}").text
    assert detail["begin_message"] in html and detail["duration"] in html
    assert detail["end_message"].replace("'", "&#39;") in html
    assert len(re.findall(r'<tr data-kb="', html)) == len(detail["patches"])
    failed = next(p for p in detail["patches"] if p["status"] == "failed")
    assert f'href="https://support.microsoft.com/help/{failed["kb"][2:]}"' in html
    assert "ERROR_INSTALL_FAILURE: fatal error during installation" in html or failed["hresult"] in html
    assert '<svg id="timeline"' in html and 'data-label="maintenance on"' in html and 'data-label="cycle 1"' in html


def test_the_overview_shows_runs_attention_groups_and_the_donut(world: World, jane: TestClient) -> None:  # noqa: F811
    api = world.login()
    world.execute([server(1), server(4)], api)
    live = jane.get("/console/overview/runs", headers={"X-Requested-With": "fetch"}).text
    assert live.count('data-status="pending"') == 2
    world.drive()
    html = jane.get("/console/overview").text
    assert f'data-server="{server(1)}" data-execution' in html and 'data-status="completed"' in html
    assert re.search(rf'<tr data-kind="failed"><td><a href="/console/servers/{server(4)}"', html)
    assert 'data-kind="quarantined"' in html
    assert '<tr data-group="va1-0001">' in html and '<tr data-group="va1-0003">' in html
    assert html.count('<circle class="arc"') == 3  # compliant, non-compliant, unknown
    assert "data-idle" in jane.get("/console/overview/runs").text  # nothing runs: the page polls slowly


def test_the_action_form_validates_as_rest_and_says_it_beside_the_field(world: World, jane: TestClient) -> None:  # noqa: F811
    api = world.login()
    token = form_token(jane, "/console/actions")
    cases = [
        ({"target": "groups", "groups": "va1-0001", "includeKbs": "KB12"}, "includeKbs",
         {"groups": ["va1-0001"], "package": {**PACKAGE, "parameters": {"includeKbs": "KB12"}}}),
        ({"target": "groups", "groups": "va1-0001", "approveAfterDays": "400"}, "approveAfterDays",
         {"groups": ["va1-0001"], "package": {**PACKAGE, "parameters": {"approveAfterDays": "400"}}}),
        ({"target": "groups", "groups": "va1-0001", "maxConcurrency": "0"}, "maxConcurrency",
         {"groups": ["va1-0001"], "package": PACKAGE, "maxConcurrency": "0"}),
        ({"target": "groups", "groups": "group-one"}, "groups", {"groups": ["group-one"], "package": PACKAGE}),
        ({"target": "groups", "groups": "va1-0999"}, "groups", {"groups": ["va1-0999"], "package": PACKAGE}),
        ({"target": "servers", "servers": ""}, "servers", None),
    ]
    for data, field, rest_body in cases:
        answer = jane.post("/console/actions", data={"csrf_token": token, "packageId": PACKAGE["packageId"], **data})
        assert answer.status_code in (400, 404), (data, answer.status_code)
        shown = re.search(rf'id="error-{field}" role="alert">([^<]*)<', answer.text)
        assert shown, (field, answer.text[:3000])
        if rest_body is not None:
            rest = world.client.post("/v2/operations/osd/groups/executePackage", json=rest_body, headers=api)
            assert rest.status_code in (400, 404)
            assert shown.group(1) == rest.json()["message"].replace("'", "&#39;"), (shown.group(1), rest.json())
        assert f'value="{data.get(field, "")}"' in answer.text or field == "servers"  # the typed value is kept
    assert not world.dispatcher.steps


def test_a_scan_only_group_action_with_rate_control_from_the_form(world: World, jane: TestClient) -> None:  # noqa: F811
    token = form_token(jane, "/console/actions")
    answer = jane.post("/console/actions", data={
        "csrf_token": token, "target": "groups", "groups": "va1-0002", "packageId": PACKAGE["packageId"],
        "excludeKbs": "KB3102467", "scanOnly": "on", "classifications": ["Security Updates", "Critical Updates"],
        "maxConcurrency": "1", "maxErrors": "0"})
    assert answer.status_code == 200, answer.text[:2000]
    assert 'id="rollout-link"' in answer.text
    queued = re.findall(r'/executions/([A-Z]{2}\d-\d{6})"', answer.text)
    assert len(queued) == 3  # 03 04 in va1-0002, 05 06 in va1-0003; 05 is refused (its OS)
    drive_with_gate(world)
    detail = world.container.service.detail("OSD", server(3), queued[0])
    assert detail.status == "completed" and all(p.status == "pending" for p in detail.patches)
    assert "KB3102467" not in {p.kb for p in detail.patches}


def test_cancel_from_the_detail_page(world: World, jane: TestClient) -> None:  # noqa: F811
    execution_id = world.execute([server(2)], world.login())[0]["executionId"]
    world.container.engine.advance(str(execution_id))
    path = f"/console/servers/{server(2)}/executions/{execution_id}"
    page = jane.get(path).text
    assert 'id="cancel-form"' in page
    answer = jane.post(path + "/cancel", data={"csrf_token": csrf_of(page), "reason": "change freeze"},
                       follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == path
    assert "cancel requested by jane: change freeze" in jane.get(path).text
    world.drive()
    assert world.container.service.detail("OSD", server(2), execution_id).status == "cancelled"
    again = jane.post(path + "/cancel", data={"csrf_token": csrf_of(page)})
    assert again.status_code == 409 and "already ended" in again.text


def test_a_viewer_sees_the_pages_but_may_not_act(world: World) -> None:  # noqa: F811
    assert console_login(world.client, "viewer").status_code == 303
    page = world.client.get("/console/actions").text
    assert 'id="execute" disabled' in page
    answer = world.client.post("/console/actions", data={"csrf_token": csrf_of(page), "target": "groups",
                                                         "groups": "va1-0001"})
    assert answer.status_code == 403 and "ServerAdmin" in answer.text


def test_windows_on_the_calendar_paused_and_resumed(world: World, jane: TestClient) -> None:  # noqa: F811
    api = world.login()
    window = world.client.post("/v2/patchaas/osd/windows", headers=api, json={
        "name": "patch-friday", "groups": ["va1-0001"], "monthly": "second Tuesday + 3 days at 22:00",
        "timezone": "UTC"}).json()
    html = jane.get("/console/windows", params={"month": "2026-12"}).text
    day = r'data-day="2026-12-11"><span class="day">11</span>\s*<a class="occ"[^>]*>22:00 patch-friday'
    assert re.search(day, html)
    answer = jane.post(f"/console/windows/{window['id']}/pause", data={"csrf_token": csrf_of(html)},
                       follow_redirects=False)
    assert answer.status_code == 303
    assert world.client.get(f"/v2/patchaas/osd/windows/{window['id']}", headers=api).json()["enabled"] is False
    assert "patch-friday" not in jane.get("/console/windows", params={"month": "2026-12"}).text.split("calendar")[1]
    jane.post(f"/console/windows/{window['id']}/resume", data={"csrf_token": csrf_of(html)})
    assert world.client.get(f"/v2/patchaas/osd/windows/{window['id']}", headers=api).json()["enabled"] is True


# --- CSV, in the console and over REST -------------------------------------------------------------------


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_downloads_and_rest_accept_text_csv(world: World, jane: TestClient) -> None:  # noqa: F811
    api = world.login()
    ids = []
    for _ in range(2):
        ids.append(world.execute([server(4)], api)[0]["executionId"])
        world.drive()
        world.clock.advance(60)
    history = jane.get(f"/console/servers/{server(4)}/history.csv")
    assert history.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in history.headers["content-disposition"]
    assert [r["execution_id"] for r in rows(history.text)] == ids[::-1]
    rest = world.client.get(f"/rest/servers/osd/server/{server(4)}/patch", params={"limit": 1},
                            headers={**api, "Accept": "text/csv"})
    assert rest.headers["content-type"] == "text/csv; charset=utf-8" and rest.headers["X-Next-Cursor"] == ids[1]
    assert [r["execution_id"] for r in rows(rest.text)] == [ids[1]]
    detail = world.client.get(f"/rest/servers/osd/server/{server(4)}/patch/{ids[0]}", headers=api).json()
    patches = rows(jane.get(f"/console/servers/{server(4)}/executions/{ids[0]}/patches.csv").text)
    assert [(r["kb"], r["status"], r["hresult"]) for r in patches] == [
        (p["kb"], p["status"], p["hresult"]) for p in detail["patches"]]
    over_rest = world.client.get(f"/rest/servers/osd/server/{server(4)}/patch/{ids[0]}",
                                 headers={**api, "Accept": "text/csv, application/json;q=0.5"})
    assert rows(over_rest.text) == patches
    compliance = world.client.get("/v2/patchaas/osd/compliance", headers={**api, "Accept": "text/csv"})
    by_server = {r["server"]: r for r in rows(compliance.text)}
    assert by_server[server(4)]["status"] == "non_compliant" and by_server[server(1)]["status"] == "unknown"
    assert rows(jane.get("/console/compliance.csv").text) == rows(compliance.text)
    assert world.client.get("/v2/patchaas/osd/compliance", headers=api).headers["content-type"].startswith(
        "application/json")


def test_a_console_session_lasts_twelve_hours(world: World, jane: TestClient) -> None:  # noqa: F811
    world.clock.advance(session.SESSION_TTL.total_seconds() - 10)
    assert jane.get("/console/overview", follow_redirects=False).status_code == 200
    world.clock.advance(timedelta(seconds=20).total_seconds())
    assert jane.get("/console/overview", follow_redirects=False).status_code == 303


def test_the_detail_page_shows_the_runs_health_checks_and_hooks(world: World, jane: TestClient) -> None:  # noqa: F811
    api = world.login()
    hook = {"kind": "command", "points": ["pre_maintenance"], "command": "echo drained", "timeoutSeconds": 30}
    assert world.client.put("/v2/patchaas/OSD/hooks/drain", json=hook, headers=api).status_code in (200, 201)
    checks = [{"name": "iis", "kind": "service", "service": "W3SVC", "retries": 0}]
    answer = world.client.post("/v2/operations/osd/servers/executePackage", headers=api, json={
        "servers": [server(1)], "package": {**PACKAGE, "parameters": {"healthChecks": checks}}})
    assert answer.status_code == 200, answer.text
    execution_id = answer.json()[0]["executionId"]
    world.drive()
    detail = world.client.get(f"/rest/servers/osd/server/{server(1)}/patch/{execution_id}", headers=api).json()
    assert detail["health_checks"] and detail["hooks"], detail
    html = jane.get(f"/console/servers/{server(1)}/executions/{execution_id}").text
    shown = re.findall(r'<tr data-check="([^"]+)" data-phase="([^"]+)" data-status="([^"]+)"', html)
    assert shown == [(c["name"], c["phase"], c["status"]) for c in detail["health_checks"]]
    assert ("iis", "baseline", "ok") in shown and ("iis", "final", "ok") in shown
    hooks = re.findall(r'<tr data-hook="([^"]+)" data-point="([^"]+)" data-status="([^"]+)"', html)
    expected = [(h["name"], h["point"], h["status"]) for h in detail["hooks"]]
    assert hooks == expected == [("drain", "pre_maintenance", "ok")]
    assert "drained" in html  # the hook's output
