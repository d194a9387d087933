"""Through real HTTP against real processes: `patchaas api`, two workers and beat on PostgreSQL and Redis,
accounts and users made with the CLI. A client logs in, discovers servers, executes the package on three
servers and on a nested group, polls the queue status and the summary until everything is completed, and
checks each detail against the simulator's record; cross-account reads and unauthenticated calls are
refused."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx

from orchestrator.services.errors import CLC_NOT_QUEUED
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.fleet import PowerState
from simulation.mailsink import MailSink
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs
from tests.e2e.harness import Cluster, install_fleet, run_cli, start_api, wait_until

PACKAGE = {"packageId": DEFAULT_PACKAGE_ID, "parameters": {}}
PASSWORDS = {"jane": "jane's long password", "xavier": "xavier's long password"}
# install_fleet places server i in va1-0001, va1-0002 (child of 0001), va1-0003 (child of 0002) in turn:
# 01 04 07 in va1-0001; 02 05 08 in va1-0002; 03 06 09 in va1-0003.
SCENARIOS = {Scenario.NORMAL: 3, Scenario.FLAKY_KB: 1, Scenario.UNSUPPORTED_OS: 1, Scenario.POWERED_OFF: 1,
             Scenario.PENDING_REBOOT: 1}


def cli(cluster: Cluster, *args: str, stdin: str | None = None) -> None:
    done = run_cli(cluster, *args, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)


def login(client: httpx.Client, username: str) -> dict[str, str]:
    answer = client.post("/v2/authentication/login", json={"username": username, "password": PASSWORDS[username]})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['bearerToken']}"}


def poll(client: httpx.Client, headers: dict[str, str], hrefs: dict[str, str], timeout: float,
         logs: Any) -> dict[str, str]:
    """Poll every status link every half second (CLC clients polled every ~2 s) until none is pending."""
    last: dict[str, str] = {}

    def finished() -> bool:
        for server, href in hrefs.items():
            answer = client.get(href, headers=headers)
            assert answer.status_code == 200, answer.text
            last[server] = answer.json()["status"]
        return all(status in ("succeeded", "failed") for status in last.values())

    wait_until(finished, timeout=timeout, interval=0.5, on_timeout=lambda: f"{last}\n{logs()}")
    return last


def test_a_client_patches_servers_and_a_nested_group_over_http(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster
) -> None:
    specs = build_fleet_specs(31, 9, scenarios=SCENARIOS)
    fleet = install_fleet(pg, specs)
    scenario = {s.name: s.scenario for s in specs}
    cli(cluster, "account", "create", "XYZ", "--name", "XYZ Corp", "--datacenter", "VA1", "--email", "ops@xyz.example")
    cli(cluster, "user", "create", "jane", "--alias", "OSD", "--role", "ServerAdmin", "--password-stdin",
        stdin=PASSWORDS["jane"] + "\n")
    cli(cluster, "user", "create", "xavier", "--alias", "XYZ", "--role", "AccountAdmin", "--password-stdin",
        stdin=PASSWORDS["xavier"] + "\n")
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.start_beat()
    url = start_api(cluster)

    def logs() -> str:
        return f"api:\n{cluster.log('api')[-2000:]}\nw1:\n{cluster.log('w1')[-2000:]}"

    with httpx.Client(base_url=url, timeout=10) as client:
        # unauthenticated calls are refused
        for method, path in [("GET", "/v2/servers/osd/VA1OSDPATCH01"), ("GET", "/v2/groups/osd/va1-0001"),
                             ("POST", "/v2/operations/osd/servers/executePackage"),
                             ("GET", "/rest/servers/osd/server/VA1OSDPATCH01/patch")]:
            answer = client.request(method, path, json={"servers": ["VA1OSDPATCH01"], "package": PACKAGE})
            assert answer.status_code == 401 and "message" in answer.json(), (path, answer.text)
        bad = client.get("/v2/servers/osd/VA1OSDPATCH01", headers={"Authorization": "Bearer forged"})
        assert bad.status_code == 401
        wrong = client.post("/v2/authentication/login", json={"username": "jane", "password": "guess"})
        assert wrong.status_code == 400 and "didn't recognize" in wrong.json()["message"]

        jane = login(client, "jane")

        # discovery: the root group, its servers and nested groups
        root = client.get("/v2/groups/osd/va1-0001", headers=jane).json()
        three = [link["id"] for link in root["links"] if link["rel"] == "server"]
        assert three == ["VA1OSDPATCH01", "VA1OSDPATCH04", "VA1OSDPATCH07"]
        assert root["groups"][0]["id"] == "va1-0002" and root["groups"][0]["groups"][0]["id"] == "va1-0003"
        for name in three:
            server = client.get(f"/v2/servers/osd/{name}", headers=jane).json()
            assert server["osType"] in ("Windows 2012 Datacenter 64-bit", "Windows 2012R2 Datacenter 64-bit")

        # execute on three servers, and on the nested group va1-0002 (with va1-0003 inside)
        answers = client.post("/v2/operations/osd/servers/executePackage",
                              json={"servers": three, "package": PACKAGE}, headers=jane).json()
        assert [a["isQueued"] for a in answers] == [True, True, True]
        group = client.post("/v2/operations/osd/groups/executePackage",
                            json={"groups": ["va1-0002"], "package": PACKAGE}, headers=jane)
        assert group.status_code == 200
        by_server = {a["server"]: a for a in group.json()}
        assert sorted(by_server) == [f"VA1OSDPATCH0{n}" for n in (2, 3, 5, 6, 8, 9)]
        refused = [name for name, a in by_server.items() if not a["isQueued"]]
        assert refused == ["VA1OSDPATCH05"] and scenario["VA1OSDPATCH05"] is Scenario.UNSUPPORTED_OS
        assert by_server["VA1OSDPATCH05"]["errorMessage"].startswith(CLC_NOT_QUEUED)
        queued = {a["server"]: a for a in answers + group.json() if a["isQueued"]}
        assert len(queued) == 8

        # poll the queue status, then the summary, until everything is completed
        hrefs = {name: a["links"][0]["href"] for name, a in queued.items()}
        statuses = poll(client, jane, hrefs, timeout=180, logs=logs)
        assert set(statuses.values()) == {"succeeded"}, statuses
        deadline = time.monotonic() + 30
        for name, answer in queued.items():
            while True:
                summary = client.get(f"/rest/servers/osd/server/{name}/patch", headers=jane)
                assert summary.status_code == 200
                newest = summary.json()[0]
                if newest["status"] != "pending" or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert newest["execution_id"] == answer["executionId"] and newest["status"] == "completed"

            # each detail against the simulator's record
            detail = client.get(f"/rest/servers/osd/server/{name}/patch/{answer['executionId']}", headers=jane)
            assert detail.status_code == 200
            body = detail.json()
            assert body["status"] == "completed" and body["end_message"] == "Updating Complete", body
            completed = {p["kb"] for p in body["patches"] if p["status"] == "completed"}
            attempted = {p["kb"] for p in body["patches"]}
            assert completed == fleet.installed_kbs(name), name
            assert attempted == {e.kb for e in fleet.effects(name, "install")}, name
            assert body["installed_count"] == len(completed)
            assert len(newest["init_messages"]) == body["cycles"]
            kinds = Counter(e.kind for e in fleet.effects(name))
            assert kinds[EffectKind.MAINTENANCE_ON] == kinds[EffectKind.MAINTENANCE_OFF] == 1, (name, kinds)
            assert not fleet.status(name).in_maintenance
            if scenario[name] is Scenario.FLAKY_KB:
                assert "failed" in {p["status"] for p in body["patches"]}
            if scenario[name] is Scenario.POWERED_OFF:
                assert fleet.status(name).power_state is PowerState.STOPPED and kinds[EffectKind.POWER_ON] == 1

        # another account sees nothing of OSD: the same 404 as for what does not exist
        xavier = login(client, "xavier")
        name, answer = next(iter(queued.items()))
        execution_id = answer["executionId"]
        for path in [f"/v2/servers/osd/{name}", "/v2/groups/osd/va1-0001", hrefs[name],
                     f"/rest/servers/osd/server/{name}/patch",
                     f"/rest/servers/osd/server/{name}/patch/{execution_id}",
                     f"/v2/operations/xyz/status/{execution_id.lower()}"]:
            answer = client.get(path, headers=xavier)
            assert answer.status_code == 404 and set(answer.json()) == {"message"}, (path, answer.text)
        cancel = client.post(f"/rest/servers/osd/server/{name}/patch/{execution_id}/cancel", headers=xavier)
        assert cancel.status_code == 404
        execute = client.post("/v2/operations/xyz/servers/executePackage",
                              json={"servers": [name], "package": PACKAGE}, headers=xavier).json()
        assert execute == [{"server": name, "isQueued": False, "errorMessage": CLC_NOT_QUEUED}]
