"""The REST API over a real PostgreSQL container: the engine's steps are recorded by a ListDispatcher and
driven synchronously with a fake clock, so every answer can be checked against what really happened."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from orchestrator.bootstrap import Container
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import db
from orchestrator.services import auth, inventory
from orchestrator.services.errors import CLC_NOT_QUEUED
from orchestrator.settings import DEFAULT_PACKAGE_ID
from simulation import fleet as simulated
from simulation.catalog import WINDOWS_2012R2
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

PACKAGE = {"packageId": DEFAULT_PACKAGE_ID, "parameters": {}}
PASSWORD = "correct horse battery"
# 01-03 normal, 04 a KB that always fails, 05 an OS the package does not support, 06 normal
SCENARIOS = {Scenario.NORMAL: 3, Scenario.BROKEN_KB: 1, Scenario.UNSUPPORTED_OS: 1}
GROUPS = {"va1-0001": None, "va1-0002": "va1-0001", "va1-0003": "va1-0002"}
PLACEMENT = ["va1-0001", "va1-0001", "va1-0002", "va1-0002", "va1-0003", "va1-0003"]
OTHER_SERVER = "VA1XYZWEB01"


@dataclass
class World:
    container: Container
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    fleet: simulated.SimulatedFleet
    client: TestClient

    def drive(self) -> None:
        support.drive(self.container, self.dispatcher, self.clock)

    def login(self, username: str = "jane") -> dict[str, str]:
        answer = self.client.post("/v2/authentication/login", json={"username": username, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['bearerToken']}"}

    def execute(self, servers: list[str], headers: dict[str, str]) -> list[dict[str, Any]]:
        answer = self.client.post("/v2/operations/osd/servers/executePackage",
                                  json={"servers": servers, "package": PACKAGE}, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 6, scenarios=SCENARIOS)
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=3,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher,
                                       mail.MemoryMailer())
    with container.sessions.begin() as session:
        now = db.utcnow()
        inventory.ensure_account(session, "OSD", "OSD", "VA1", "ops@osd.example", now)
        inventory.ensure_account(session, "XYZ", "XYZ", "VA1", "ops@xyz.example", now)
        for gid, parent in GROUPS.items():
            inventory.ensure_group(session, "OSD", gid, f"group {gid}", parent)
        inventory.ensure_group(session, "XYZ", "va1-0100", "xyz servers")
        inventory.register_servers(session, "OSD", (
            inventory.ServerSpec(s.name, s.os_type, s.power_state.value, PLACEMENT[i]) for i, s in enumerate(specs)
        ))
        inventory.register_servers(session, "XYZ", [
            inventory.ServerSpec(OTHER_SERVER, WINDOWS_2012R2, "started", "va1-0100")
        ])
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = auth.AuthService(container.sessions, clock, timedelta(days=14), hasher=cheap)
    accounts.create_user("jane", "OSD", ["ServerAdmin"], PASSWORD)
    accounts.create_user("viewer", "OSD", ["AccountViewer"], PASSWORD)
    accounts.create_user("xavier", "XYZ", ["AccountAdmin"], PASSWORD)
    with TestClient(create_app(container, auth_service=accounts)) as client:
        yield World(container, dispatcher, clock, fleet, client)
    container.close()


def server(n: int) -> str:
    return f"VA1OSDPATCH{n:02d}"


# --- authentication ---------------------------------------------------------------------------


def test_login_answers_the_clc_shape_with_a_bearer_token(world: World) -> None:
    answer = world.client.post("/v2/authentication/login", json={"username": "JANE", "password": PASSWORD})
    assert answer.status_code == 200
    body = answer.json()
    assert body["userName"] == "jane" and body["accountAlias"] == "OSD" and body["locationAlias"] == "VA1"
    assert body["roles"] == ["ServerAdmin"] and len(body["bearerToken"]) >= 40


@pytest.mark.parametrize("username,password", [("jane", "wrong password"), ("nobody", PASSWORD),
                                               ("bad\x00name", PASSWORD), ("bad name", PASSWORD)])
def test_bad_credentials_get_the_clc_400_whatever_was_wrong(world: World, username: str, password: str) -> None:
    answer = world.client.post("/v2/authentication/login", json={"username": username, "password": password})
    assert answer.status_code == 400
    assert answer.json() == {"message": auth.CLC_BAD_LOGIN}


def test_a_login_body_that_is_not_json_is_a_400_with_a_message(world: World) -> None:
    answer = world.client.post("/v2/authentication/login", content=b"{nope",
                               headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json() == {"message": "the body is not valid JSON"}
    answer = world.client.post("/v2/authentication/login", json={"username": "jane"})
    assert answer.status_code == 400 and "password" in answer.json()["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic amFuZQ=="}])
def test_calls_without_a_valid_token_are_401(world: World, headers: dict[str, str]) -> None:
    answer = world.client.get(f"/v2/servers/osd/{server(1)}", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer" and "token" in answer.json()["message"]


def test_an_expired_token_is_401(world: World) -> None:
    headers = world.login()
    world.clock.advance(timedelta(days=14).total_seconds() - 1)
    assert world.client.get(f"/v2/servers/osd/{server(1)}", headers=headers).status_code == 200
    world.clock.advance(2)
    answer = world.client.get(f"/v2/servers/osd/{server(1)}", headers=headers)
    assert answer.status_code == 401 and "expired" in answer.json()["message"]


def test_a_viewer_may_read_but_not_execute_or_cancel(world: World) -> None:
    viewer = world.login("viewer")
    assert world.client.get(f"/rest/servers/osd/server/{server(1)}/patch", headers=viewer).status_code == 200
    answer = world.client.post("/v2/operations/osd/servers/executePackage",
                               json={"servers": [server(1)], "package": PACKAGE}, headers=viewer)
    assert answer.status_code == 403 and "ServerAdmin" in answer.json()["message"]
    queued = world.execute([server(1)], world.login())
    answer = world.client.post(f"/rest/servers/osd/server/{server(1)}/patch/{queued[0]['executionId']}/cancel",
                               headers=viewer)
    assert answer.status_code == 403


# --- account isolation and bad input ----------------------------------------------------------


def test_another_accounts_resources_answer_exactly_like_missing_ones(world: World) -> None:
    jane = world.login()
    queued = world.execute([server(1)], jane)
    execution_id = queued[0]["executionId"]
    status_id = str(execution_id).lower()
    xavier = world.login("xavier")
    pairs = [  # (another account's resource, a resource that does not exist) as seen by xavier
        (f"/v2/servers/osd/{server(1)}", f"/v2/servers/xyz/{server(1)}"),
        ("/v2/groups/osd/va1-0001", "/v2/groups/xyz/va1-0001"),
        (f"/v2/operations/osd/status/{status_id}", "/v2/operations/xyz/status/va1-999999"),
        (f"/rest/servers/osd/server/{server(1)}/patch", f"/rest/servers/xyz/server/{server(1)}/patch"),
        (f"/rest/servers/osd/server/{server(1)}/patch/{execution_id}",
         f"/rest/servers/xyz/server/{server(1)}/patch/{execution_id}"),
    ]
    for theirs, missing in pairs:
        a, b = world.client.get(theirs, headers=xavier), world.client.get(missing, headers=xavier)
        assert a.status_code == b.status_code == 404, (theirs, a.text, b.text)
        assert set(a.json()) == {"message"}
    assert world.client.get(f"/v2/operations/xyz/status/{status_id}", headers=xavier).status_code == 404
    cancel = world.client.post(f"/rest/servers/osd/server/{server(1)}/patch/{execution_id}/cancel", headers=xavier)
    assert cancel.status_code == 404
    execute = world.client.post("/v2/operations/osd/servers/executePackage",
                                json={"servers": [server(2)], "package": PACKAGE}, headers=xavier)
    assert execute.status_code == 404
    group = world.client.post("/v2/operations/xyz/groups/executePackage",
                              json={"groups": ["va1-0001"], "package": PACKAGE}, headers=xavier)
    assert group.status_code == 404 and group.json() == {"message": "group va1-0001 not found"}
    assert world.client.get(f"/v2/servers/xyz/{OTHER_SERVER}", headers=xavier).status_code == 200


@pytest.mark.parametrize("path,word", [
    ("/v2/servers/O_D!/VA1OSDPATCH01", "alias"),
    ("/v2/servers/osd/nope", "server"),
    ("/v2/groups/osd/group-one", "group id"),
    ("/v2/operations/osd/status/12345", "status id"),
    ("/rest/servers/osd/server/VA1OSDPATCH01/patch/123", "execution id"),
    ("/rest/servers/osd/server/VA1OSDPATCH01/patch?limit=0", "limit"),
    ("/rest/servers/osd/server/VA1OSDPATCH01/patch?limit=many", "limit"),
    ("/rest/servers/osd/server/VA1OSDPATCH01/patch?cursor=yesterday", "cursor"),
])
def test_bad_path_and_query_values_are_400_with_the_rule(world: World, path: str, word: str) -> None:
    answer = world.client.get(path, headers=world.login())
    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"message"} and word in answer.json()["message"]


def test_well_formed_ids_that_do_not_exist_are_404(world: World) -> None:
    jane = world.login()
    for path in ["/v2/servers/osd/XX1OSDPATCH01", "/v2/servers/osd/VA1OSDPATCH99", "/v2/groups/osd/va1-0999",
                 "/v2/operations/osd/status/va1-12345", "/v2/operations/osd/status/va1-123456",
                 f"/rest/servers/osd/server/{server(1)}/patch/VA1-123456"]:
        answer = world.client.get(path, headers=jane)
        assert answer.status_code == 404 and set(answer.json()) == {"message"}, (path, answer.text)


def test_unknown_paths_and_methods_answer_json(world: World) -> None:
    answer = world.client.get("/v2/nothing-here")
    assert answer.status_code == 404 and answer.json() == {"message": "Not Found"}
    answer = world.client.get("/v2/authentication/login")
    assert answer.status_code == 405 and "message" in answer.json()


def test_a_body_over_a_mebibyte_is_refused_with_413_declared_or_streamed(world: World) -> None:
    headers = {**world.login(), "Content-Type": "application/json"}
    url = "/v2/operations/osd/servers/executePackage"
    big = b'{"servers": ["' + b"x" * 1024 * 1024 + b'"]}'
    answer = world.client.post(url, content=big, headers=headers)
    assert answer.status_code == 413 and "over 1048576 bytes" in answer.json()["message"]
    streamed = world.client.post(url, content=(b"x" * 65536 for _ in range(20)), headers=headers)
    assert streamed.status_code == 413 and "message" in streamed.json()


def test_internal_errors_are_a_json_500_without_a_trace(world: World) -> None:
    app = create_app(world.container)

    def boom() -> None:
        raise RuntimeError("secret detail")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom")
    assert answer.status_code == 500 and answer.json() == {"message": "internal error"}


def test_a_database_that_is_down_answers_503(world: World) -> None:
    down = support.make_container(support.test_settings("postgresql+psycopg2://postgres@127.0.0.1:1/none"),
                                  world.fleet, world.clock, support.ListDispatcher())
    with TestClient(create_app(down)) as client:
        answer = client.post("/v2/authentication/login", json={"username": "jane", "password": PASSWORD})
    down.close()
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5" and "database" in answer.json()["message"]


# --- executing the package --------------------------------------------------------------------


def test_execute_package_answers_each_server_on_its_own(world: World) -> None:
    jane = world.login()
    first = world.execute([server(1)], jane)
    answers = world.execute([server(2), "va1osdpatch01", "VA1OSDPATCH77", OTHER_SERVER, server(5), "not a name"], jane)
    by_server = {a["server"]: a for a in answers}
    queued = by_server[server(2)]
    status_id = str(queued["executionId"]).lower()
    assert queued["isQueued"] is True and "errorMessage" not in queued
    assert queued["links"] == [{"rel": "status", "href": f"/v2/operations/osd/status/{status_id}", "id": status_id}]
    busy = by_server[server(1)]
    assert busy["isQueued"] is False and first[0]["executionId"] in busy["errorMessage"]
    assert "already being patched" in busy["errorMessage"] and "links" not in busy
    assert by_server["VA1OSDPATCH77"]["errorMessage"] == CLC_NOT_QUEUED
    assert by_server[OTHER_SERVER]["errorMessage"] == CLC_NOT_QUEUED  # no hint that it exists elsewhere
    assert by_server["not a name"]["errorMessage"] == CLC_NOT_QUEUED
    assert "does not support" in by_server[server(5)]["errorMessage"]


@pytest.mark.parametrize("body,word", [
    ({"servers": [server(1)], "package": {"packageId": "00000000-0000-0000-0000-000000000000"}}, "unknown package"),
    ({"servers": [], "package": PACKAGE}, "servers"),
    ({"servers": [server(1)]}, "package"),
    ({"servers": ["VA1OSD\x00PATCH01"], "package": PACKAGE}, "NUL"),
    ({"servers": server(1), "package": PACKAGE}, "servers"),
    ({"servers": [server(1)], "package": {**PACKAGE, "parameters": {"approveAfterDays": 400}}},
     "approveAfterDays: Value error, must be a whole number of days from 0 to 365"),
    ({"servers": [server(1)], "package": {**PACKAGE, "parameters": {"severities": "Critical,Urgent"}}},
     "not MSRC severities"),
    ({"servers": [server(1)],
      "package": {**PACKAGE, "parameters": {"healthChecks": [{"name": "web", "kind": "http"}]}}},
     "healthChecks.0: Value error, http checks need `url`"),
    ({"servers": [server(1)], "package": {**PACKAGE, "parameters": {"onHealthFailure": "shrug"}}},
     "onHealthFailure: Input should be 'fail' or 'continue'"),
])
def test_a_request_that_cannot_be_understood_is_refused_whole_with_400(world: World, body: object, word: str) -> None:
    answer = world.client.post("/v2/operations/osd/servers/executePackage", json=body, headers=world.login())
    assert answer.status_code == 400 and word in answer.json()["message"], answer.text
    assert support.executions(world.container) == []


def test_group_action_walks_nested_groups(world: World) -> None:
    jane = world.login()
    answer = world.client.post("/v2/operations/osd/groups/executePackage",
                               json={"groups": ["VA1-0002"], "package": PACKAGE}, headers=jane)
    assert answer.status_code == 200
    by_server = {a["server"]: a for a in answer.json()}
    assert sorted(by_server) == [server(n) for n in (3, 4, 5, 6)]  # va1-0002 and its child va1-0003
    assert [n for n in (3, 4, 5, 6) if by_server[server(n)]["isQueued"]] == [3, 4, 6]
    assert "does not support" in by_server[server(5)]["errorMessage"]
    answer = world.client.post("/v2/operations/osd/groups/executePackage",
                               json={"groups": ["va1-0999"], "package": PACKAGE}, headers=jane)
    assert answer.status_code == 404


def test_queue_status_follows_the_execution(world: World) -> None:
    jane = world.login()
    answers = world.execute([server(1), server(4)], jane)
    links = {a["server"]: a["links"][0]["href"] for a in answers}
    assert world.client.get(links[server(1)], headers=jane).json() == {"status": "notStarted"}
    world.container.engine.advance(str(answers[0]["executionId"]))
    assert world.client.get(links[server(1)], headers=jane).json() == {"status": "executing"}
    world.drive()
    assert world.client.get(links[server(1)], headers=jane).json() == {"status": "succeeded"}
    assert world.client.get(links[server(4)], headers=jane).json() == {"status": "failed"}  # broken KB
    upper = links[server(1)].replace("/osd/", "/OSD/").upper().replace("/V2/OPERATIONS/", "/v2/operations/")
    assert world.client.get(upper.replace("/STATUS/", "/status/"), headers=jane).status_code == 200


# --- servers and groups ------------------------------------------------------------------------


def test_server_and_group_answer_in_the_clc_shapes(world: World) -> None:
    jane = world.login()
    body = world.client.get("/v2/servers/osd/va1osdpatch03", headers=jane).json()
    assert body["id"] == body["name"] == server(3) and body["groupId"] == "va1-0002"
    assert body["locationId"] == "VA1" and body["status"] == "active" and body["osType"].startswith("Windows")
    assert body["details"]["inMaintenanceMode"] is False and body["details"]["powerState"] == "started"
    assert body["details"]["ipAddresses"] == []
    assert {"self", "group", "patchSummary"} <= {link["rel"] for link in body["links"]}
    assert "patchExecution" not in {link["rel"] for link in body["links"]}
    queued = world.execute([server(3)], jane)[0]
    body = world.client.get(f"/v2/servers/osd/{server(3)}", headers=jane).json()
    assert {"rel": "patchExecution", "id": queued["executionId"], "verbs": ["GET"],
            "href": f"/rest/servers/osd/server/{server(3)}/patch/{queued['executionId']}"} in body["links"]
    group = world.client.get("/v2/groups/osd/va1-0001", headers=jane).json()
    assert group["id"] == "va1-0001" and group["serversCount"] == 2 and group["locationId"] == "VA1"
    assert [link["id"] for link in group["links"] if link["rel"] == "server"] == [server(1), server(2)]
    child = group["groups"][0]
    assert child["id"] == "va1-0002" and child["serversCount"] == 2
    assert {"rel": "parentGroup", "href": "/v2/groups/osd/va1-0001", "id": "va1-0001"} in child["links"]
    grandchild = child["groups"][0]
    assert grandchild["id"] == "va1-0003" and grandchild["groups"] == []
    assert [link["id"] for link in grandchild["links"] if link["rel"] == "server"] == [server(5), server(6)]


# --- summary, detail, cancel --------------------------------------------------------------------


def run_three_times(world: World, headers: dict[str, str]) -> list[str]:
    ids = []
    for _ in range(3):
        ids.append(str(world.execute([server(1)], headers)[0]["executionId"]))
        world.drive()
        world.clock.advance(60)
    return ids


def test_summary_is_newest_first_and_paginates_with_a_cursor(world: World) -> None:
    jane = world.login()
    ids = run_three_times(world, jane)
    url = f"/rest/servers/osd/server/{server(1)}/patch"
    everything = world.client.get(url, headers=jane)
    assert [e["execution_id"] for e in everything.json()] == ids[::-1]
    assert "Link" not in everything.headers
    first = world.client.get(url, params={"limit": 2}, headers=jane)
    assert [e["execution_id"] for e in first.json()] == [ids[2], ids[1]]
    assert first.headers["X-Next-Cursor"] == ids[1]
    assert first.headers["Link"] == f'<{url}?limit=2&cursor={ids[1]}>; rel="next"'
    second = world.client.get(url, params={"limit": 2, "cursor": ids[1]}, headers=jane)
    assert [e["execution_id"] for e in second.json()] == [ids[0]] and "Link" not in second.headers
    item = everything.json()[0]
    assert item["status"] == "completed" and item["start_time"].endswith("Z") and item["end_time"].endswith("Z")
    assert item["init_messages"] and {"start_time", "end_time", "init_begin_message", "init_end_message"} <= set(
        item["init_messages"][0])
    assert item["init_messages"][0]["init_begin_message"] == "Invoking SUS API"
    unknown = world.client.get(url, params={"cursor": "VA1-123456"}, headers=jane)
    assert unknown.status_code == 404


def test_detail_has_the_clc_fields_and_the_plain_ones(world: World) -> None:
    jane = world.login()
    execution_id = world.execute([server(4)], jane)[0]["executionId"]
    world.drive()
    answer = world.client.get(f"/rest/servers/osd/server/{server(4)}/patch/{str(execution_id).lower()}", headers=jane)
    assert answer.status_code == 200
    body = answer.json()
    assert body["execution_id"] == execution_id and body["status"] == "failed"
    assert body["begin_message"] == "Update Process BEGIN" and body["duration"].endswith("s")
    assert body["quarantined"] and body["failure_reason"]
    statuses = {p["status"] for p in body["patches"]}
    assert "failed" in statuses and "completed" in statuses
    patch = body["patches"][0]
    assert {"start_time", "end_time", "patch_begin_message", "patch_end_message", "status", "kb", "result_code",
            "hresult", "reboot_required"} <= set(patch)
    assert patch["hresult"].startswith("0x") and patch["patch_end_message"].startswith("Result Code:")
    assert body["installed_count"] == len({p["kb"] for p in body["patches"] if p["status"] == "completed"})


def test_cancel_records_who_and_why_and_the_run_ends_cancelled(world: World) -> None:
    jane = world.login()
    execution_id = world.execute([server(2)], jane)[0]["executionId"]
    world.container.engine.advance(str(execution_id))
    url = f"/rest/servers/osd/server/{server(2)}/patch/{execution_id}/cancel"
    answer = world.client.post(url, json={"reason": "change freeze"}, headers=jane)
    assert answer.status_code == 202
    assert answer.json()["cancelled_by"] == "jane" and answer.json()["cancel_reason"] == "change freeze"
    world.drive()
    detail = world.client.get(url.removesuffix("/cancel"), headers=jane).json()
    assert detail["status"] == "cancelled" and not world.fleet.status(server(2)).in_maintenance
    status = world.client.get(f"/v2/operations/osd/status/{str(execution_id).lower()}", headers=jane)
    assert status.json() == {"status": "failed"}
    again = world.client.post(url, headers=jane)
    assert again.status_code == 409 and "already ended" in again.json()["message"]


def test_cancel_without_a_body_and_with_a_bad_one(world: World) -> None:
    jane = world.login()
    execution_id = world.execute([server(6)], jane)[0]["executionId"]
    url = f"/rest/servers/osd/server/{server(6)}/patch/{execution_id}/cancel"
    bad = world.client.post(url, json={"reason": "x" * 2001}, headers=jane)
    assert bad.status_code == 400 and "reason" in bad.json()["message"]
    bad = world.client.post(url, json={"reason": "nul\x00"}, headers=jane)
    assert bad.status_code == 400
    answer = world.client.post(url, headers=jane)
    assert answer.status_code == 202 and answer.json()["cancel_reason"] is None


def test_summary_and_detail_cost_the_same_queries_for_one_execution_or_many(world: World) -> None:
    jane = world.login()
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    def queries(url: str) -> int:
        statements.clear()
        assert world.client.get(url, headers=jane).status_code == 200
        return len(statements)

    one = str(world.execute([server(2)], jane)[0]["executionId"])
    world.drive()
    ids = run_three_times(world, jane)
    sa.event.listen(world.container.db_engine, "before_cursor_execute", count)
    try:
        summary_one = queries(f"/rest/servers/osd/server/{server(2)}/patch")
        summary_many = queries(f"/rest/servers/osd/server/{server(1)}/patch")
        detail_one = queries(f"/rest/servers/osd/server/{server(2)}/patch/{one}")
        detail_many = queries(f"/rest/servers/osd/server/{server(1)}/patch/{ids[0]}")
        group = queries("/v2/groups/osd/va1-0001")
    finally:
        sa.event.remove(world.container.db_engine, "before_cursor_execute", count)
    assert summary_one == summary_many <= 5
    assert detail_one == detail_many <= 4
    assert group <= 3


def test_openapi_is_served_without_a_token_and_documents_every_endpoint(world: World) -> None:
    document = world.client.get("/openapi.json").json()
    assert set(document["paths"]) == {
        "/v2/authentication/login",
        "/v2/authentication/logout",
        "/v2/operations/{alias}/servers/executePackage",
        "/v2/operations/{alias}/groups/executePackage",
        "/v2/operations/{alias}/status/{statusId}",
        "/v2/servers/{alias}/{serverId}",
        "/v2/groups/{alias}/{groupId}",
        "/rest/servers/{alias}/server/{server}/patch",
        "/rest/servers/{alias}/server/{server}/patch/{execution_id}",
        "/rest/servers/{alias}/server/{server}/patch/{execution_id}/cancel",
        "/v2/patchaas/{alias}/windows",
        "/v2/patchaas/{alias}/windows/{windowId}",
        "/v2/patchaas/{alias}/rollouts/{rolloutId}",
        "/v2/patchaas/executions/{execution_id}/reports",  # the update package's report channel
        "/v2/patchaas/{alias}/ssh-hosts",  # operators register Linux servers' SSH details
        "/v2/patchaas/{alias}/ssh-hosts/{serverId}",
        "/v2/patchaas/{alias}/compliance",
        "/v2/patchaas/{alias}/webhooks",  # event subscriptions (docs/HOOKS.md)
        "/v2/patchaas/{alias}/webhooks/{webhookId}",
        "/v2/patchaas/{alias}/webhooks/{webhookId}/enable",
        "/v2/patchaas/{alias}/events",  # the account's event history, the audit trail
        "/v2/patchaas/{alias}/hooks",  # pre/post hooks (docs/HOOKS.md)
        "/v2/patchaas/{alias}/hooks/{name}",
        "/healthz",  # liveness and readiness: no token, no input
        "/readyz",
    }
    for name, path in document["paths"].items():
        for operation in path.values():
            assert "422" not in operation["responses"]
            assert "400" in operation["responses"] or name in ("/healthz", "/readyz"), name

