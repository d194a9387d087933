"""Real worker processes patch 20 simulated servers through Redis and PostgreSQL: multi-cycle, failing KB,
loop, powered-off and never-returns; each ends where it should with its records and exactly one start
and one end email.

Two transports, both run by default (`PATCHAAS_E2E_FLEET=simulated` or `=clc` runs one): `simulated`, the
workers calling the fleet in process; `clc`, over HTTP — a `patchaas simulator` process, the `clc` driver,
and a `patchaas api` process whose report channel the simulated servers post each cycle's report to. There
the simulator hides every package run's outcome (`--hide-package-results`), so the run can only learn its
results from the reports: the records must be the reports, and a report posted twice is recorded once."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import sqlalchemy as sa

from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import models
from orchestrator.settings import Settings
from schemas.fleet import CycleReport, PowerState
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from tests.e2e.harness import (
    Cluster,
    active_executions,
    assert_one_start_and_one_end_email,
    install_fleet,
    simulator_faults,
    start_api,
    start_clc_simulator,
    use_clc_fleet,
    wait_until,
)

TRANSPORTS = [t for t in ("simulated", "clc") if os.environ.get("PATCHAAS_E2E_FLEET", t) == t]

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


def _over_http(cluster: Cluster) -> str:
    """The fleet behind `patchaas simulator`, the workers on the clc driver, the report channel offered at a
    `patchaas api` process; the simulator's URL."""
    url = start_clc_simulator(cluster, "--hide-package-results", "--report-duplicate-rate=0.3", "--seed=20")
    api = start_api(cluster)
    use_clc_fleet(cluster, url, PATCHAAS_REPORT_BASE_URL=api, PATCHAAS_LEASE_SECONDS="30",
                  PATCHAAS_CLC_POLL_INTERVAL_SECONDS="0.2", PATCHAAS_CLC_RATE_PER_SECOND="200",
                  PATCHAAS_CLC_RATE_BURST="50")
    return url


def _check_reports_are_the_records(pg: str, ids: dict[str, str]) -> int:
    """Every cycle of every execution has exactly one recorded report, and its initiation and patch rows are
    that report's; the number of reports."""
    engine = sa.create_engine(pg)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(models.CycleReportRecord).where(
                models.CycleReportRecord.execution_id.in_(list(ids.values())))).all()
            inits = conn.execute(sa.select(models.Initiation).where(
                models.Initiation.execution_id.in_(list(ids.values())))).all()
            patches = conn.execute(sa.select(models.Patch).where(
                models.Patch.execution_id.in_(list(ids.values())))).all()
    finally:
        engine.dispose()
    reports = {(r.execution_id, r.cycle): CycleReport.model_validate(r.body) for r in rows}
    assert len(reports) == len(rows)  # one record per (execution, cycle)
    assert set(reports) == {(i.execution_id, i.cycle) for i in inits}
    for init in inits:
        report = reports[(init.execution_id, init.cycle)]
        assert report.key == f"{init.execution_id}:package:{init.cycle}"
        assert (init.started_at, init.ended_at) == (report.started_at, report.finished_at)
        assert (init.updates_found, init.result_code, init.hresult, init.reboot_required) == (
            len(report.updates), int(report.result_code), report.hresult, report.reboot_required)
        recorded = sorted((p.kb, p.title, p.result_code, p.hresult, p.reboot_required)
                          for p in patches if (p.execution_id, p.cycle) == (init.execution_id, init.cycle))
        assert recorded == sorted((u.kb, u.title, int(u.result_code), u.hresult, u.reboot_required)
                                  for u in report.updates)
    return len(rows)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_real_workers_patch_twenty_servers(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster, transport: str
) -> None:
    scenarios = {s: 2 for s in EXPECTED} | {Scenario.NORMAL: 6}
    specs = build_fleet_specs(20, 20, scenarios=scenarios)
    fleet = install_fleet(pg, specs)
    simulator = _over_http(cluster) if transport == "clc" else None
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        answers = patching.execute_package_on_groups("OSD", ["va1-0001"])
        assert len(answers) == 20 and all(a.is_queued for a in answers)
        wait_until(lambda: not active_executions(pg), timeout=150,
                   on_timeout=lambda: f"still active: {active_executions(pg)}\n{cluster.log('w1')[-3000:]}")
        ids = {a.server: a.execution_id for a in answers}
        for spec in specs:
            detail = patching.detail("OSD", spec.name, ids[spec.name])
            assert detail.status == EXPECTED[spec.scenario], (spec.scenario, detail.failure_reason)
            status = fleet.status(spec.name)
            assert not status.in_maintenance
            kinds = Counter(e.kind for e in fleet.effects(spec.name))
            assert kinds["maintenance_on"] == 1 and kinds["maintenance_off"] == 1, (spec.scenario, kinds)
            installs = [(e.key, e.kb) for e in fleet.effects(spec.name, "install")]
            assert len(installs) == len(set(installs))
            reboots = [e.key for e in fleet.effects(spec.name, "reboot")]
            assert len(reboots) == len(set(reboots))
            if spec.scenario is Scenario.POWERED_OFF:
                assert status.power_state is PowerState.STOPPED
                assert kinds["power_on"] == 1 and kinds["power_off"] == 1
            if spec.scenario is Scenario.NEVER_RETURNS:
                assert "did not come back" in (detail.failure_reason or "")
            if spec.scenario in (Scenario.BROKEN_KB, Scenario.ROLLBACK_KB):
                assert detail.quarantined
            completed_kbs = {p.kb for p in detail.patches if p.status == "completed"}
            if detail.status == "completed":
                assert completed_kbs <= fleet.installed_kbs(spec.name)
        if simulator is not None:
            recorded = _check_reports_are_the_records(pg, ids)
            reports = simulator_faults(simulator)["reports"]
            assert reports["posted"] == recorded and reports["refused"] == reports["failed"] == 0, reports
            assert reports["duplicated"] > 0 and reports["replayed"] == reports["duplicated"], reports
        assert_one_start_and_one_end_email(mail_sink, ids.values())
    finally:
        patching.close()
