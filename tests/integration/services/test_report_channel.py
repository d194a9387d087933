"""The report channel on real PostgreSQL: the endpoint's answers (201, 200 replay, 400, 401, 404, 409), one
record per cycle under concurrent posts, and the engine reading the recorded report before the fleet's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from orchestrator.bootstrap import Container
from orchestrator.entrypoints.rest import create_app
from orchestrator.entrypoints.rest.reports import ReportAnswer
from orchestrator.persistence import models
from orchestrator.services import reports
from orchestrator.services.errors import Conflict
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.fleet import CycleReport, PackageRun
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, SimServerSpec, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

BASE_URL = "http://patchaas.test"


class CapturingFleet(simulated.SimulatedFleet):
    """The simulated fleet, keeping every package run it receives (with the channel's URL and token)."""

    runs: list[tuple[str, str, PackageRun]]

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        self.runs.append((server, key, run))
        super().invoke_package(server, key, run)


@dataclass
class World:
    container: Container
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    fleet: CapturingFleet
    client: TestClient
    specs: list[SimServerSpec]
    posted: list[str] = field(default_factory=list)

    def execute(self, n: int) -> str:
        (answer,) = self.container.service.execute_package(
            "OSD", [self.specs[n].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "test"
        )
        assert answer.is_queued and answer.execution_id
        return answer.execution_id

    def drive(self, **kwargs: Any) -> None:
        support.drive(self.container, self.dispatcher, self.clock, **kwargs)

    def post(self, execution_id: str, body: Any, token: str | None, raw: bytes | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        path = reports.REPORTS_PATH.format(execution_id=execution_id)
        if raw is not None:
            return self.client.post(path, content=raw, headers={**headers, "Content-Type": "application/json"})
        return self.client.post(path, json=body, headers=headers)


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    clock = support.FakeClock()
    specs = build_fleet_specs(11, 3, scenarios={Scenario.NORMAL: 3})
    fleet = CapturingFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=11,
                                  clock=clock.seconds)
    fleet.runs = []
    dispatcher = support.ListDispatcher()
    settings = support.test_settings(pg, report_base_url=BASE_URL)
    container = support.make_container(settings, fleet, clock, dispatcher, mail.MemoryMailer())
    support.register(container, specs)
    with TestClient(create_app(container)) as client:
        yield World(container, dispatcher, clock, fleet, client, specs)
    container.close()


def _report(key: str, *updates: dict[str, Any], reboot: bool = False) -> dict[str, Any]:
    return {
        "key": key, "state": "finished", "started_at": "2026-11-10T09:00:01Z", "finished_at": "2026-11-10T09:00:09Z",
        "updates": list(updates), "result_code": 2, "hresult": 0, "reboot_required": reboot, "excluded": [],
    }


UPDATE = {"kb": "KB3135998", "title": "Security Update for .NET (KB3135998)", "result_code": 2, "hresult": 0,
          "reboot_required": False}


def _token(world: World, execution_id: str) -> str:
    """A report token of `execution_id`, minted as the engine mints them when it invokes a cycle."""
    return reports.ReportChannel(world.container.sessions, world.clock).issue(execution_id, f"{execution_id}:package:1")


def _rows(world: World, execution_id: str) -> list[models.CycleReportRecord]:
    with world.container.sessions() as session:
        return list(session.scalars(sa.select(models.CycleReportRecord).where(
            models.CycleReportRecord.execution_id == execution_id).order_by(models.CycleReportRecord.cycle)))


def _message(answer: Any) -> str:
    body = answer.json()
    assert set(body) == {"message"}, body
    return str(body["message"])


def test_the_engine_hands_the_package_the_channel_and_reads_the_recorded_report_first(world: World) -> None:
    execution_id = world.execute(0)

    def post_what_the_server_says() -> None:
        """After each step: a new package run posts a report that differs from the fleet's own record (no
        updates, so the run ends after cycle 1) — the records must follow the channel, not the fleet."""
        for _server, key, run in world.fleet.runs:
            if key in world.posted:
                continue
            assert run.report_url == f"{BASE_URL}/v2/patchaas/executions/{execution_id}/reports"
            assert run.report_token is not None
            answer = world.post(execution_id, _report(key), run.report_token.get_secret_value())
            assert answer.status_code == 201, answer.text
            assert answer.json()["recorded"] is True and answer.json()["cycle"] == 1
            world.posted.append(key)

    world.drive(on_step=post_what_the_server_says)
    key = f"{execution_id}:package:1"
    assert world.posted == [key]
    fleets_view = world.fleet.cycle_result(world.specs[0].name, key)
    assert fleets_view is not None and fleets_view.updates  # the fleet did find updates...
    detail = world.container.service.detail("OSD", world.specs[0].name, execution_id)
    assert detail.status == "completed" and detail.cycles == 1 and detail.patches == []  # ...the channel said none
    (row,) = _rows(world, execution_id)
    assert row.cycle_key == key and CycleReport.model_validate(row.body) == CycleReport.model_validate(_report(key))
    with world.container.sessions() as session:
        (init,) = session.scalars(sa.select(models.Initiation).where(models.Initiation.execution_id == execution_id))
        digests = session.scalars(sa.select(models.ReportToken.token_hash).where(
            models.ReportToken.execution_id == execution_id)).all()
    assert init.updates_found == 0 and init.result_code == 2
    token = world.fleet.runs[0][2].report_token
    assert token is not None and token.get_secret_value() not in digests and len(digests) == 1  # only its hash
    assert world.container.fleet.from_channel >= 1  # type: ignore[attr-defined]


def test_without_a_report_the_engine_polls_the_fleet(world: World) -> None:
    execution_id = world.execute(1)
    world.drive()
    detail = world.container.service.detail("OSD", world.specs[1].name, execution_id)
    assert detail.status == "completed" and detail.patches
    assert _rows(world, execution_id) == []
    assert world.container.fleet.from_fleet >= 1  # type: ignore[attr-defined]
    assert all(run.report_token is not None for _, _, run in world.fleet.runs)


def test_the_endpoints_answers(world: World) -> None:
    execution_id = world.execute(0)
    other_id = world.execute(1)
    token, other_token = _token(world, execution_id), _token(world, other_id)
    key = f"{execution_id}:package:1"
    body = _report(key, UPDATE)

    answer = world.post(execution_id, body, None)
    assert answer.status_code == 401 and "Bearer" in _message(answer)
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert world.post(execution_id, body, "not-a-token").status_code == 401
    answer = world.post(execution_id, body, other_token)  # another execution's token
    assert answer.status_code == 401 and execution_id in _message(answer)
    answer = world.post("VA1-000001", body, token)
    assert answer.status_code == 404 and _message(answer) == "execution VA1-000001 not found"
    answer = world.post("VA1-12", body, token)
    assert answer.status_code == 400 and "execution id" in _message(answer)

    for bad, rule in [
        (b"{", "not valid JSON"),
        (b"", "needs a JSON body"),
        (json.dumps({**body, "updates": [{**UPDATE, "kb": "nope"}]}).encode(), "updates.0.kb"),
        (json.dumps({**body, "hresult": "0x80070643"}).encode(), "hresult"),
        (json.dumps(_report(f"{other_id}:package:1")).encode(), "is not a cycle of execution"),
    ]:
        answer = world.post(execution_id, None, token, raw=bad)
        assert answer.status_code == 400, (bad, answer.text)
        assert rule in _message(answer)
    assert _rows(world, execution_id) == []

    first = world.post(execution_id, body, token)
    assert first.status_code == 201, first.text
    ReportAnswer.model_validate(first.json())  # the documented answer
    assert first.json() | {"receivedAt": None} == {
        "executionId": execution_id, "key": key, "cycle": 1, "recorded": True, "receivedAt": None}
    again = world.post(execution_id, {**body, "updates": [{**UPDATE, "hresult": 0}]}, token)
    assert again.status_code == 200 and again.json() == first.json() | {"recorded": False}
    different = world.post(execution_id, {**body, "reboot_required": True}, token)
    assert different.status_code == 409 and "a different report of" in _message(different)
    assert len(_rows(world, execution_id)) == 1

    world.drive()  # both executions end
    late = world.post(execution_id, _report(f"{execution_id}:package:9"), token)
    assert late.status_code == 409 and "has finished (completed)" in _message(late)
    replay = world.post(execution_id, body, token)  # the package retrying a post whose answer it lost
    assert replay.status_code == 200 and replay.json()["recorded"] is False


def test_concurrent_duplicate_posts_are_recorded_once(world: World) -> None:
    execution_id = world.execute(2)
    token = _token(world, execution_id)
    key = f"{execution_id}:package:1"
    raw = json.dumps(_report(key, UPDATE)).encode()
    channel = reports.ReportChannel(world.container.sessions, lambda: datetime.now(UTC))

    def post(body: bytes) -> object:
        try:
            return channel.record(execution_id, f"Bearer {token}", body)
        except Conflict as exc:
            return exc

    results = support.race(*[lambda: post(raw) for _ in range(8)])
    created = [r for r in results if isinstance(r, reports.Recorded) and r.created]
    replays = [r for r in results if isinstance(r, reports.Recorded) and not r.created]
    assert len(created) == 1 and len(replays) == 7, results
    assert len(_rows(world, execution_id)) == 1

    key2 = f"{execution_id}:package:2"
    bodies = [json.dumps(_report(key2, {**UPDATE, "result_code": code})).encode() for code in (2, 3, 4, 2, 3, 4)]
    results = support.race(*[lambda b=b: post(b) for b in bodies])  # type: ignore[misc]
    winners = [r for r in results if isinstance(r, reports.Recorded) and r.created]
    assert len(winners) == 1
    (row,) = [r for r in _rows(world, execution_id) if r.cycle_key == key2]
    code = row.body["updates"][0]["result_code"]
    for body, result in zip(bodies, results, strict=True):  # same body: a replay; another body: a conflict
        same = json.loads(body)["updates"][0]["result_code"] == code
        assert isinstance(result, reports.Recorded) if same else isinstance(result, Conflict), (body, result)


def test_a_report_wakes_the_waiting_execution_and_a_failed_wake_loses_nothing(world: World) -> None:
    execution_id = world.execute(0)
    woken: list[str] = []

    def state() -> models.Execution:
        with world.container.sessions() as session:
            row = session.get(models.Execution, execution_id)
            assert row is not None
            return row

    while world.dispatcher.steps and state().state != "awaiting_result":  # up to cycle 1's wait for its result
        world.container.engine.advance(world.dispatcher.steps.popleft())
    assert state().state == "awaiting_result"
    later = world.clock() + timedelta(seconds=30)  # as after a poll that found the cycle still running
    with world.container.sessions.begin() as session:
        session.execute(sa.update(models.Execution).where(models.Execution.id == execution_id).values(
            next_run_at=later))
    token = _token(world, execution_id)

    def broken(execution: str) -> None:
        woken.append(execution)
        raise ConnectionError("broker down")

    channel = reports.ReportChannel(world.container.sessions, world.clock, broken)
    done = channel.record(execution_id, f"Bearer {token}", json.dumps(_report(f"{execution_id}:package:1")).encode())
    assert done.created and woken == [execution_id]
    assert state().next_run_at == world.clock()  # due now: the tick takes it anyway
    replay = channel.record(execution_id, f"Bearer {token}", json.dumps(_report(f"{execution_id}:package:1")).encode())
    assert not replay.created and woken == [execution_id]  # a replay wakes nothing
