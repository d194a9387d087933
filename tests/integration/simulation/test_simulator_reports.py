"""Simulated servers use the report channel as the PowerShell package does, over real loopback HTTP: the `clc`
driver sends `patchaas.reportUrl` / `patchaas.reportToken`, the server posts its finished cycle's report
with the bearer token and `Idempotency-Key`, 5xx answers are retried, a 4xx is final, and the fault flags
drop, duplicate or hide reports."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from schemas.fleet import CycleReport, CycleState, PackageRun
from simulation import clc_app, clc_control_plane, clc_faults, clc_reporter, clc_server
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from tests.e2e.harness import wait_until
from workers.fleet import clc

USER = clc_control_plane.SimUser("ops", "s3cret", "OSD", "VA1")


@dataclass
class Receiver:
    """Our API's report endpoint, played by a test app: answers the queued statuses, then 201."""

    answers: list[int] = field(default_factory=list)
    posts: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v2/patchaas/executions/{execution_id}/reports")
        async def receive(execution_id: str, request: Request) -> Any:
            body = await request.json()
            with self.lock:
                self.posts.append((execution_id, dict(request.headers), body))
                if body.get("state") == "running":  # a heartbeat: the channel keeps it apart
                    return JSONResponse({"message": "heartbeat"}, status_code=202)
                status = self.answers.pop(0) if self.answers else 201
            return JSONResponse({"message": f"answer {status}"}, status_code=status)

        return app


@dataclass
class Setup:
    fleet: simulated.SimulatedFleet
    driver: clc.ClcFleet
    receiver: Receiver
    api_url: str
    sim: Any


@pytest.fixture
def make() -> Iterator[Any]:
    stack: list[Any] = []

    def build(faults: clc_faults.Faults | None = None, scenario: Scenario = Scenario.NORMAL) -> Setup:
        specs = build_fleet_specs(5, 3, scenarios={scenario: 3})
        fleet = simulated.SimulatedFleet.create(specs, timings=simulated.SimTimings(package_seconds=0.3), seed=5)
        receiver = Receiver()
        reporter = clc_reporter.Reporter(fleet, faults or clc_faults.Faults(), backoff_initial=0.01,
                                          backoff_max=0.05)
        sim_app = clc_app.create_app(fleet, [USER], faults, reporter=reporter)
        api_ctx = clc_server.running(receiver.app())
        sim_ctx = clc_server.running(sim_app)
        api_url, sim_url = api_ctx.__enter__(), sim_ctx.__enter__()
        stack.extend([api_ctx, sim_ctx])
        driver = clc.ClcFleet(clc.ClcConfig(sim_url, USER.username, USER.password, poll_interval=0.05))
        stack.append(driver)
        return Setup(fleet, driver, receiver, api_url, sim_app)

    yield build
    for item in reversed(stack):
        if isinstance(item, clc.ClcFleet):
            item.close()
        else:
            item.__exit__(None, None, None)


def _invoke(setup: Setup, server: str, execution_id: str = "VA1-100001", cycle: int = 1) -> str:
    key = f"{execution_id}:package:{cycle}"
    run = PackageRun(package_id="p", execution_id=execution_id, cycle=cycle,
                     report_url=f"{setup.api_url}/v2/patchaas/executions/{execution_id}/reports",
                     report_token=SecretStr("tok-" + execution_id))
    setup.driver.invoke_package(server, key, run)
    return key


def _log(setup: Setup) -> dict[str, int]:
    return setup.sim.state.reporter.log.as_json()  # type: ignore[no-any-return]


def test_a_finished_cycle_is_posted_once_with_the_token_and_key(make: Any) -> None:
    setup = make()
    server = setup.fleet.specs()[0].name
    key = _invoke(setup, server)
    _invoke(setup, server)  # the same key again (a retried step): one run, one report
    wait_until(lambda: _log(setup)["posted"] == 1, timeout=10)
    (execution_id, headers, body), = setup.receiver.posts
    assert execution_id == "VA1-100001"
    assert headers["authorization"] == "Bearer tok-VA1-100001" and headers["idempotency-key"] == key
    report = CycleReport.model_validate(body)
    assert report.state is CycleState.FINISHED and report == setup.fleet.cycle_result(server, key)
    assert report.updates  # a normal server has updates in cycle 1


def test_5xx_answers_are_retried_and_a_4xx_is_final(make: Any) -> None:
    setup = make()
    first, second = (spec.name for spec in setup.fleet.specs()[:2])
    setup.receiver.answers.extend([503, 500])
    _invoke(setup, first)
    wait_until(lambda: _log(setup)["posted"] == 1, timeout=10)
    assert len(setup.receiver.posts) == 3
    setup.receiver.answers.append(409)
    _invoke(setup, second, execution_id="VA1-100002")
    wait_until(lambda: _log(setup)["refused"] == 1, timeout=10)
    assert len(setup.receiver.posts) == 4 and _log(setup)["posted"] == 1


def test_without_the_channel_nothing_is_posted(make: Any) -> None:
    setup = make()
    server = setup.fleet.specs()[0].name
    key = "VA1-100003:package:1"
    setup.driver.invoke_package(server, key, PackageRun(package_id="p", execution_id="VA1-100003", cycle=1))
    wait_until(lambda: (r := setup.fleet.cycle_result(server, key)) is not None and r.state is CycleState.FINISHED,
               timeout=5, interval=0.05)
    assert setup.sim.state.reporter.pending() == 0 and setup.receiver.posts == []


def test_fault_flags_drop_duplicate_and_hide_reports(make: Any) -> None:
    setup = make(clc_faults.Faults(report_duplicate_rate=1.0, hide_package_results=True))
    server = setup.fleet.specs()[0].name
    key = _invoke(setup, server)
    wait_until(lambda: _log(setup)["posted"] == 2, timeout=10)  # this receiver answers 201 to both copies
    assert _log(setup)["duplicated"] == 1 and len(setup.receiver.posts) == 2
    (_, headers_1, body_1), (_, headers_2, body_2) = setup.receiver.posts
    assert body_1 == body_2 and headers_1["idempotency-key"] == headers_2["idempotency-key"] == key
    hidden = setup.driver.cycle_result(server, key)  # packageRuns never tells: only the report does
    assert hidden is not None and hidden.state is CycleState.RUNNING and not hidden.updates

    dropping = make(clc_faults.Faults(report_drop_rate=1.0))
    other = dropping.fleet.specs()[1].name
    key = _invoke(dropping, other)
    wait_until(lambda: _log(dropping)["dropped"] == 1, timeout=10)
    assert dropping.receiver.posts == []
    polled = dropping.driver.cycle_result(other, key)  # the result is not lost: polling still has it
    assert polled is not None and polled.state is CycleState.FINISHED


def test_a_long_cycle_posts_heartbeats_then_its_report(make: Any) -> None:
    """The engine's deadline and heartbeat period reach the simulated package over CLC's string parameters; its
    cycle outlasts the deadline, posting a running report each period (`<key>:heartbeat:<n>`), then the report."""
    from datetime import UTC, datetime, timedelta

    setup = make(scenario=Scenario.LONG_CYCLE)
    server = setup.fleet.specs()[0].name
    key = "VA1-100004:package:1"
    run = PackageRun(package_id="94bd395f-9b54-4693-94ae-4f3aa93fc239", execution_id="VA1-100004", cycle=1,
                     report_url=f"{setup.api_url}/v2/patchaas/executions/VA1-100004/reports",
                     report_token=SecretStr("tok"), deadline=datetime.now(UTC) + timedelta(seconds=3),
                     heartbeat_seconds=1)
    setup.driver.invoke_package(server, key, run)
    wait_until(lambda: _log(setup)["posted"] == 1, timeout=15)
    posts = setup.receiver.posts
    beats = [(h["idempotency-key"], b) for _, h, b in posts if b["state"] == "running"]
    assert beats and beats[0][0] == f"{key}:heartbeat:1" and _log(setup)["heartbeats"] == len(beats)
    assert all("heard_at" not in b and b["phase"].startswith("installing KB") for _, b in beats)
    final = CycleReport.model_validate(posts[-1][2])
    assert final.state is CycleState.FINISHED and final.updates
    assert final.finished_at is not None and run.deadline is not None
    assert final.finished_at > run.deadline.replace(microsecond=0)  # past the deadline as sent (whole seconds)
    over_clc = setup.driver.cycle_result(server, key)
    assert over_clc is not None and type(over_clc) is CycleReport
