"""Heartbeats on the report channel, on real PostgreSQL: a running report posted with `Idempotency-Key:
<key>:heartbeat:<n>` is kept apart (202), never as the cycle's report, so the final report is recorded after it
(201, not 409); and the engine extends a cycle's deadline only while heartbeats arrive, up to the ceiling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from orchestrator.bootstrap import Container
from orchestrator.entrypoints.rest import create_app
from orchestrator.persistence import models
from orchestrator.persistence.report_models import CycleHeartbeat
from orchestrator.services import reports
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.fleet import CycleReport, CycleState, HeartbeatReport, PackageRun, ResultCode
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, SimServerSpec, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

BASE_URL = "http://patchaas.test"


class SilentFleet(simulated.SimulatedFleet):
    """A control plane that never knows a package run's outcome (a real CLC without packageRuns): the cycle
    reads as running until a report arrives; it keeps the runs it received (with their tokens)."""

    runs: list[tuple[str, str, PackageRun]]

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        self.runs.append((server, key, run))
        super().invoke_package(server, key, run)

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        report = super().cycle_result(server, key)
        if report is None:
            return None
        return CycleReport(key=key, state=CycleState.RUNNING, started_at=report.started_at,
                           result_code=ResultCode.IN_PROGRESS)

    def cycle_results(self, items: Any) -> dict[tuple[str, str], CycleReport | None]:
        return {item: self.cycle_result(*item) for item in items}


@dataclass
class World:
    container: Container
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    fleet: SilentFleet
    client: TestClient
    specs: list[SimServerSpec]

    def post(self, execution_id: str, body: dict[str, Any], token: str, key: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.client.post(reports.REPORTS_PATH.format(execution_id=execution_id), json=body, headers=headers)


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    clock = support.FakeClock()
    specs = build_fleet_specs(13, 2, scenarios={Scenario.NORMAL: 2})
    fleet = SilentFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=13, clock=clock.seconds)
    fleet.runs = []
    dispatcher = support.ListDispatcher()
    settings = support.test_settings(pg, report_base_url=BASE_URL, heartbeat_seconds=0,  # the fleet sends none
                                     heartbeat_grace_seconds=120.0, package_ceiling_seconds=1800.0,
                                     poll_interval_seconds=10.0)
    container = support.make_container(settings, fleet, clock, dispatcher, mail.MemoryMailer())
    support.register(container, specs)
    with TestClient(create_app(container)) as client:
        yield World(container, dispatcher, clock, fleet, client, specs)
    container.close()


def beat(key: str, phase: str = "installing KB3135998") -> dict[str, Any]:
    return {"key": key, "state": "running", "started_at": "2026-11-10T09:00:01Z", "finished_at": None,
            "updates": [], "result_code": 1, "hresult": 0, "reboot_required": False, "excluded": [],
            "remaining": [], "search_warnings": [], "skipped": [], "phase": phase}


def final(key: str) -> dict[str, Any]:
    return {"key": key, "state": "finished", "started_at": "2026-11-10T09:00:01Z",
            "finished_at": "2026-11-10T09:40:09Z", "updates": [], "result_code": 2, "hresult": 0,
            "reboot_required": False, "excluded": [], "search_result_code": 2}


def start(world: World, n: int = 0) -> tuple[str, str, str]:
    """Queue server `n` and step it until its first cycle is invoked: (execution id, cycle key, report token)."""
    (answer,) = world.container.service.execute_package(
        "OSD", [world.specs[n].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "test")
    assert answer.execution_id
    for _ in range(50):
        if world.fleet.runs:
            break
        while world.dispatcher.steps:
            world.container.engine.advance(world.dispatcher.steps.popleft())
        world.clock.advance(1)
        world.container.engine.tick()
    (_, key, run), = world.fleet.runs
    assert run.report_token is not None and run.heartbeat_seconds == 0 and run.deadline is not None
    return answer.execution_id, key, run.report_token.get_secret_value()


def test_a_heartbeat_is_accepted_apart_and_the_final_report_still_recorded(world: World) -> None:
    execution_id, key, token = start(world)
    for n in (1, 2, 2):  # a retried heartbeat (the same n) is taken again: it only says "alive"
        answer = world.post(execution_id, beat(key), token, f"{key}:heartbeat:{n}")
        assert answer.status_code == 202, answer.text
    assert answer.json()["heartbeats"] == 3 and answer.json()["key"] == key
    with world.container.sessions() as session:
        assert session.scalars(sa.select(models.CycleReportRecord)).all() == []  # not the cycle's report
        (row,) = session.scalars(sa.select(CycleHeartbeat)).all()
        assert (row.beats, row.sequence, row.phase) == (3, 2, "installing KB3135998")
    seen = world.container.fleet.cycle_result(world.specs[0].name, key)
    assert isinstance(seen, HeartbeatReport) and seen.beats == 3 and seen.heard_at == world.clock()
    bulk = world.container.fleet.cycle_results([(world.specs[0].name, key)])  # type: ignore[attr-defined]
    assert isinstance(bulk[(world.specs[0].name, key)], HeartbeatReport)
    done = world.post(execution_id, final(key), token, key)
    assert done.status_code == 201, done.text  # not 409: the heartbeats were not "a different report"
    late = world.post(execution_id, beat(key), token, f"{key}:heartbeat:3")
    assert late.status_code == 409 and "send no more heartbeats" in late.json()["message"]
    wrong = world.post(execution_id, beat(key), token, f"{execution_id}:package:9:heartbeat:1")
    assert wrong.status_code == 400 and "Idempotency-Key" in wrong.json()["message"]


def test_heartbeats_extend_the_cycle_only_while_they_arrive(world: World) -> None:
    execution_id, key, token = start(world)
    with world.container.sessions() as session:
        invoked = session.scalar(sa.select(models.Execution.invoked_at).where(models.Execution.id == execution_id))
    assert invoked is not None and invoked <= world.clock()
    sent: list[Any] = []

    def keep_beating() -> None:  # every minute of fake time, until 25 minutes after the invocation
        elapsed = world.clock() - invoked
        if elapsed <= timedelta(minutes=25) and elapsed >= timedelta(minutes=len(sent) + 1):
            sent.append(world.clock())
            assert world.post(execution_id, beat(key), token, f"{key}:heartbeat:{len(sent)}").status_code == 202

    support.drive(world.container, world.dispatcher, world.clock, on_tick=keep_beating, step_seconds=10.0,
                  max_rounds=5000)
    detail = world.container.service.detail("OSD", world.specs[0].name, execution_id)
    assert detail.status == "failed" and len(sent) >= 24  # one a minute for 25 minutes
    ran = sent[-1] + timedelta(minutes=2) - invoked  # the last heartbeat + the grace
    assert detail.failure_reason == ("the update package's heartbeats stopped during cycle 1: none for 2m 0s after "
                                     f"10m 0s had passed (it ran {int(ran.total_seconds()) // 60}m "
                                     f"{int(ran.total_seconds()) % 60}s)")
    with world.container.sessions() as session:
        ended = session.scalar(sa.select(models.Execution.ended_at).where(models.Execution.id == execution_id))
    assert ended is not None and ran <= ended - invoked < ran + timedelta(seconds=20)  # not one poll more


def test_without_heartbeats_the_package_timeout_holds(world: World) -> None:
    execution_id, key, token = start(world, 1)
    invoked = world.clock()
    support.drive(world.container, world.dispatcher, world.clock, step_seconds=5.0, max_rounds=5000)
    detail = world.container.service.detail("OSD", world.specs[1].name, execution_id)
    assert detail.failure_reason == "the update package did not finish cycle 1 within 10m 0s"
    with world.container.sessions() as session:
        ended = session.scalar(sa.select(models.Execution.ended_at).where(models.Execution.id == execution_id))
    assert ended is not None and ended - invoked < timedelta(minutes=11)
