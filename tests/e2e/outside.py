"""Issue 14's outside world for the chaos test and the soak (tests/e2e/test_chaos.py, bench/soak.py): on loopback,
a webhook receiver that verifies every signature, an HTTP hook receiver and an application for HTTP health checks;
the account's webhook subscription and hook; and the invariants checked on them once everything is delivered."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass

import sqlalchemy as sa

from orchestrator.persistence import db, event_models, health_models, hook_models, models
from orchestrator.services import hooks as hook_service
from orchestrator.services.webhooks import WebhookService, WebhookSpec
from simulation.webhook_sink import Receiver
from tests.e2e.harness import Verdict
from tests.health_app import HealthApp
from tests.hook_receiver import HookReceiver

WEBHOOK_SECRET = "whsec_chaos_receiver_secret_42"
HOOK_TOKEN = "Bearer chaos-hook-token-7"
ENV = {  # for the workers: the receivers are on loopback; short retries; a killed send goes out again after 3 s
    "PATCHAAS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    "PATCHAAS_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "PATCHAAS_WEBHOOK_RETRY_MAX_SECONDS": "2",
    "PATCHAAS_WEBHOOK_HOLD_SECONDS": "3",
    "HOOK_HEADERS": json.dumps({"Authorization": HOOK_TOKEN}),
}


@dataclass
class Outside:
    """The loopback servers the run talks to: a webhook receiver that verifies every signature (subscribed to
    every kind), an HTTP hook receiver (the `lb` hook: post_cycle and post_run, onFailure warn) and an
    application answering the runs' HTTP health check."""

    webhooks: Receiver
    hooks: HookReceiver
    app: HealthApp
    since: int  # the sequence of the subscription's own webhook.created: every event from it on is delivered

    @classmethod
    def start(cls, db_url: str, key: str) -> Outside:
        """The servers, and account OSD's subscription and hook (`key`: the PATCHAAS_WEBHOOK_KEY sealing the
        subscription's secret; give the workers the same)."""
        webhooks = Receiver(WEBHOOK_SECRET).start()
        hooks = HookReceiver(HOOK_TOKEN).__enter__()
        app = HealthApp()
        engine = db.create_engine_for(db_url)
        try:
            sessions = db.session_factory(engine)
            WebhookService(sessions, db.utcnow, key).create(
                "OSD", WebhookSpec(name="chaos", url=webhooks.url, secret=WEBHOOK_SECRET), "chaos")
            # warn: an HTTP hook interrupted by a kill is recorded `unknown` (at most once, never re-sent) and
            # must not change the run's outcome; pre_* hooks always stop the run, so they stay out of here
            hook_service.HookService(sessions, db.utcnow, None).put("OSD", "lb", hook_service.parse_spec({
                "kind": "http", "points": ["post_cycle", "post_run"], "url": hooks.url("/lb"),
                "headersRef": "env:HOOK_HEADERS", "timeoutSeconds": 10, "onFailure": "warn",
                "body": '{"server": "{{ execution.server }}", "point": "{{ hook.point }}"}'}), "chaos")
            with engine.connect() as conn:
                since = conn.execute(sa.select(sa.func.min(event_models.Event.id))
                                     .where(event_models.Event.kind == "webhook.created")).scalar_one()
        finally:
            engine.dispose()
        return cls(webhooks, hooks, app, int(since))

    def parameters(self) -> dict[str, object]:
        return {"healthChecks": [{"name": "web", "kind": "http", "url": self.app.url, "bodyRegex": "ok",
                                  "retries": 3, "retryDelaySeconds": 0.3}], "onHealthFailure": "fail"}

    def close(self) -> None:
        self.webhooks.stop()
        self.hooks.__exit__()
        self.app.close()


def webhooks_pending(db_url: str) -> tuple[int, int]:
    """(events not fanned out yet, deliveries neither delivered nor given up)."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            events = conn.execute(sa.select(sa.func.count()).select_from(event_models.Event)
                                  .where(event_models.Event.fanned_out_at.is_(None))).scalar_one()
            deliveries = conn.execute(sa.select(sa.func.count()).select_from(event_models.WebhookDelivery).where(
                event_models.WebhookDelivery.delivered_at.is_(None),
                event_models.WebhookDelivery.failed_at.is_(None))).scalar_one()
    finally:
        engine.dispose()
    return int(events), int(deliveries)


def check_outside(db_url: str, outside: Outside, hooked: set[str], verdict: Verdict) -> dict[str, object]:
    """Issue 14's invariants: every event of the log reached the receiver at least once, validly signed, and all
    copies of one id carry one body; each hook ran at most once per (execution, point, cycle, hook) and its
    receiver saw each Idempotency-Key at most once; a completed hooked run ran its points; no run completed with
    a failed final health check (all runs here are onHealthFailure fail)."""
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        events = conn.execute(sa.select(event_models.Event.event_id, event_models.Event.kind)
                              .where(event_models.Event.id >= outside.since)).all()
        given_up = conn.execute(sa.select(sa.func.count()).select_from(event_models.WebhookDelivery)
                                .where(event_models.WebhookDelivery.failed_at.is_not(None))).scalar_one()
        runs = conn.execute(sa.select(hook_models.HookRun.execution_id, hook_models.HookRun.point,
                                      hook_models.HookRun.cycle, hook_models.HookRun.hook_name,
                                      hook_models.HookRun.key, hook_models.HookRun.status)).all()
        checks = conn.execute(sa.select(health_models.HealthCheckResult.execution_id,
                                        health_models.HealthCheckResult.phase,
                                        health_models.HealthCheckResult.status)).all()
        states = dict(conn.execute(sa.select(models.Execution.id, models.Execution.state)).all())
    engine.dispose()
    got = outside.webhooks.got()  # complete requests only: one cut off by a SIGKILL is not a delivery
    verdict.check("every webhook request validly signed", all(r.valid for r in got),
                  f"{sum(not r.valid for r in got)} of {len(got)} invalid")
    valid = [r for r in got if r.valid]
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for r in valid:
        bodies[r.event_id].add(r.body)
    for event_id, kind in events:
        verdict.check("every event delivered at least once (receiver)", str(event_id) in bodies, f"{kind} {event_id}")
        verdict.check("copies of an event: one id, one body", len(bodies.get(str(event_id), ())) <= 1,
                      f"{kind} {event_id}: {len(bodies.get(str(event_id), ()))} bodies")
    verdict.check("the body carries the header's id", all(r.doc["id"] == r.event_id for r in valid), "mismatch")
    verdict.check("no webhook delivery given up", given_up == 0, f"{given_up} given up")

    per_point = Counter((r.execution_id, r.point, r.cycle, r.hook_name) for r in runs)
    verdict.check("each hook at most once per (execution, point, cycle, hook)", all(n == 1 for n in per_point.values()),
                  f"{[k for k, n in per_point.items() if n > 1]}")
    calls = outside.hooks.got()
    keys = Counter(c.headers.get("idempotency-key", "") for c in calls)
    verdict.check("the hook receiver saw each Idempotency-Key at most once", all(n == 1 for n in keys.values()),
                  f"{[k for k, n in keys.items() if n > 1]}")
    verdict.check("every hook call authorized (secret header from the env: reference)",
                  all(c.authorized for c in calls), "unauthorized call")
    run_keys = {r.key: r.status for r in runs}
    verdict.check("no hook call without its intent row", set(keys) <= set(run_keys), f"{set(keys) - set(run_keys)}")
    for r in runs:  # `ok` was answered 2xx; `unknown` (interrupted by a kill) may or may not have arrived
        verdict.check("a hook run `ok` reached its receiver", r.status != "ok" or r.key in keys, r.key)
        verdict.check("a hook run ended ok (or unknown after a kill)", r.status in ("ok", "unknown"),
                      f"{r.key}: {r.status}")
    for execution_id in hooked:
        mine = {(r.point, r.cycle) for r in runs if r.execution_id == execution_id}
        if states.get(execution_id) == "completed":
            verdict.check("a completed hooked run ran post_cycle 1 and post_run",
                          ("post_cycle", 1) in mine and any(p == "post_run" for p, _ in mine),
                          f"{execution_id}: {mine}")
        phases = {(c.phase, c.status) for c in checks if c.execution_id == execution_id}
        verdict.check("hooked runs checked health before and after (ok)",
                      {("baseline", "ok"), ("final", "ok")} <= phases, f"{execution_id}: {phases}")
    verdict.check("some hook ran ok", any(r.status == "ok" for r in runs), "none")
    for execution_id, state in states.items():
        failed = [c for c in checks if c.execution_id == execution_id and c.phase == "final" and c.status == "failed"]
        verdict.check("no run completed with a failed final health check (fail)", state != "completed" or not failed,
                      execution_id)
    return {"events": len(events), "webhook_requests": len(got), "webhook_repeats": len(valid) - len(bodies),
            "hook_runs": dict(Counter(r.status for r in runs)), "hook_calls": len(calls),
            "health_checks": len(checks), "health_hits": outside.app.hits}
