"""The bulk paths of a batch round (orchestrator/engine/rounds.py) on real PostgreSQL: one fleet status read for
the round, the package sent without a cycle look-up when no intent was recorded, every email of a round in
four statements, the batch and tick settings; and the simulated fleet's bulk status on both stores."""

from __future__ import annotations

import re
import smtplib
from collections import Counter, deque
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator import bootstrap
from orchestrator.engine import batch, handoff, notifications, rounds
from orchestrator.persistence import models
from orchestrator.ports import FleetError
from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore, SqlStore
from tests import support
from tests.conftest import truncate_all
from workers import mail

PACKAGE = PackageRequest(packageId=DEFAULT_PACKAGE_ID)


class CountingFleet:
    """The simulated fleet, counting the calls made to it by name (no behaviour of its own)."""

    def __init__(self, fleet: simulated.SimulatedFleet, bulk: bool = True, bulk_fails: bool = False) -> None:
        self.fleet = fleet
        self.calls: Counter[str] = Counter()
        self.bulk_sizes: list[int] = []
        self.bulk_fails = bulk_fails
        if bulk:
            self.statuses = self._statuses

    def _statuses(self, servers: list[str]) -> dict[str, Any]:
        self.calls["statuses"] += 1
        self.bulk_sizes.append(len(servers))
        if self.bulk_fails:
            raise FleetError("simulated bulk failure")
        return self.fleet.statuses(servers)

    def __getattr__(self, name: str) -> Any:
        if name == "statuses":  # without bulk: a driver that has none
            raise AttributeError(name)
        attr = getattr(self.fleet, name)
        if callable(attr):
            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                return attr(*args, **kwargs)
            return counted
        return attr


class BatchDispatcher(support.ListDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.batches: deque[list[str]] = deque()
        self.email_batches: deque[list[int]] = deque()

    def advance_many(self, execution_ids: list[str], delay: float = 0.0) -> None:
        self.batches.append(list(execution_ids))

    def deliver_many(self, outbox_ids: list[int]) -> None:
        self.email_batches.append(list(outbox_ids))


def _drive(container, dispatcher: BatchDispatcher, clock: support.FakeClock) -> None:
    for _ in range(5_000):
        while dispatcher.batches or dispatcher.steps or dispatcher.emails or dispatcher.email_batches:
            while dispatcher.batches:
                rounds.run(container.engine, dispatcher.batches.popleft())
            while dispatcher.steps:
                container.engine.advance(dispatcher.steps.popleft())
            while dispatcher.emails:
                container.engine.deliver(dispatcher.emails.popleft())
            while dispatcher.email_batches:
                handoff.deliver_many(container.engine, dispatcher.email_batches.popleft())
        if not support.active(container):
            return
        clock.advance(1.0)
        container.engine.tick()
    raise AssertionError("executions still active")


def _world(pg: str, bulk: bool = True, bulk_fails: bool = False, **settings: object):
    settings.setdefault("batch_spread", 1)  # the tick's hand-offs are batches, however few
    clock = support.FakeClock()
    specs = build_fleet_specs(5, 12, scenarios={Scenario.NORMAL: 6, Scenario.PENDING_REBOOT: 2,
                                                          Scenario.POWERED_OFF: 2, Scenario.BROKEN_KB: 2})
    sim = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=20, package_seconds=10, power_seconds=5), seed=5, clock=clock.seconds)
    fleet = CountingFleet(sim, bulk=bulk, bulk_fails=bulk_fails)
    dispatcher = BatchDispatcher()
    mailer = mail.MemoryMailer()
    container = bootstrap.build(support.test_settings(pg, **settings), dispatcher=dispatcher, fleet=fleet,
                                mailer=mailer, clock=clock)
    support.register(container, specs)
    return container, sim, fleet, dispatcher, clock, mailer, specs


def _patch_group_as_one_batch(container, dispatcher, clock):  # type: ignore[no-untyped-def]
    """The group action, its executions handed to one batch task (not one step each), driven to the end."""
    answers = container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "test")
    dispatcher.steps.clear()
    dispatcher.batches.clear()
    dispatcher.batches.append([a.execution_id for a in answers if a.is_queued])
    _drive(container, dispatcher, clock)
    return answers


def _run(pg: str, **kwargs: Any) -> dict[str, Any]:
    container, sim, fleet, dispatcher, clock, mailer, specs = _world(pg, **kwargs)
    try:
        _patch_group_as_one_batch(container, dispatcher, clock)
        outcome = {}
        for row in support.executions(container):
            effects = Counter(e.kind for e in sim.effects(row.server_name))
            outcome[row.server_name] = (row.state, row.cycle, row.installed_count, dict(effects))
        with container.sessions() as session:  # the emails, execution ids and times left out
            bodies = {(r.kind, r.subject.split(" (execution")[0]): (r.recipient, re.sub(
                r"VA1-\d{6}|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "*", r.body))
                for r in session.scalars(sa.select(models.Outbox))}
        return {"outcome": outcome, "calls": fleet.calls, "bulk": fleet.bulk_sizes, "mails": len(mailer.sent),
                "bodies": bodies, "specs": specs}
    finally:
        container.close()


def test_a_round_reads_its_statuses_in_one_call_and_ends_like_one_call_per_server(pg: str) -> None:
    bulk = _run(pg)
    truncate_all(pg)
    plain = _run(pg, bulk=False)
    assert bulk["outcome"] == plain["outcome"]  # same states, cycles, installs and effects, server by server
    assert bulk["bodies"] == plain["bodies"] and bulk["mails"] == plain["mails"] == 2 * len(bulk["specs"])
    assert bulk["calls"]["statuses"] > 0 and max(bulk["bulk"]) > 1
    assert bulk["calls"]["status"] < plain["calls"]["status"] / 3, (bulk["calls"], plain["calls"])
    for server, (_, _, _, effects) in bulk["outcome"].items():
        assert effects.get("maintenance_on") == 1 and effects.get("maintenance_off") == 1, server


def test_a_failed_bulk_read_falls_back_to_one_status_call_per_server(pg: str) -> None:
    failing = _run(pg, bulk_fails=True)
    assert failing["calls"]["statuses"] > 0
    assert {state for state, *_ in failing["outcome"].values()} <= {"completed", "failed"}
    assert failing["calls"]["status"] > 0


def test_the_package_is_sent_without_a_cycle_look_up_unless_an_intent_says_it_may_have_been(pg: str) -> None:
    container, sim, fleet, dispatcher, clock, _, specs = _world(pg)
    try:
        name = next(s.name for s in specs if s.scenario is Scenario.NORMAL)
        answer = container.service.execute_package("OSD", [name], PACKAGE, "test")[0]
        dispatcher.steps.clear()
        engine = container.engine
        for _ in range(10):  # up to invoking_package, one step at a time
            row = support.executions(container, [answer.execution_id])[0]
            if row.state == "invoking_package":
                break
            engine.advance(answer.execution_id)
            clock.advance(6)
        assert row.state == "invoking_package" and row.intent is None
        fleet.calls.clear()
        engine.advance(answer.execution_id)
        assert fleet.calls["invoke_package"] == 1 and fleet.calls["cycle_result"] == 0

        # a retry after the intent was recorded asks the server first, and does not send it again
        key = next(e.key for e in sim.effects(name) if e.kind == "install")
        with container.sessions.begin() as session:
            session.execute(sa.update(models.Execution).where(models.Execution.id == answer.execution_id).values(
                state="invoking_package", cycle=row.cycle, intent={"key": key},
                lease_owner=None, lease_expires_at=None, next_run_at=clock(), attempts=1))
        fleet.calls.clear()
        engine.advance(answer.execution_id)
        assert fleet.calls["cycle_result"] == 1 and fleet.calls["invoke_package"] == 0
        installs = [e for e in sim.effects(name) if e.kind == "install"]
        assert len(installs) == len({(e.key, e.kb) for e in installs})
    finally:
        container.close()


def test_every_email_of_a_round_takes_four_statements_and_matches_enqueue(pg: str) -> None:
    container, sim, fleet, dispatcher, clock, _, specs = _world(pg)
    try:
        answers = _patch_group_as_one_batch(container, dispatcher, clock)
        ids = [a.execution_id for a in answers if a.is_queued]
        with container.sessions.begin() as session:
            ended = {r.execution_id: (r.subject, r.body, r.recipient) for r in session.scalars(
                sa.select(models.Outbox).where(models.Outbox.kind == "end"))}
            session.execute(sa.delete(models.Outbox).where(models.Outbox.kind == "end"))
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(args[2])

        table = models.Execution.__table__
        now = clock()
        sa.event.listen(container.db_engine, "before_cursor_execute", count)
        try:
            with container.sessions.begin() as session:
                rows = session.execute(sa.select(table).where(table.c.id.in_(ids))).all()
                statements.clear()
                queued = notifications.enqueue_many(session, [(r, "end") for r in rows] + [(rows[0], "start")],
                                                    now)
                assert len(statements) == 4
                assert notifications.enqueue_many(session, [(r, "end") for r in rows], now) == []
        finally:
            sa.event.remove(container.db_engine, "before_cursor_execute", count)
        assert len(queued) == len(rows)  # the start email was there already
        with container.sessions() as session:
            again = {r.execution_id: (r.subject, r.body, r.recipient) for r in session.scalars(
                sa.select(models.Outbox).where(models.Outbox.kind == "end"))}
        assert again == ended  # what `enqueue` wrote in the one-by-one path, word for word
    finally:
        container.close()


def test_the_batch_and_tick_settings_reach_the_engine(pg: str) -> None:
    settings = support.test_settings(pg, batch_size=7, batch_spread=3, batch_budget_seconds=0.5,
                                     batch_max_rounds=9, batch_fleet_threads=2, tick_lookahead_seconds=12,
                                     tick_max_rounds=4)
    config = bootstrap.engine_config(settings)
    assert (config.batch_size, config.batch_spread, config.batch_max_rounds, config.batch_fleet_threads,
            config.tick_max_rounds) == (7, 3, 9, 2, 4)
    assert config.batch_budget == timedelta(seconds=0.5) and config.tick_lookahead == timedelta(seconds=12)
    assert batch.BatchConfig.of(config) == batch.BatchConfig(size=7, budget=timedelta(seconds=0.5), max_rounds=9,
                                                            fleet_threads=2)
    assert bootstrap.engine_config(Settings(database_url="sqlite://")).tick_lookahead is None


def test_the_tick_hands_timers_off_in_batches_of_the_configured_size(pg: str) -> None:
    container, sim, fleet, dispatcher, clock, _, specs = _world(pg, batch_size=4, batch_spread=1,
                                                                tick_lookahead_seconds=0)
    try:
        answers = container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "test")
        dispatcher.steps.clear()
        dispatcher.batches.clear()
        with container.sessions.begin() as session:
            session.execute(sa.update(models.Execution).values(dispatched_until=None))
        clock.advance(1)
        steps, _ = container.engine.tick()
        assert steps == sum(a.is_queued for a in answers)
        assert [len(b) for b in dispatcher.batches] == [4] * (steps // 4) + ([steps % 4] if steps % 4 > 1 else [])
    finally:
        container.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_the_simulated_bulk_status_is_each_servers_status(tmp_path: Path, store: str) -> None:
    now = [1_700_000_000.0]
    specs = build_fleet_specs(3, 6, scenarios={Scenario.NORMAL: 4, Scenario.POWERED_OFF: 2})
    backing = MemoryStore() if store == "memory" else SqlStore(f"sqlite:///{tmp_path}/sim.db")
    fleet = simulated.SimulatedFleet.create(specs, backing, simulated.SimTimings(reboot_seconds=10),
                                            clock=lambda: now[0])
    names = [s.name for s in specs]
    fleet.reboot(names[0], "k1")
    assert not fleet.statuses(names)[names[0]].up
    now[0] += 11  # the reboot is over: the bulk read completes it as a single read would
    both = fleet.statuses([*names, "VA1NOSUCHSRV01"])
    assert set(both) == set(names)
    assert both == {name: fleet.status(name) for name in names}
    assert both[names[0]].up and both[names[0]].boot_id != f"{names[0]}-boot-1"
    if store == "sqlite":
        backing.dispose()


def test_a_batch_of_emails_goes_over_one_smtp_connection_and_a_failure_stays_its_own(
        pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []

    class CountingSMTP(smtplib.SMTP):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opened.append(1)
            super().__init__(*args, **kwargs)

        def send_message(self, message: Any, *args: Any, **kwargs: Any) -> Any:
            if "refuse me" in str(message["Subject"]):
                raise smtplib.SMTPDataError(554, b"refused by the test")
            return super().send_message(message, *args, **kwargs)

    monkeypatch.setattr(mail.smtplib, "SMTP", CountingSMTP)
    with MailSink() as sink:
        container, sim, fleet, dispatcher, clock, _, specs = _world(pg)
        container.mailer = container.engine.mailer = mail.SmtpMailer(sink.url)
        try:
            container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "test")
            with container.sessions.begin() as session:
                queued = session.execute(sa.select(models.Outbox.id, models.Outbox.execution_id)
                                         .order_by(models.Outbox.id)).all()
                outbox = [r.id for r in queued]
                session.execute(sa.update(models.Outbox).where(models.Outbox.id == outbox[2])
                                .values(subject="refuse me"))
            deliveries = handoff.deliver_many(container.engine, outbox)
            assert [d.sent for d in deliveries] == [i != 2 for i in range(len(outbox))]
            assert "refused by the test" in (deliveries[2].error or "")
            assert len(opened) == 2  # one connection, and a new one after the failure dropped it
            assert sorted(m["X-Patchaas-Execution"] for m in sink.messages) == sorted(
                r.execution_id for n, r in enumerate(queued) if n != 2)
            with container.sessions() as session:
                rows = {r.id: r for r in session.scalars(sa.select(models.Outbox))}
            assert rows[outbox[2]].sent_at is None and "refused" in (rows[outbox[2]].last_error or "")
            assert all(rows[i].sent_at is not None and rows[i].claimed_until is None for i in outbox if i != outbox[2])
        finally:
            container.close()
