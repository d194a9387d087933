"""Real worker processes patch one server of each Windows behaviour of issue 12 (a reboot pending that the
control plane does not report, an exclusive update, a partial search, a busy installer, a package run that dies,
a cycle longer than the package timeout that lives on heartbeats) through Redis and PostgreSQL; each ends
completed and fully patched on the simulator's record, with the cycle records that say what happened.

Two transports, as tests/e2e/test_fleet_run.py (`PATCHAAS_E2E_FLEET=simulated` or `=clc` runs one): in
process, where the simulated fleet answers heartbeats itself; and over HTTP with the package results hidden, where
the simulated servers post their heartbeats and reports to a `patchaas api` process's report channel."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import sqlalchemy as sa

from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import models
from orchestrator.settings import Settings
from simulation.mailsink import MailSink
from simulation.package_run import DIED
from simulation.specs import WINDOWS_BEHAVIOURS, Scenario, build_fleet_specs
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
WINDOWS_ENV = {  # a package timeout of 4 s: the long cycle runs 6 s on heartbeats every second
    "PATCHAAS_PACKAGE_TIMEOUT_SECONDS": "4",
    "PATCHAAS_HEARTBEAT_SECONDS": "1",
    "PATCHAAS_HEARTBEAT_GRACE_SECONDS": "3",
    "PATCHAAS_BUSY_BACKOFF_SECONDS": "0.3",
}


def end_messages(pg: str, execution_id: str) -> list[str]:
    engine = sa.create_engine(pg)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(models.Initiation.end_message).where(
                models.Initiation.execution_id == execution_id).order_by(models.Initiation.cycle)).scalars())
    finally:
        engine.dispose()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_real_workers_handle_how_windows_update_behaves(
    pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster, transport: str
) -> None:
    specs = build_fleet_specs(30, 7, scenarios={**{s: 1 for s in WINDOWS_BEHAVIOURS}, Scenario.NORMAL: 1})
    fleet = install_fleet(pg, specs)
    cluster.env.update(WINDOWS_ENV)
    simulator = None
    if transport == "clc":
        simulator = start_clc_simulator(cluster, "--hide-package-results", "--seed=30")
        api = start_api(cluster)
        use_clc_fleet(cluster, simulator, PATCHAAS_REPORT_BASE_URL=api, PATCHAAS_LEASE_SECONDS="30",
                      PATCHAAS_CLC_POLL_INTERVAL_SECONDS="0.2", PATCHAAS_CLC_RATE_PER_SECOND="200",
                      PATCHAAS_CLC_RATE_BURST="50")
    cluster.start_worker("w1")
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        answers = patching.execute_package_on_groups("OSD", ["va1-0001"])
        assert len(answers) == 7 and all(a.is_queued for a in answers)
        wait_until(lambda: not active_executions(pg), timeout=45,
                   on_timeout=lambda: f"still active: {active_executions(pg)}\n{cluster.log('w1')[-3000:]}")
        ids = {a.server: a.execution_id for a in answers}
        for spec in specs:
            detail = patching.detail("OSD", spec.name, ids[spec.name])
            assert detail.status == "completed", (spec.scenario, detail.failure_reason)
            assert fleet.installed_kbs(spec.name) == {u.kb for u in spec.updates}, spec.scenario
            assert fleet.offered_kbs(spec.name) == [], spec.scenario
            kinds = Counter(e.kind for e in fleet.effects(spec.name))
            assert kinds["maintenance_on"] == kinds["maintenance_off"] == 1, (spec.scenario, kinds)
            installs = [(e.key, e.kb) for e in fleet.effects(spec.name, "install")]
            assert len(installs) == len(set(installs)), spec.scenario
            reboots = [e.key for e in fleet.effects(spec.name, "reboot")]
            assert len(reboots) == len(set(reboots)), spec.scenario
            messages = end_messages(pg, ids[spec.name])
            match spec.scenario:
                case Scenario.REBOOT_PENDING_INSTALL:
                    assert messages[0].startswith("Update Install Blocked: a reboot is pending (reboot_pending)")
                case Scenario.EXCLUSIVE_UPDATE:
                    assert len([p for p in detail.patches if p.cycle == 1]) == 1
                case Scenario.PARTIAL_SEARCH:
                    assert messages[0].startswith("Update Cycle Failed: the update search failed")
                    assert "the search was partial (result code 3)" in messages[1]
                case Scenario.INSTALLER_BUSY:
                    assert "(installer_busy)" in messages[0] and "(another_run)" in messages[1]
                case Scenario.PACKAGE_DIES:
                    assert messages[0] == f"Update Cycle Failed: {DIED}"
                case Scenario.LONG_CYCLE:
                    first = next(c for c in patching.history("OSD", spec.name)[0].init_messages if c.cycle == 1)
                    assert first.end_time is not None
                    assert (first.end_time - first.start_time).total_seconds() > 4  # past the package timeout
        if simulator is not None:
            reports = simulator_faults(simulator)["reports"]
            assert reports["heartbeats"] > 0 and reports["heartbeats_refused"] == 0, reports
            assert reports["refused"] == reports["failed"] == 0, reports
        assert_one_start_and_one_end_email(mail_sink, ids.values())
    finally:
        patching.close()
