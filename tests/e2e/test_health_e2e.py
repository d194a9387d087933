"""Issue 14 parts 1 and 2 with real worker processes (Redis, PostgreSQL, beat): a server still configuring updates
after each reboot is waited out before its next cycle, a server whose service does not come back after patching is
caught by an on-server health check and left in maintenance mode, an HTTP check runs from the workers against a
real server on loopback, and the failure is an event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import event_models, models
from orchestrator.settings import Settings
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from tests.e2e.harness import Cluster, active_executions, assert_one_start_and_one_end_email, install_fleet, wait_until
from tests.health_app import HealthApp


@pytest.fixture
def app() -> Iterator[HealthApp]:
    served = HealthApp()
    yield served
    served.close()


def test_real_workers_settle_reboots_and_catch_a_service_that_does_not_come_back(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster, app: HealthApp
) -> None:
    scenarios = {Scenario.CONFIGURING_UPDATES: 1, Scenario.SERVICE_DOWN: 1}
    specs = build_fleet_specs(14, 2, scenarios=scenarios)
    configuring, down = (s.name for s in specs)
    fleet = install_fleet(pg, specs)
    # demo timings: reboots 1.5 s, then 2 s still configuring updates; settled after 0.3 s idle
    cluster.env.update({"PATCHAAS_SIM_TIMINGS": "demo", "PATCHAAS_REBOOT_TIMEOUT_SECONDS": "10"})
    cluster.start_worker("w1")
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        answers = patching.execute_package_on_groups("OSD", ["va1-0001"], parameters={"healthChecks": [
            {"name": "iis", "kind": "service", "service": "W3SVC", "retries": 1, "retryDelaySeconds": 0.3},
            {"name": "web", "kind": "http", "url": app.url, "bodyRegex": "ok", "retries": 0},
        ]})
        assert all(a.is_queued for a in answers)
        wait_until(lambda: not active_executions(pg), timeout=60,
                   on_timeout=lambda: f"still active: {active_executions(pg)}\n{cluster.log('w1')[-3000:]}")
        ids = {a.server: a.execution_id for a in answers}
        settled = patching.detail("OSD", configuring, ids[configuring])
        assert settled.status == "completed", settled.failure_reason
        assert not fleet.status(configuring).in_maintenance
        caught = patching.detail("OSD", down, ids[down])
        assert caught.status == "failed" and "health check iis" in (caught.failure_reason or "")
        assert fleet.status(down).in_maintenance  # left on by policy (onHealthFailure fail)
        assert [(c.phase, c.name, c.status) for c in caught.health_checks if c.name == "iis"] == [
            ("baseline", "iis", "ok"), ("final", "iis", "retrying"), ("final", "iis", "failed")]
        assert app.hits >= 4  # the HTTP check, from the worker: each server's baseline and final
        engine = sa.create_engine(pg)
        try:
            with engine.connect() as conn:
                notes = conn.execute(sa.select(models.ExecutionEvent.note).where(
                    models.ExecutionEvent.execution_id == ids[configuring],
                    models.ExecutionEvent.to_state == "settling")).scalars().all()
                failures = conn.execute(sa.select(event_models.Event.execution_id).where(
                    event_models.Event.kind == "health_check.failed")).scalars().all()
                rows = conn.execute(sa.text(
                    "SELECT count(*), count(DISTINCT (execution_id, phase, cycle, check_name, attempt)) "
                    "FROM health_checks")).one()
        finally:
            engine.dispose()
        assert any("configuring updates" in n for n in notes), notes
        assert failures == [ids[down]]
        assert rows[0] == rows[1]  # one row per attempt
        assert_one_start_and_one_end_email(mail_sink, ids.values())
    finally:
        patching.close()
