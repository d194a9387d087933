"""Events and webhooks on real PostgreSQL, with a real HTTP receiver on loopback that verifies signatures:
events are written in the transition's own transaction (a rolled-back one writes none, one step at a time
and in batches); a run's events reach the receiver signed, each id once; an outage (errors, then the
receiver gone) is ridden out with backoff and every event arrives after recovery; duplicates and a crash
between the send and the mark re-send with the same id; two workers never send one delivery at once; a
subscription that keeps failing is disabled with a webhook.disabled event."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from orchestrator import bootstrap
from orchestrator.bootstrap import Container
from orchestrator.domain import webhooks as webhook_rules
from orchestrator.engine import event_log, rounds
from orchestrator.persistence import event_models, models
from orchestrator.services.webhooks import WebhookService, WebhookSpec
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from simulation.webhook_sink import Receiver
from tests import support
from workers import mail

KEY = Fernet.generate_key().decode()
SECRET = "whsec_integration_secret_0123"


@dataclass
class World:
    container: Container
    dispatcher: support.ListDispatcher
    clock: support.FakeClock
    receiver: Receiver
    hooks: Any

    @property
    def webhooks(self) -> WebhookService:
        return WebhookService(self.container.sessions, self.clock, KEY)

    def subscribe(self, **spec: Any) -> int:
        values = {"name": "ops", "url": self.receiver.url, "secret": SECRET, **spec}
        return self.webhooks.create("OSD", WebhookSpec(**values), "jane").id

    def run(self, *servers: str) -> list[str]:
        answers = self.container.service.execute_package(
            "OSD", list(servers), PackageRequest(packageId=DEFAULT_PACKAGE_ID), "jane")
        return [a.execution_id or "" for a in answers]

    def tick(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.container.engine.tick()  # the ListDispatcher has no deliver_webhooks: delivered in the tick


class CrashAfterSend:
    """Hooks: the first `after_webhook` dies (the worker is gone between the POST and the mark)."""

    def __init__(self) -> None:
        self.armed = False

    def reached(self, point: str, execution_id: str, step: str) -> None:
        if point == "after_webhook" and self.armed:
            self.armed = False
            raise SystemExit("killed between send and mark")


@pytest.fixture
def world(pg: str) -> Iterator[World]:
    clock = support.FakeClock()
    specs = build_fleet_specs(14, 3, scenarios={Scenario.NORMAL: 2, Scenario.BROKEN_KB: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=14,
                                            clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    settings = support.test_settings(pg, webhook_key=KEY, webhook_allow_private_addresses=True,
                                     webhook_retry_base_seconds=5, webhook_retry_max_seconds=600,
                                     webhook_hold_seconds=60, webhook_disable_after_seconds=3600,
                                     webhook_disable_min_failures=3, webhook_timeout_seconds=3)
    hooks = CrashAfterSend()
    container = bootstrap.build(settings, dispatcher=dispatcher, fleet=fleet, mailer=mail.MemoryMailer(),
                                clock=clock, hooks=hooks)
    support.register(container, specs)
    with Receiver(SECRET, now=clock.seconds) as receiver:
        yield World(container, dispatcher, clock, receiver, hooks)
    container.close()


def events(world: World) -> list[Any]:
    with world.container.sessions() as session:
        return list(session.execute(sa.select(event_models.Event).order_by(event_models.Event.id)).scalars())


def deliveries(world: World) -> list[Any]:
    with world.container.sessions() as session:
        return list(session.execute(sa.select(event_models.WebhookDelivery)
                                    .order_by(event_models.WebhookDelivery.id)).scalars())


def _servers(world: World) -> list[str]:
    with world.container.sessions() as session:
        return sorted(session.scalars(sa.select(models.Server.name)))


class FailInsert:
    """Makes the transaction that inserts events fail at that INSERT (after the execution's UPDATE)."""

    def __init__(self, world: World) -> None:
        self.engine = world.container.db_engine

    def __enter__(self) -> FailInsert:
        sa.event.listen(self.engine, "before_cursor_execute", self.boom)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self.boom)

    @staticmethod
    def boom(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EVENTS"):
            raise RuntimeError("the transaction fails after the transition was written")


@pytest.mark.parametrize("mode", ["one step", "batch"])
def test_events_are_written_in_the_transitions_transaction_and_a_rolled_back_one_writes_none(
        world: World, mode: str) -> None:
    [execution_id] = world.run(_servers(world)[0])
    assert [e.kind for e in events(world)] == ["run.requested"]  # in the request's own transaction
    step = (lambda: world.container.engine.advance(execution_id)) if mode == "one step" else (
        lambda: rounds.run(world.container.engine, [execution_id]))
    with FailInsert(world), pytest.raises(RuntimeError, match="after the transition was written"):
        step()
    [row] = support.executions(world.container, [execution_id])
    assert row.state == "requested" and row.ended_at is None  # the transition rolled back with its events
    assert [e.kind for e in events(world)] == ["run.requested"]
    world.clock.advance(61)  # our lease runs out; the step is taken again (a batch hands an interrupted step
    step()  # to a message of its own: the ListDispatcher, driven below)
    support.drive(world.container, world.dispatcher, world.clock)
    kinds = Counter(e.kind for e in events(world))
    assert kinds["run.started"] == 1 and kinds["run.ended"] == 1 and kinds["cycle.ended"] >= 1
    assert {e.execution_id for e in events(world)} == {execution_id}


def test_a_receiver_gets_every_event_of_the_runs_signed_each_id_once(world: World) -> None:
    world.subscribe()
    ids = world.run(*_servers(world))
    support.drive(world.container, world.dispatcher, world.clock)
    world.tick()
    assert world.receiver.ids() == Counter({str(e.event_id): 1 for e in events(world)})  # each once, every one
    assert all(r.valid for r in world.receiver.got())
    kinds = Counter(world.receiver.kinds())
    assert kinds["run.requested"] == kinds["run.started"] == kinds["run.ended"] == 3
    assert kinds["kb.quarantined"] == 1 and kinds["cycle.ended"] >= 3 and kinds["webhook.created"] == 1
    ended = {r.doc["executionId"]: r.doc for r in world.receiver.got() if r.doc["kind"] == "run.ended"}
    assert set(ended) == set(ids)
    assert Counter(d["data"]["status"] for d in ended.values()) == Counter({"completed": 2, "failed": 1})
    requested = [r.doc for r in world.receiver.got() if r.doc["kind"] == "run.requested"]
    assert {d["actor"] for d in requested} == {"jane"}
    assert all(d.delivered_at is not None and d.attempts == 1 for d in deliveries(world))


def test_an_outage_then_recovery_delivers_every_event_with_backoff(world: World) -> None:
    sub = world.subscribe(kinds=["run.*"])
    world.receiver.status = 503
    [execution_id] = world.run(_servers(world)[0])
    support.drive(world.container, world.dispatcher, world.clock)  # the run happens while the receiver fails
    world.tick()
    failing = world.webhooks.get("OSD", sub)
    assert failing.enabled and failing.consecutive_failures >= 3 and failing.last_error == "HTTP 503"
    pending = deliveries(world)
    assert pending and all(d.delivered_at is None and d.last_error == "HTTP 503" for d in pending)
    world.receiver.stop()  # then it is gone entirely: connections refused
    for _ in range(4):
        world.tick(120)
    refused = deliveries(world)
    assert all(d.delivered_at is None and "ConnectError" in (d.last_error or "") for d in refused)
    assert max(d.attempts for d in refused) >= 3
    before = len(world.receiver.got())
    world.receiver.status = 200
    world.receiver.start()  # back on the same port
    world.tick(600)  # past the longest backoff
    done = deliveries(world)
    assert all(d.delivered_at is not None for d in done)
    run_events = {str(e.event_id) for e in events(world) if e.kind.startswith("run.")}
    delivered = [r for r in world.receiver.got()[before:] if r.valid]
    assert {r.event_id for r in delivered} == run_events  # every event after recovery, with its own id
    assert {r.doc["executionId"] for r in delivered} == {execution_id}
    recovered = world.webhooks.get("OSD", sub)
    assert recovered.enabled and recovered.consecutive_failures == 0 and recovered.last_success_at is not None


def test_a_duplicate_delivery_carries_the_same_id_and_body(world: World) -> None:
    world.subscribe(kinds=["user.*"])
    world.receiver.status = 500  # got it, but answered an error: it comes again
    _create_user(world)
    world.tick()
    world.receiver.status = 200
    world.tick(5)
    first, second = world.receiver.got()
    assert first.event_id == second.event_id and first.body == second.body and first.valid and second.valid
    assert (first.headers["x-patchaas-attempt"], second.headers["x-patchaas-attempt"]) == ("1", "2")
    assert first.headers["x-patchaas-signature"] != second.headers["x-patchaas-signature"]  # a new timestamp


def test_a_crash_between_send_and_mark_resends_with_the_same_id(world: World) -> None:
    world.subscribe(kinds=["user.created"])
    _create_user(world)
    world.hooks.armed = True
    with pytest.raises(SystemExit):
        world.tick()  # sent, then the worker died before marking it
    [held] = deliveries(world)
    assert held.delivered_at is None and held.claimed_until is not None and held.attempts == 1
    world.tick(30)  # still claimed: nobody sends it meanwhile
    assert len(world.receiver.got()) == 1
    world.tick(31)  # the claim ran out: sent again, then marked
    first, second = world.receiver.got()
    assert first.event_id == second.event_id and first.valid and second.valid
    [done] = deliveries(world)
    assert done.delivered_at is not None and done.attempts == 2


def test_two_workers_never_send_the_same_delivery_at_once(world: World) -> None:
    world.subscribe(kinds=["user.created"])
    for i in range(6):
        _create_user(world, f"user{i}")
    outbox = world.container.engine.webhooks
    assert outbox is not None
    for _ in range(2):  # the second time as if the first had not marked the events: ON CONFLICT DO NOTHING
        with world.container.sessions.begin() as session:
            session.execute(sa.update(event_models.Event).values(fanned_out_at=None))
            event_log.fan_out(session, world.clock(), 100)
    ids = [d.id for d in deliveries(world)]
    assert len(ids) == 6  # one per (subscription, event), however often it is fanned out
    results = support.race(*(lambda: outbox.deliver(ids) for _ in range(4)))
    sent = [a.delivery_id for attempts in results for a in attempts]  # type: ignore[attr-defined]
    assert sorted(sent) == sorted(ids)  # each delivery sent by exactly one of the four
    assert sorted(world.receiver.ids().values()) == [1] * 6


def test_a_subscription_that_keeps_failing_is_disabled_with_a_reason(world: World) -> None:
    sub = world.subscribe(kinds=["user.*"])
    audit = Receiver(SECRET, now=world.clock.seconds).start()  # another subscription, on a receiver that works
    spare = world.subscribe(name="audit", kinds=["webhook.*"], url=audit.url)
    world.receiver.status = 502
    _create_user(world)
    world.tick()
    for _ in range(12):  # every attempt fails for more than the hour of `webhook_disable_after_seconds`
        world.tick(600)
    info = world.webhooks.get("OSD", sub)
    assert not info.enabled and info.disabled_at is not None
    assert info.disabled_reason and "failed attempts in a row" in info.disabled_reason and "HTTP 502" in \
        info.disabled_reason
    assert [e.payload["webhookId"] for e in events(world) if e.kind == "webhook.disabled"] == [sub]
    world.tick(1)
    assert world.webhooks.get("OSD", spare).enabled  # the other subscription is not affected …
    assert "webhook.disabled" in audit.kinds()  # … and tells the account
    audit.stop()
    count = sum(1 for r in world.receiver.got() if r.doc["kind"] == "user.created")
    world.tick(3600)
    assert sum(1 for r in world.receiver.got() if r.doc["kind"] == "user.created") == count  # no more attempts
    world.receiver.status = 200
    world.webhooks.enable("OSD", sub, "jane")
    world.tick(1)
    assert deliveries(world)[0].delivered_at is not None  # resumed
    assert world.webhooks.get("OSD", sub).enabled


def _create_user(world: World, name: str = "bob") -> None:
    from datetime import timedelta

    from argon2 import PasswordHasher

    from orchestrator.services import auth

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    auth.AuthService(world.container.sessions, world.clock, timedelta(days=1), hasher=hasher).create_user(
        name, "OSD", ["AccountViewer"], "correct horse battery")


def test_the_event_log_and_its_deliveries_work_on_sqlite_too(tmp_path: Any) -> None:
    """The embedded default: the same migration, fan-out (ON CONFLICT DO NOTHING), claim (UPDATE …
    RETURNING) and mark on SQLite, with the in-memory sender."""
    from orchestrator.persistence import migrate
    from workers.webhooks import MemoryWebhookSender

    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    migrate.upgrade(url)
    clock = support.FakeClock()
    specs = build_fleet_specs(15, 1, scenarios={Scenario.NORMAL: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=15,
                                            clock=clock.seconds)
    sender = MemoryWebhookSender(status=204)
    dispatcher = support.ListDispatcher()
    container = bootstrap.build(support.test_settings(url, webhook_key=KEY), dispatcher=dispatcher, fleet=fleet,
                                mailer=mail.MemoryMailer(), clock=clock, webhook_sender=sender)
    try:
        support.register(container, specs)
        WebhookService(container.sessions, clock, KEY).create("OSD", WebhookSpec(
            name="ops", url="https://hooks.example.com/x", secret=SECRET, kinds=["run.*"]), "jane")
        container.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "jane")
        support.drive(container, dispatcher, clock)
        container.engine.tick()
        kinds = [json.loads(s.body)["kind"] for s in sender.sent]
        assert Counter(kinds) == Counter({"run.requested": 1, "run.started": 1, "run.ended": 1})
        assert all(webhook_rules.verify(SECRET, s.body, s.headers[webhook_rules.SIGNATURE_HEADER],
                                        now=int(clock.seconds())) for s in sender.sent)
        with container.sessions() as session:
            pending = session.scalar(sa.select(sa.func.count()).select_from(event_models.WebhookDelivery)
                                     .where(event_models.WebhookDelivery.delivered_at.is_(None)))
        assert pending == 0
    finally:
        container.close()
