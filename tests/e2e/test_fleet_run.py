"""Real worker processes patch 20 simulated servers through Redis and PostgreSQL: multi-cycle, failing KB,
loop, powered-off and never-returns; each ends where it should with its records and exactly one start
and one end email."""

from __future__ import annotations

from collections import Counter

from orchestrator.api import Patchaas
from orchestrator.mailsink import MailSink
from orchestrator.settings import Settings
from schemas.fleet import PowerState
from tests.e2e.harness import Cluster, active_executions, install_fleet, wait_until
from workers.fleet import simulated
from workers.fleet.simulated import Scenario

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


def test_real_workers_patch_twenty_servers(pg: str, redis_url: str, mail_sink: MailSink, cluster: Cluster) -> None:
    scenarios = {s: 2 for s in EXPECTED} | {Scenario.NORMAL: 6}
    specs = simulated.build_fleet_specs(20, 20, scenarios=scenarios)
    fleet = install_fleet(pg, specs)
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
        wait_until(lambda: len(mail_sink.messages) >= 40, timeout=30,
                   on_timeout=lambda: f"{len(mail_sink.messages)} emails")
        sent = Counter((m["X-Patchaas-Execution"], m["X-Patchaas-Kind"]) for m in mail_sink.messages)
        for execution_id in ids.values():
            assert sent[(execution_id, "start")] == 1 and sent[(execution_id, "end")] == 1, execution_id
    finally:
        patching.close()
