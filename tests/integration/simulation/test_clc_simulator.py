"""The CLC simulator on a real uvicorn on loopback: every endpoint in CLC's shapes, our extensions, fault
injection (5xx, dropped connections, latency, early token expiry), and the whole engine driven through
the `clc` driver over HTTP with faults on."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from orchestrator import bootstrap
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.fleet import CycleReport, CycleState, PowerState
from schemas.patching import PackageRequest
from simulation import clc_answers, clc_app, clc_control_plane, clc_faults, clc_server
from simulation import fleet as simulated
from simulation.records import EffectKind
from simulation.specs import Scenario, build_fleet_specs
from tests import support
from workers import mail
from workers.fleet import clc, clc_wire

USER = clc_control_plane.SimUser("ops", "s3cret", "OSD", "VA1")
STATUS_ID = re.compile(r"^va1-\d+$")


@dataclass
class Sim:
    """A simulator served on loopback, its fleet, a fleet clock the test moves and a logged-in client."""

    url: str
    fleet: simulated.SimulatedFleet
    now: list[float]
    plane_now: list[float]
    client: httpx.Client
    app: Any

    def login(self, username: str = USER.username, password: str = USER.password) -> httpx.Response:
        return self.client.post("/v2/authentication/login", json={"username": username, "password": password})

    def authorize(self) -> None:
        token = self.login().json()["bearerToken"]
        self.client.headers["Authorization"] = f"Bearer {token}"

    def op(self, operation: str, body: Any, key: str | None = None) -> list[dict[str, Any]]:
        headers = {clc_wire.IDEMPOTENCY_HEADER: key} if key else {}
        response = self.client.post(f"/v2/operations/OSD/servers/{operation}", json=body, headers=headers)
        assert response.status_code == 200, response.text
        answer: list[dict[str, Any]] = response.json()
        return answer

    def status_of(self, entry: dict[str, Any]) -> str:
        (link,) = entry["links"]
        answer: str = self.client.get(link["href"]).json()["status"]
        return answer

    def server(self, name: str) -> dict[str, Any]:
        response = self.client.get(f"/v2/servers/OSD/{name}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


SimFactory = Callable[..., Sim]


@pytest.fixture
def sim_factory() -> Iterator[SimFactory]:
    """Start simulators: `sim_factory(faults=..., scenarios=..., timings=...)`; all stopped afterwards."""
    stack: list[Any] = []

    def make(
        faults: clc_faults.Faults | None = None,
        scenarios: dict[Scenario, int] | None = None,
        timings: simulated.SimTimings | None = None,
        count: int = 6,
        clock: Callable[[], float] | None = None,
    ) -> Sim:
        now = [1_800_000_000.0]
        plane_now = [0.0]
        specs = build_fleet_specs(5, count, scenarios=scenarios or {})
        fleet = simulated.SimulatedFleet.create(specs, timings=timings, seed=5, clock=clock or (lambda: now[0]))
        app = clc_app.create_app(fleet, [USER], faults, clock=lambda: plane_now[0])
        served = clc_server.running(app)
        url = served.__enter__()
        client = httpx.Client(base_url=url, timeout=10.0)
        stack.append((served, client))
        return Sim(url, fleet, now, plane_now, client, app)

    yield make
    for served, client in reversed(stack):
        client.close()
        served.__exit__(None, None, None)


@pytest.fixture
def sim(sim_factory: SimFactory) -> Sim:
    made = sim_factory(
        scenarios={Scenario.NORMAL: 2, Scenario.POWERED_OFF: 1, Scenario.UNSUPPORTED_OS: 1},
        timings=simulated.SimTimings(reboot_seconds=30, package_seconds=20, power_seconds=10),
    )
    made.authorize()
    return made


def names(sim: Sim) -> list[str]:
    return [spec.name for spec in sim.fleet.specs()]


def bearer(sim: Sim) -> dict[str, str]:
    """A token straight from the control plane (when every HTTP login would be faulted)."""
    found = sim.app.state.plane.login(USER.username, USER.password)
    assert found is not None
    return {"Authorization": f"Bearer {found[1]}"}


# --- authentication ------------------------------------------------------------------------------


def test_login_answers_in_clcs_shape(sim: Sim) -> None:
    answer = sim.login().json()
    assert answer["userName"] == "ops" and answer["accountAlias"] == "OSD" and answer["locationAlias"] == "VA1"
    assert answer["roles"] == ["ServerAdmin", "AccountAdmin"] and len(answer["bearerToken"]) > 20


def test_bad_credentials_get_clcs_400_message(sim: Sim) -> None:
    response = sim.login(password="wrong")
    assert response.status_code == 400
    assert response.json() == {"message": clc_answers.CLC_BAD_CREDENTIALS}


def test_a_call_without_a_token_is_401(sim: Sim) -> None:
    response = httpx.get(f"{sim.url}/v2/servers/OSD/{names(sim)[0]}")
    assert response.status_code == 401 and response.json() == {"message": clc_answers.UNAUTHORIZED}


def test_another_accounts_alias_is_403(sim: Sim) -> None:
    assert sim.client.get(f"/v2/servers/XYZ/{names(sim)[0]}").status_code == 403


def test_a_token_expires_after_its_ttl(sim_factory: SimFactory) -> None:
    sim = sim_factory(faults=clc_faults.Faults(token_ttl_seconds=5.0))
    sim.authorize()
    name = names(sim)[0]
    assert sim.client.get(f"/v2/servers/OSD/{name}").status_code == 200
    sim.plane_now[0] += 5.0
    assert sim.client.get(f"/v2/servers/OSD/{name}").status_code == 401
    assert sim.client.get("/simulator/faults").json()["expiredTokens"] == 1


# --- servers ---------------------------------------------------------------------------------------


def test_get_server_has_clcs_shape_and_our_extension(sim: Sim) -> None:
    name = names(sim)[0]
    body = sim.server(name.lower())
    assert body["id"] == name.lower() and body["name"] == name and body["locationId"] == "VA1"
    assert body["osType"].startswith("Windows 2012") and body["status"] == "active"
    assert body["details"]["powerState"] == "started" and body["details"]["inMaintenanceMode"] is False
    assert body["details"]["ipAddresses"][0]["internal"].startswith("10.")
    assert {"rel": "self", "href": f"/v2/servers/osd/{name.lower()}", "id": name.lower(), "verbs": ["GET"]} in (
        body["links"]
    )
    assert body["patchaas"] == {"bootId": f"{name}-boot-1", "rebootPending": False, "up": True,
                                "servicing": {"idle": True, "rebootRequired": False, "detail": ""}}


def test_an_unknown_server_is_404(sim: Sim) -> None:
    response = sim.client.get("/v2/servers/OSD/VA1OSDNOPE99")
    assert response.status_code == 404 and response.json()["code"] == "serverNotFound"


def test_groups_are_not_served(sim: Sim) -> None:
    assert sim.client.get("/v2/groups/OSD/va1-0001").status_code == 404


# --- queued operations -------------------------------------------------------------------------


def test_set_maintenance_is_queued_with_a_status_link_and_succeeds(sim: Sim) -> None:
    name = names(sim)[0]
    (entry,) = sim.op("setMaintenance", {"servers": [{"id": name, "inMaintenanceMode": True}]})
    assert entry["server"] == name and entry["isQueued"] is True
    (link,) = entry["links"]
    assert link["rel"] == "status" and STATUS_ID.match(link["id"])
    assert link["href"] == f"/v2/operations/osd/status/{link['id']}"
    assert sim.status_of(entry) == "succeeded"
    assert sim.server(name)["details"]["inMaintenanceMode"] is True


def test_start_and_stop_maintenance_take_bare_arrays(sim: Sim) -> None:
    name = names(sim)[0]
    sim.op("startMaintenance", [name])
    assert sim.fleet.status(name).in_maintenance
    sim.op("stopMaintenance", [name])
    assert not sim.fleet.status(name).in_maintenance


def test_one_key_means_one_effect_and_the_same_status(sim: Sim) -> None:
    name = names(sim)[0]
    body = {"servers": [{"id": name, "inMaintenanceMode": True}]}
    first = sim.op("setMaintenance", body, key="E1:maintenance_on:0")
    again = sim.op("setMaintenance", body, key="E1:maintenance_on:0")
    assert first == again
    assert len(sim.fleet.effects(name, "maintenance_on")) == 1


def test_without_a_key_every_request_is_a_new_operation(sim: Sim) -> None:
    name = names(sim)[0]
    first = sim.op("startMaintenance", [name])
    again = sim.op("startMaintenance", [name])
    assert first[0]["links"][0]["id"] != again[0]["links"][0]["id"]
    assert len(sim.fleet.effects(name, "maintenance_on")) == 2


def test_each_server_gets_its_own_entry_and_unknown_ones_are_not_queued(sim: Sim) -> None:
    name = names(sim)[0]
    entries = sim.op("reboot", [name, "VA1OSDNOPE99"])
    assert [e["isQueued"] for e in entries] == [True, False]
    assert entries[1] == {
        "server": "VA1OSDNOPE99",
        "isQueued": False,
        "errorMessage": clc_answers.CLC_NOT_QUEUED,
        "patchaas": {"retryable": False, "reason": "server VA1OSDNOPE99 not found"},
    }


def test_reboot_status_executes_until_the_server_is_back_with_a_new_boot_id(sim: Sim) -> None:
    name = names(sim)[0]
    (entry,) = sim.op("reboot", [name], key="E1:reboot:1")
    assert sim.status_of(entry) == "executing"
    assert sim.server(name)["patchaas"]["up"] is False
    sim.now[0] += 30
    assert sim.status_of(entry) == "succeeded"
    assert sim.server(name)["patchaas"]["bootId"] == f"{name}-boot-2"


def test_power_off_then_on(sim: Sim) -> None:
    name = names(sim)[0]
    (off,) = sim.op("powerOff", [name])
    assert sim.status_of(off) == "succeeded" and sim.server(name)["details"]["powerState"] == "stopped"
    (on,) = sim.op("powerOn", [name])
    assert sim.status_of(on) == "executing" and sim.server(name)["details"]["powerState"] == "started"
    sim.now[0] += 10
    assert sim.status_of(on) == "succeeded"


def test_a_reboot_of_a_stopped_server_is_not_queued_but_retryable(sim: Sim) -> None:
    stopped = next(s.name for s in sim.fleet.specs() if s.power_state is PowerState.STOPPED)
    (entry,) = sim.op("reboot", [stopped])
    assert entry["isQueued"] is False and entry["patchaas"]["retryable"] is True


def test_execute_package_runs_a_cycle_whose_report_is_read_under_our_path(sim: Sim) -> None:
    spec = next(s for s in sim.fleet.specs() if s.scenario is Scenario.NORMAL)
    key = "VA1-000001:package:1"
    excluded = spec.updates[0].kb
    body = {
        "servers": [spec.name],
        "package": {
            "packageId": DEFAULT_PACKAGE_ID,
            "parameters": {
                clc_wire.PARAM_EXECUTION_ID: "VA1-000001",
                clc_wire.PARAM_CYCLE: "1",
                clc_wire.PARAM_EXCLUDE_KBS: excluded,
                clc_wire.PARAM_IDEMPOTENCY_KEY: key,
            },
        },
    }
    (entry,) = sim.op("executePackage", body)
    run_path = clc_wire.package_run_path("OSD", spec.name, key)
    assert sim.status_of(entry) == "executing"
    running = CycleReport.model_validate(sim.client.get(run_path).json())
    assert running.state is CycleState.RUNNING
    sim.now[0] += 20
    assert sim.status_of(entry) == "succeeded"
    report = CycleReport.model_validate(sim.client.get(run_path).json())
    assert report.state is CycleState.FINISHED and report.key == key
    assert report.excluded == (excluded,) and excluded not in {u.kb for u in report.updates}
    assert {(e.key, e.kb) for e in sim.fleet.effects(spec.name, "install")} == {(key, u.kb) for u in report.updates}


def test_a_package_run_never_started_is_404_with_its_code(sim: Sim) -> None:
    response = sim.client.get(clc_wire.package_run_path("OSD", names(sim)[0], "VA1-000009:package:1"))
    assert response.status_code == 404 and response.json()["code"] == clc_wire.PACKAGE_RUN_NOT_FOUND


def test_execute_package_on_an_unsupported_os_is_refused_for_good(sim: Sim) -> None:
    spec = next(s for s in sim.fleet.specs() if s.scenario is Scenario.UNSUPPORTED_OS)
    body = {"servers": [spec.name], "package": {"packageId": DEFAULT_PACKAGE_ID, "parameters": {}}}
    (entry,) = sim.op("executePackage", body)
    assert entry["isQueued"] is False and entry["patchaas"]["retryable"] is False
    assert "does not support" in entry["patchaas"]["reason"]


def test_an_unknown_status_id_is_404(sim: Sim) -> None:
    assert sim.client.get("/v2/operations/OSD/status/va1-99999999").status_code == 404


def test_an_invalid_body_is_400_with_a_message(sim: Sim) -> None:
    response = sim.client.post("/v2/operations/OSD/servers/setMaintenance", json={"servers": [{"id": "x"}]})
    assert response.status_code == 400 and response.json()["message"] == "The request is invalid."


# --- faults --------------------------------------------------------------------------------------


def test_injected_5xx_answers_carry_clcs_error_body(sim_factory: SimFactory) -> None:
    sim = sim_factory(faults=clc_faults.Faults(error_rate=1.0, seed=1))
    codes = {sim.login().status_code for _ in range(30)}
    assert codes <= {500, 502, 503} and len(codes) > 1
    assert sim.login().json() == {"message": clc_answers.SERVER_ERROR}
    assert sim.client.get("/simulator/health").status_code == 200  # the simulator's own paths are never faulted


def test_a_5xx_after_the_effect_loses_the_answer_not_the_work(sim_factory: SimFactory) -> None:
    sim = sim_factory(faults=clc_faults.Faults(error_rate=1.0, after_effect_share=1.0))
    name = names(sim)[0]
    response = sim.client.post("/v2/operations/OSD/servers/startMaintenance", json=[name], headers=bearer(sim))
    assert response.status_code in (500, 502, 503)
    assert sim.fleet.status(name).in_maintenance
    assert sim.client.get("/simulator/faults").json()["errors"] == {"beforeEffect": 0, "afterEffect": 1}


def test_a_drop_after_the_effect_loses_the_answer_not_the_work(sim_factory: SimFactory) -> None:
    sim = sim_factory(faults=clc_faults.Faults(drop_rate=1.0, after_effect_share=1.0))
    name = names(sim)[0]
    with pytest.raises(httpx.RemoteProtocolError):
        sim.client.post("/v2/operations/OSD/servers/powerOff", json=[name], headers=bearer(sim))
    assert sim.fleet.status(name).power_state is PowerState.STOPPED


def test_dropped_connections_close_without_an_answer(sim_factory: SimFactory) -> None:
    sim = sim_factory(faults=clc_faults.Faults(drop_rate=1.0, after_effect_share=0.0))
    with pytest.raises(httpx.RemoteProtocolError):
        sim.login()
    assert sim.client.get("/simulator/faults").json()["drops"] == {"beforeEffect": 1, "afterEffect": 0}


def test_latency_is_added_to_every_clc_request(sim_factory: SimFactory) -> None:
    sim = sim_factory(faults=clc_faults.Faults(latency_ms=200))
    started = time.monotonic()
    assert sim.login().status_code == 200
    assert time.monotonic() - started >= 0.2


# --- the driver over HTTP ------------------------------------------------------------------------

EXPECTED = {
    Scenario.NORMAL: "completed",
    Scenario.FLAKY_KB: "completed",
    Scenario.PENDING_REBOOT: "completed",
    Scenario.UP_TO_DATE: "completed",
    Scenario.POWERED_OFF: "completed",
    Scenario.BROKEN_KB: "failed",
    Scenario.ROLLBACK_KB: "failed",
    Scenario.NEVER_RETURNS: "failed",
}


def test_the_engine_over_http_with_faults_ends_every_scenario_right(sim_factory: SimFactory, pg: str) -> None:
    faults = clc_faults.Faults(error_rate=0.1, drop_rate=0.05, token_ttl_seconds=3600, seed=9)
    clock = support.FakeClock()
    sim = sim_factory(
        faults=faults,
        scenarios={**{s: 1 for s in EXPECTED}, Scenario.NORMAL: 2, Scenario.UNSUPPORTED_OS: 1},
        timings=simulated.SimTimings(reboot_seconds=30, package_seconds=20, power_seconds=10),
        count=10,
        clock=clock.seconds,
    )
    config = clc.ClcConfig(
        sim.url,
        USER.username,
        USER.password,
        backoff_initial=0.01,
        backoff_max=0.05,
        poll_interval=0.01,
        max_attempts=8,
        rate_per_second=2000.0,
        burst=50,
    )
    driver = clc.ClcFleet(config)
    dispatcher = support.ListDispatcher()
    container = bootstrap.build(
        support.test_settings(pg), dispatcher=dispatcher, fleet=driver, mailer=mail.MemoryMailer(), clock=clock
    )
    specs = sim.fleet.specs()
    support.register(container, specs)
    try:
        answers = container.service.execute_package_on_groups(
            "OSD", ["va1-0001"], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "test"
        )
        by_server = {a.server: a for a in answers}
        support.drive(container, dispatcher, clock)
        for spec in specs:
            answer = by_server[spec.name]
            if spec.scenario is Scenario.UNSUPPORTED_OS:
                assert not answer.is_queued
                continue
            assert answer.execution_id is not None
            detail = container.service.detail("OSD", spec.name, answer.execution_id)
            assert detail.status == EXPECTED[spec.scenario], (spec.scenario, detail.failure_reason)
            status = sim.fleet.status(spec.name)
            assert not status.in_maintenance and status.power_state is spec.power_state
            kinds = Counter(e.kind for e in sim.fleet.effects(spec.name))
            assert kinds[EffectKind.MAINTENANCE_ON] == 1 and kinds[EffectKind.MAINTENANCE_OFF] == 1, (spec, kinds)
            installs = [(e.key, e.kb) for e in sim.fleet.effects(spec.name, "install")]
            assert len(installs) == len(set(installs)) == len(detail.patches)
            if detail.status == "completed":
                assert {p.kb for p in detail.patches if p.status == "completed"} == sim.fleet.installed_kbs(spec.name)
        counts = sim.client.get("/simulator/faults").json()
        assert counts["errors"]["beforeEffect"] + counts["errors"]["afterEffect"] > 0
        assert counts["drops"]["beforeEffect"] + counts["drops"]["afterEffect"] > 0
    finally:
        container.close()
        driver.close()
