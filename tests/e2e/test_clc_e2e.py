"""Over HTTP, faults on: a real `patchaas simulator` process (10% 5xx answers, 200 ms latency, a few dropped
connections, tokens expiring every few seconds), two real workers and beat on the `clc` driver. Fifty
servers all complete, and each execution's records match what the simulator's fleet, shared through
PostgreSQL, says was done to the server: every install, reboot and maintenance change exactly once.

The report channel is on (a `patchaas api` process), with faults of its own: 10% of the servers' reports are
never posted (the engine polls those results) and 10% are posted twice (recorded once). Every recorded
report is exactly the package run the simulator's fleet keeps."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import models
from orchestrator.settings import Settings
from schemas.fleet import CycleReport
from simulation.mailsink import MailSink
from simulation.records import EffectKind
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

COMPLETING = {Scenario.FLAKY_KB: 5, Scenario.PENDING_REBOOT: 5, Scenario.POWERED_OFF: 5, Scenario.UP_TO_DATE: 3}
DRIVER = {
    "PATCHAAS_LEASE_SECONDS": "40",  # above the driver's worst case for one call (10 + 15 + 5 s)
    "PATCHAAS_CLC_POLL_INTERVAL_SECONDS": "0.2",
    "PATCHAAS_CLC_OPERATION_TIMEOUT_SECONDS": "10",
    "PATCHAAS_CLC_RETRY_ATTEMPTS": "8",
    "PATCHAAS_CLC_RETRY_INITIAL_SECONDS": "0.05",
    "PATCHAAS_CLC_RETRY_MAX_BACKOFF_SECONDS": "1",
    "PATCHAAS_CLC_RETRY_DEADLINE_SECONDS": "15",
    "PATCHAAS_CLC_READ_TIMEOUT_SECONDS": "5",
    "PATCHAAS_CLC_RATE_PER_SECOND": "50",
}


def test_fifty_servers_complete_over_http_despite_faults(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster
) -> None:
    specs = build_fleet_specs(50, 50, scenarios=COMPLETING)
    fleet = install_fleet(pg, specs)
    url = start_clc_simulator(
        cluster, "--fault-5xx-rate=0.1", "--latency-ms=200", "--drop-rate=0.01", "--token-ttl=5", "--seed=50",
        "--report-drop-rate=0.1", "--report-duplicate-rate=0.1",
    )
    use_clc_fleet(cluster, url, PATCHAAS_REPORT_BASE_URL=start_api(cluster), **DRIVER)
    cluster.start_worker("w1", concurrency=4)
    cluster.start_worker("w2", concurrency=4)
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        answers = patching.execute_package_on_groups("OSD", ["va1-0001"])
        assert len(answers) == 50 and all(a.is_queued for a in answers)
        wait_until(
            lambda: not active_executions(pg),
            timeout=110,
            interval=0.5,
            on_timeout=lambda: f"still active: {active_executions(pg)}\n{cluster.log('w1')[-3000:]}",
        )
        ids = {a.server: str(a.execution_id) for a in answers}
        for spec in specs:
            execution_id = ids[spec.name]
            detail = patching.detail("OSD", spec.name, execution_id)
            assert detail.status == "completed", (spec.scenario, detail.failure_reason)
            status = fleet.status(spec.name)
            assert not status.in_maintenance and status.power_state is spec.power_state
            kinds = Counter(e.kind for e in fleet.effects(spec.name))
            assert kinds[EffectKind.MAINTENANCE_ON] == 1 and kinds[EffectKind.MAINTENANCE_OFF] == 1, (
                spec.scenario,
                kinds,
            )
            # every patch record is one install the fleet received, under that cycle's key, and vice versa
            installs = [(e.key, e.kb) for e in fleet.effects(spec.name, "install")]
            records = [(f"{execution_id}:package:{p.cycle}", p.kb) for p in detail.patches]
            assert sorted(installs) == sorted(records) and len(set(installs)) == len(installs)
            assert {p.kb for p in detail.patches if p.status == "completed"} == fleet.installed_kbs(spec.name)
            assert fleet.installed_kbs(spec.name) == {u.kb for u in spec.updates}
            # one reboot per cycle that asked for one, plus the one pending before the first cycle
            (summary,) = [s for s in patching.history("OSD", spec.name) if s.execution_id == execution_id]
            asked = sum(m.reboot_required for m in summary.init_messages)
            asked += spec.scenario is Scenario.PENDING_REBOOT
            reboots = [e.key for e in fleet.effects(spec.name, "reboot")]
            assert len(reboots) == len(set(reboots)) == asked, (spec.scenario, reboots)
            if spec.scenario is Scenario.POWERED_OFF:
                assert kinds[EffectKind.POWER_ON] == 1 and kinds[EffectKind.POWER_OFF] == 1
        faults = simulator_faults(url)
        assert sum(faults["errors"].values()) > 0 and sum(faults["drops"].values()) > 0, faults
        engine = sa.create_engine(pg)
        with engine.connect() as conn:
            records = conn.execute(sa.select(models.CycleReportRecord, models.Execution.server_name).join(
                models.Execution, models.Execution.id == models.CycleReportRecord.execution_id)).all()
            cycles = conn.execute(sa.select(sa.func.count()).select_from(models.Initiation)).scalar_one()
        engine.dispose()
        for record in records:  # the server's own report, recorded once per cycle
            assert CycleReport.model_validate(record.body) == fleet.cycle_result(record.server_name, record.cycle_key)
        assert len({(r.execution_id, r.cycle_key) for r in records}) == len(records)
        reports = faults["reports"]
        assert reports["posted"] == len(records) and reports["dropped"] > 0 and reports["duplicated"] > 0, reports
        assert len(records) < cycles  # the dropped reports' cycles were read by polling the fleet
        assert faults["expiredTokens"] > 0, faults  # the workers logged in again
        assert_one_start_and_one_end_email(mail_sink, ids.values())
    finally:
        patching.close()
