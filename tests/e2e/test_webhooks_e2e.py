"""Webhooks with real worker and beat processes (Redis, PostgreSQL, SMTP): a receiver on loopback that checks
every signature gets run.started and run.ended of real runs, delivered by the `patchaas.deliver_webhooks`
task from the beat's tick, through an outage of the receiver (it answers 503 at first); every event of the
log reaches it at least once, and all copies of an event carry its one id and the same body."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import sqlalchemy as sa
from cryptography.fernet import Fernet

from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import db, event_models
from orchestrator.services.webhooks import WebhookService, WebhookSpec
from orchestrator.settings import Settings
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from simulation.webhook_sink import Receiver
from tests.e2e.harness import Cluster, install_fleet, wait_until

KEY = Fernet.generate_key().decode()
SECRET = "whsec_e2e_receiver_secret_42"


def test_a_receiver_gets_run_started_and_ended_from_real_workers(pg: str, redis_url: str, mail_sink: MailSink,
                                                                   cluster: Cluster) -> None:
    specs = build_fleet_specs(41, 3, scenarios={Scenario.NORMAL: 2, Scenario.BROKEN_KB: 1})
    install_fleet(pg, specs)
    cluster.env.update(PATCHAAS_WEBHOOK_KEY=KEY, PATCHAAS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true",
                       PATCHAAS_WEBHOOK_RETRY_BASE_SECONDS="0.5", PATCHAAS_WEBHOOK_RETRY_MAX_SECONDS="2")
    sql = db.create_engine_for(pg)
    with Receiver(SECRET) as receiver:
        receiver.status = 503  # an outage first: the workers retry with backoff
        WebhookService(db.session_factory(sql), db.utcnow, KEY).create(
            "OSD", WebhookSpec(name="ops", url=receiver.url, secret=SECRET), "e2e")
        cluster.start_worker("w1", concurrency=2)
        cluster.start_beat()
        patching = Patchaas.connect(Settings(database_url=pg, broker_url=redis_url))
        try:
            answers = patching.execute_package("OSD", [s.name for s in specs])
            ids = {a.execution_id for a in answers}
            assert all(a.is_queued for a in answers) and len(ids) == 3
            wait_until(lambda: len(receiver.got()) >= 3, timeout=60,
                       on_timeout=lambda: f"no attempt reached the receiver\n{cluster.log('w1')[-3000:]}")
            time.sleep(1.0)
            receiver.status = 200  # recovered
            wait_until(lambda: {r.doc["executionId"] for r in receiver.got()
                                if r.valid and r.doc["kind"] == "run.ended"} >= ids, timeout=120,
                       on_timeout=lambda: f"{Counter(receiver.kinds())}\n{cluster.log('w1')[-3000:]}")

            def everything_delivered() -> bool:
                with sql.connect() as conn:
                    pending = conn.execute(sa.select(sa.func.count()).select_from(event_models.WebhookDelivery)
                                           .where(event_models.WebhookDelivery.delivered_at.is_(None))).scalar_one()
                return pending == 0

            wait_until(everything_delivered, timeout=60)
        finally:
            patching.close()
        got = [r for r in receiver.got() if r.valid]
        assert len(got) == len([r for r in receiver.got() if r.headers.get("x-patchaas-signature")])  # all signed
        with sql.connect() as conn:
            logged = {str(r.event_id): r.kind for r in conn.execute(sa.select(event_models.Event))}
        assert set(receiver.ids()) == set(logged)  # every event of the log, at least once
        bodies: dict[str, set[bytes]] = defaultdict(set)
        for r in got:
            bodies[r.event_id].add(r.body)
        assert all(len(b) == 1 for b in bodies.values())  # copies of an event: one id, one body
        started = {r.doc["executionId"] for r in got if r.doc["kind"] == "run.started"}
        ended = {r.doc["executionId"]: r.doc["data"]["status"] for r in got if r.doc["kind"] == "run.ended"}
        assert started == ids and set(ended) == ids
        assert Counter(ended.values()) == Counter({"completed": 2, "failed": 1})
        assert any(r.doc["kind"] == "kb.quarantined" for r in got)
        retried = [r for r in receiver.got() if r.headers.get("x-patchaas-attempt") != "1"]
        assert retried  # the outage made the workers try again
    sql.dispose()
