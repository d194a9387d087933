"""Rate-controlled rollouts with real worker and beat processes (Redis, PostgreSQL, SMTP): the beat's
`patchaas.rollouts` gate releases held executions; 50 servers at concurrency 5 never have more than 5
running (sampled from the database while it runs, and from the simulator's own record afterwards), and
a tripped error threshold skips the rest while the running ones finish."""

from __future__ import annotations

import time
from collections import Counter

import sqlalchemy as sa

from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import models
from orchestrator.settings import Settings
from simulation import fleet as simulated
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from tests.e2e.harness import Cluster, active_executions, install_fleet, wait_until


def _running(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(models.Execution).where(
                models.Execution.rollout_id.is_not(None), models.Execution.ended_at.is_(None),
                models.Execution.next_run_at.is_not(None))).scalar_one())


def _most_in_maintenance(fleet: simulated.SimulatedFleet) -> int:
    now = most = 0
    for effect in fleet.effects():
        now += {"maintenance_on": 1, "maintenance_off": -1}.get(effect.kind.value, 0)
        most = max(most, now)
    return most


def _run(pg: str, cluster: Cluster, patching: Patchaas, timeout: float, **rate: object) -> tuple[list[int], list]:
    answers = patching.execute_package_on_groups("OSD", ["va1-0001"], **rate)  # type: ignore[arg-type]
    assert all(a.is_queued for a in answers)
    engine = sa.create_engine(pg)
    samples: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while active_executions(pg):
            samples.append(_running(engine))
            assert time.monotonic() < deadline, f"still active: {active_executions(pg)}\n{cluster.log('w1')[-3000:]}"
            time.sleep(0.05)
    finally:
        engine.dispose()
    return samples, answers


def test_fifty_servers_five_at_a_time_with_real_workers(pg: str, redis_url: str, mail_sink: MailSink,
                                                        cluster: Cluster) -> None:
    specs = build_fleet_specs(30, 50, scenarios={Scenario.NORMAL: 50})
    fleet = install_fleet(pg, specs)
    cluster.start_worker("w1", concurrency=3)
    cluster.start_worker("w2", concurrency=3)
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        samples, answers = _run(pg, cluster, patching, 240, max_concurrency=5)
        assert len(answers) == 50
        assert samples and max(samples) <= 5, max(samples)
        assert _most_in_maintenance(fleet) == 5  # the simulator saw five at once, never six
        ids = {a.server: a.execution_id for a in answers}
        for spec in specs:
            detail = patching.detail("OSD", spec.name, ids[spec.name])
            assert detail.status == "completed", (spec.name, detail.failure_reason)
            assert not fleet.status(spec.name).in_maintenance
        wait_until(lambda: len({m["Message-ID"] for m in mail_sink.messages}) >= 100, timeout=30,
                   on_timeout=lambda: f"{len(mail_sink.messages)} emails")
        sent = Counter((m["X-Patchaas-Execution"], m["X-Patchaas-Kind"]) for m in mail_sink.messages)
        assert all(sent[(eid, "start")] >= 1 and sent[(eid, "end")] >= 1 for eid in ids.values())
        rollout_id = patching.service.rollout_of("OSD", answers[0].execution_id or "") or 0
        wait_until(lambda: patching.rollout("OSD", rollout_id).ended_at is not None, timeout=15)  # the next gate pass
        rollout = patching.rollout("OSD", rollout_id)
        assert rollout.state == "completed" and rollout.counts["completed"] == 50
    finally:
        patching.close()


def test_a_tripped_error_threshold_with_real_workers(pg: str, redis_url: str, mail_sink: MailSink,
                                                     cluster: Cluster) -> None:
    specs = build_fleet_specs(31, 20, scenarios={Scenario.BROKEN_KB: 3})
    fleet = install_fleet(pg, specs)
    cluster.start_worker("w1", concurrency=3)
    cluster.start_beat()
    patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
    try:
        samples, answers = _run(pg, cluster, patching, 180, max_concurrency=4, max_errors=2)
        assert max(samples) <= 4
        engine = sa.create_engine(pg)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(models.Execution.server_name, models.Execution.state,
                                          models.Execution.cancelled_by, models.Execution.failure_reason)).all()
        engine.dispose()
        states = Counter(r.state for r in rows)
        assert states["failed"] == 3, states
        skipped = [r for r in rows if r.cancelled_by == "rollout"]
        assert skipped and {r.failure_reason for r in skipped} == {
            "skipped: error threshold crossed (3 of 20 failed)"}
        for row in rows:
            if row.cancelled_by == "rollout":
                assert fleet.effects(row.server_name) == []
            else:
                assert row.state in ("completed", "failed") and not fleet.status(row.server_name).in_maintenance
    finally:
        patching.close()
