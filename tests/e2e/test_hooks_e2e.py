"""Hooks with real worker and beat processes (Redis, PostgreSQL, SMTP): an HTTP hook reaches a real receiver on
loopback with its secret header read by the workers from a reference (env:), its templated body and one
Idempotency-Key per point; a command hook runs on the simulated servers once per cycle; the detail answer lists
every hook run."""

from __future__ import annotations

import json
from collections import Counter

import sqlalchemy as sa

from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import db, hook_models
from orchestrator.services import hooks as hook_service
from orchestrator.settings import Settings
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from tests.e2e.harness import Cluster, active_executions, install_fleet, wait_until
from tests.hook_receiver import HookReceiver

TOKEN = "Bearer e2e-hook-token-7"


def test_http_and_command_hooks_run_once_per_point_on_real_workers(pg: str, redis_url: str, mail_sink: MailSink,
                                                                   cluster: Cluster) -> None:
    specs = build_fleet_specs(43, 2, scenarios={Scenario.NORMAL: 2})
    install_fleet(pg, specs)
    cluster.env.update(PATCHAAS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true",
                       HOOK_HEADERS=json.dumps({"Authorization": TOKEN}))
    sql = db.create_engine_for(pg)
    service = hook_service.HookService(db.session_factory(sql), db.utcnow, None)
    with HookReceiver(TOKEN) as receiver:
        service.put("OSD", "lb", hook_service.parse_spec({
            "kind": "http", "points": ["pre_maintenance", "post_run"], "url": receiver.url("/lb"),
            "headersRef": "env:HOOK_HEADERS", "timeoutSeconds": 10,
            "body": '{"server": "{{ execution.server }}", "point": "{{ hook.point }}", '
                    '"outcome": {{ execution.outcome | tojson }}}'}), "e2e")
        service.put("OSD", "smoke", hook_service.parse_spec({
            "kind": "command", "points": ["post_cycle"], "command": "echo smoke ok"}), "e2e")
        cluster.start_worker("w1", concurrency=2)
        cluster.start_beat()
        patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
        try:
            answers = patching.execute_package("OSD", [s.name for s in specs])
            ids = {a.execution_id for a in answers}
            assert all(a.is_queued for a in answers) and len(ids) == 2
            wait_until(lambda: not active_executions(pg), timeout=120,
                       on_timeout=lambda: f"{active_executions(pg)}\n{cluster.log('w1')[-3000:]}")
            details = [patching.detail("OSD", a.server, a.execution_id or "") for a in answers]
        finally:
            patching.close()
        calls = receiver.got()
    assert all(c.authorized for c in calls), "the secret header came from the workers' env: reference"
    keys = Counter(c.headers["idempotency-key"] for c in calls)
    assert set(keys.values()) == {1} and len(keys) == 4  # two points of two runs, each once
    by_server = {(c.doc["server"], c.doc["point"]): c.doc["outcome"] for c in calls}
    assert by_server == {(s.name, p): o for s in specs for p, o in (("pre_maintenance", None),
                                                                    ("post_run", "completed"))}
    for detail in details:
        assert detail.status == "completed", detail.failure_reason
        points = [(h.point, h.name, h.status) for h in detail.hooks]
        assert points[0] == ("pre_maintenance", "lb", "ok") and points[-1] == ("post_run", "lb", "ok")
        smoke = [h for h in detail.hooks if h.name == "smoke"]
        assert [h.cycle for h in smoke] == list(range(1, detail.cycles + 1))
        assert {(h.status, h.output) for h in smoke} == {("ok", "smoke ok")}
    with sql.connect() as conn:
        rows = conn.execute(sa.select(hook_models.HookRun.__table__)).all()
    assert len(rows) == len({(r.execution_id, r.point, r.cycle, r.hook_name) for r in rows})
    sql.dispose()
