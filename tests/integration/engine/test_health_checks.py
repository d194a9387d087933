"""Health checks (issue 14 part 2) on real PostgreSQL with the simulated fleet and a fake clock: a server whose
service does not come back after patching is caught and left in maintenance (onHealthFailure fail), HTTP checks
against a real HTTP server on loopback, continue completes with a warning, and a crash around a check records one
result per attempt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.domain import health_points
from orchestrator.persistence import event_models, health_models, models
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from tests.health_app import HealthApp
from workers import mail


@pytest.fixture
def app() -> Iterator[HealthApp]:
    served = HealthApp()
    yield served
    served.close()


def world(pg: str, scenarios: dict[Scenario, int], hooks: Any = None):  # type: ignore[no-untyped-def]
    clock = support.FakeClock()
    specs = build_fleet_specs(5, sum(scenarios.values()), scenarios=scenarios)
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=20, package_seconds=5), seed=5, clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    mailer = mail.MemoryMailer()
    from orchestrator import bootstrap
    container = bootstrap.build(support.test_settings(pg), dispatcher=dispatcher, fleet=fleet, mailer=mailer,
                                clock=clock, hooks=hooks)
    support.register(container, specs)
    return container, fleet, dispatcher, clock, mailer, specs


def run(container, dispatcher, clock, parameters: dict[str, Any]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    answers = container.service.execute_package_on_groups(
        "OSD", ["va1-0001"], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=parameters), "test")
    support.drive(container, dispatcher, clock)
    return {a.server: a.execution_id for a in answers}


def test_a_service_that_does_not_come_back_is_caught_and_maintenance_stays_on(pg: str, app: HealthApp) -> None:
    container, fleet, dispatcher, clock, mailer, specs = world(pg, {Scenario.SERVICE_DOWN: 1, Scenario.NORMAL: 1})
    try:
        ids = run(container, dispatcher, clock, {"healthChecks": [
            {"name": "iis", "kind": "service", "service": "W3SVC", "retries": 1, "retryDelaySeconds": 5},
            {"name": "web", "kind": "http", "url": app.url, "bodyRegex": "ok", "retries": 0},
        ]})
        down, normal = specs[0].name, specs[1].name
        bad = container.service.detail("OSD", down, ids[down])
        assert bad.status == "failed" and bad.state == "failed"
        assert bad.failure_reason == (f"health check iis (exit code 1: service W3SVC is Stopped (it did not start "
                                      f"after the reboot)) failed after the last cycle ({bad.cycles}); "
                                      f"{health_points.HEALTH_HOLD}")
        assert fleet.status(down).in_maintenance  # left on by policy
        checks = [(c.phase, c.name, c.attempt, c.status) for c in bad.health_checks]
        assert checks == [("baseline", "iis", 1, "ok"), ("baseline", "web", 1, "ok"), ("final", "iis", 1, "retrying"),
                          ("final", "web", 1, "ok"), ("final", "iis", 2, "failed")]
        good = container.service.detail("OSD", normal, ids[normal])
        assert good.status == "completed" and not fleet.status(normal).in_maintenance
        assert {c.status for c in good.health_checks} == {"ok"} and len(good.health_checks) == 4
        assert app.hits == 4  # the HTTP check ran from the orchestrator: two servers, baseline and final
        with container.sessions() as session:
            events = session.execute(sa.select(event_models.Event.kind, event_models.Event.payload)
                                     .where(event_models.Event.execution_id == ids[down])
                                     .order_by(event_models.Event.id)).all()
        failed = [p for k, p in events if k == "health_check.failed"]
        assert len(failed) == 1 and failed[0]["check"] == "iis" and failed[0]["phase"] == "final"
        assert "server.left_in_maintenance" in [k for k, _ in events]
        end = next(m for m in mailer.sent if m["X-Patchaas-Execution"] == ids[down] and m["X-Patchaas-Kind"] == "end")
        assert "Maintenance mode was left ON on purpose" in end.get_content()
    finally:
        container.close()


def test_http_failure_under_continue_completes_with_a_warning(pg: str, app: HealthApp) -> None:
    container, fleet, dispatcher, clock, _mailer, specs = world(pg, {Scenario.NORMAL: 1})
    try:
        app.status, app.body = 200, "status: degraded"  # the body regex fails from the baseline on
        server = specs[0].name
        ids = run(container, dispatcher, clock, {"onHealthFailure": "continue", "healthChecks": [
            {"name": "web", "kind": "http", "url": app.url, "bodyRegex": "status: ok", "retries": 0}]})
        detail = container.service.detail("OSD", server, ids[server])
        assert detail.status == "completed" and not fleet.status(server).in_maintenance
        assert (detail.failure_reason or "").startswith("warning: web (HTTP 200, but the body does not match")
        assert "already broken before patching" in (detail.failure_reason or "")
        assert [c.status for c in detail.health_checks] == ["failed", "failed"]
        assert detail.end_message is not None and "warning" in detail.end_message
    finally:
        container.close()


class CrashOnce:
    """Raises once at `after_effect` of a health check step: the worker "died" between the checks and the commit."""

    def __init__(self) -> None:
        self.fired = 0

    def reached(self, point: str, execution_id: str, step: str) -> None:
        if point == "after_effect" and step == "checking_health" and not self.fired:
            self.fired += 1
            raise RuntimeError("crash between the checks and the commit")


def test_a_crash_around_a_check_reruns_it_but_records_one_result_per_attempt(pg: str, app: HealthApp) -> None:
    crash = CrashOnce()
    container, _fleet, dispatcher, clock, _mailer, specs = world(pg, {Scenario.NORMAL: 1}, hooks=crash)
    try:
        server = specs[0].name
        ids = run(container, dispatcher, clock, {"healthChecks": [
            {"name": "web", "kind": "http", "url": app.url, "retries": 0}]})
        assert crash.fired == 1
        detail = container.service.detail("OSD", server, ids[server])
        assert detail.status == "completed"
        assert [(c.phase, c.attempt, c.status) for c in detail.health_checks] == [("baseline", 1, "ok"),
                                                                                  ("final", 1, "ok")]
        assert app.hits == 3  # the interrupted baseline attempt ran again
        with container.sessions() as session:
            rows = session.scalar(sa.select(sa.func.count()).select_from(health_models.HealthCheckResult))
            entered = session.scalar(sa.select(sa.func.count()).select_from(models.ExecutionEvent).where(
                models.ExecutionEvent.to_state == "entering_maintenance"))
        assert rows == 2 and entered == 1  # one row per attempt, one transition out of the baseline
    finally:
        container.close()
