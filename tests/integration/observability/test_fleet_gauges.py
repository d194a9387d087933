"""The fleet-level gauges (orchestrator/services/fleet_gauges.py) on PostgreSQL, against what the services
themselves answer: active executions by state and the emails not sent as `patchaas status` counts them, the
compliance counts as `patchaas compliance` judges each server (a scan that found updates included), a server
left in maintenance by a run whose cleanup stopped, the timer lag of a due execution nobody took; all in one
SQL statement, and served by prometheus-client's collector interface."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.persistence import models
from orchestrator.services import compliance, fleet_gauges, health
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import scrape, support


def test_one_query_says_what_the_services_say(pg: str) -> None:
    clock = support.FakeClock()
    specs = build_fleet_specs(5, 7, scenarios={Scenario.NORMAL: 3, Scenario.BROKEN_KB: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher)
    support.register(container, specs)
    names = [s.name for s in specs]
    service = container.service
    done = service.execute_package("OSD", names[:3], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    scan = service.execute_package("OSD", [names[4]], PackageRequest(packageId=DEFAULT_PACKAGE_ID,
                                                                      parameters={"scanOnly": True}), "t")
    broken = service.execute_package("OSD", [names[3]], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    support.drive(container, dispatcher, clock)
    with container.sessions.begin() as session:  # that run's cleanup could not turn maintenance off
        row = session.get(models.Execution, broken[0].execution_id)
        assert row is not None and row.state == "failed"
        row.failure_reason = "cleanup stopped: maintenance off failed 5 times"
    # a run queued and not taken (the dispatcher holds its id): its timer and its start email wait
    service.execute_package("OSD", [names[5]], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    clock.advance(42)
    now = clock()

    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(container.db_engine, "before_cursor_execute", count)
    gauges = fleet_gauges.measure(container.sessions, now)
    sa.event.remove(container.db_engine, "before_cursor_execute", count)
    assert len(statements) == 1

    overview = health.overview(container.sessions, now)
    assert {k: v for k, v in gauges.active.items() if v} == overview.active == {"requested": 1}
    assert gauges.timers_due == 1 and abs(gauges.timer_lag_seconds - 42) < 1
    assert gauges.outbox_backlog == overview.unsent_emails == 1 and abs(gauges.outbox_oldest_seconds - 42) < 1
    assert gauges.left_in_maintenance == len(overview.left_in_maintenance) == 1
    report = compliance.for_account(service, "OSD")
    assert gauges.compliance == report.counts() == {"compliant": 3, "non_compliant": 2, "unknown": 2}
    assert Counter(s.status for s in report.servers)["non_compliant"] == 2  # the broken KB, the scan with updates
    assert gauges.expired_leases == 0 and len(done) == 3 and scan[0].is_queued

    registry = CollectorRegistry()
    registry.register(fleet_gauges.FleetCollector(container.sessions, clock))
    samples = scrape.parse(generate_latest(registry).decode())
    assert scrape.value(samples, "patchaas_fleet_gauges_up") == 1
    assert scrape.value(samples, "patchaas_active_executions", state="requested") == 1
    assert scrape.value(samples, "patchaas_active_executions", state="awaiting_boot") == 0
    assert scrape.value(samples, "patchaas_servers_compliance", status="unknown") == 2
    assert scrape.value(samples, "patchaas_servers_left_in_maintenance") == 1
    assert scrape.value(samples, "patchaas_outbox_backlog", outbox="email") == 1
    clock.advance(60)
    later = scrape.parse(generate_latest(registry).decode())
    assert abs(scrape.value(later, "patchaas_timer_lag_seconds") - 102) < 1
    container.close()


def test_a_database_that_is_away_is_a_gauge_not_a_failed_scrape() -> None:
    from orchestrator.persistence import db

    sql = db.create_engine_for("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    registry = CollectorRegistry()
    registry.register(fleet_gauges.FleetCollector(db.session_factory(sql), lookback=timedelta(days=1)))
    samples = scrape.parse(generate_latest(registry).decode())
    assert scrape.value(samples, "patchaas_fleet_gauges_up") == 0
    assert "patchaas_active_executions" not in scrape.names(samples)
    sql.dispose()
