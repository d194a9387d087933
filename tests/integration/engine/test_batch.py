"""Batches (orchestrator/engine/rounds.py) on real PostgreSQL: the same runs as one step per task, with shared
transactions; races between batches and single steps still do every effect once."""

from __future__ import annotations

import threading
from collections import Counter, deque
from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestrator.engine import batch, handoff
from orchestrator.engine import rounds as batch_rounds
from orchestrator.engine.steps import StepResult
from orchestrator.persistence import models
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail

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
PACKAGE = PackageRequest(packageId=DEFAULT_PACKAGE_ID)


class BatchDispatcher(support.ListDispatcher):
    """A ListDispatcher that also takes batch messages."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: deque[list[str]] = deque()
        self.delays: list[float] = []
        self.email_batches: deque[list[int]] = deque()

    def deliver_many(self, outbox_ids: list[int]) -> None:
        self.email_batches.append(list(outbox_ids))

    def advance_many(self, execution_ids: list[str], delay: float = 0.0) -> None:
        self.batches.append(list(execution_ids))
        self.delays.append(delay)


def drive(container, dispatcher: BatchDispatcher, clock, config: batch.BatchConfig | None = None,
          max_rounds: int = 10_000, step_seconds: float = 1.0) -> int:
    """`support.drive` with batch messages run by `batch_rounds.run`."""
    for rounds in range(max_rounds):
        while dispatcher.batches or dispatcher.steps or dispatcher.emails or dispatcher.email_batches:
            while dispatcher.batches:
                batch_rounds.run(container.engine, dispatcher.batches.popleft(), config)
            while dispatcher.steps:
                container.engine.advance(dispatcher.steps.popleft())
            _emails(container, dispatcher)
        if not support.active(container):
            container.engine.tick()
            _emails(container, dispatcher)
            return rounds
        clock.advance(step_seconds)
        container.engine.tick()
    raise AssertionError("executions still active after the round limit")


def _emails(container, dispatcher: BatchDispatcher) -> None:
    while dispatcher.emails or dispatcher.email_batches:
        while dispatcher.emails:
            container.engine.deliver(dispatcher.emails.popleft())
        while dispatcher.email_batches:
            handoff.deliver_many(container.engine, dispatcher.email_batches.popleft())


def _assert_once(fleet, name: str) -> Counter[str]:
    effects = fleet.effects(name)
    kinds = Counter(e.kind for e in effects)
    assert kinds["maintenance_on"] == 1 and kinds["maintenance_off"] == 1, (name, kinds)
    installs = [(e.key, e.kb) for e in effects if e.kind == "install"]
    assert len(installs) == len(set(installs)), "a KB was installed twice in one cycle"
    reboots = [e.key for e in effects if e.kind == "reboot"]
    assert len(reboots) == len(set(reboots)), "a reboot was done twice"
    return kinds


@pytest.fixture
def scenarios(pg: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(
        11, 10, scenarios={**{s: 1 for s in EXPECTED}, Scenario.NORMAL: 2, Scenario.UNSUPPORTED_OS: 1}
    )
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings(
        reboot_seconds=30, package_seconds=20, power_seconds=10), seed=11, clock=clock.seconds)
    dispatcher = BatchDispatcher()
    mailer = mail.MemoryMailer()
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher, mailer)
    support.register(container, specs)
    yield container, fleet, dispatcher, clock, mailer, specs
    container.close()


@pytest.mark.parametrize("threads", [1, 4])
def test_every_scenario_ends_in_its_expected_state_in_batches(scenarios, threads: int) -> None:
    container, fleet, dispatcher, clock, mailer, specs = scenarios
    answers = container.service.execute_package_on_groups("OSD", ["va1-0001"], PACKAGE, "test")
    dispatcher.steps.clear()  # a few ids are handed off one message each: run them as one batch instead
    dispatcher.batches.append([a.execution_id for a in answers if a.is_queued])
    drive(container, dispatcher, clock, batch.BatchConfig(fleet_threads=threads))
    by_server = {a.server: a for a in answers}
    for spec in specs:
        answer = by_server[spec.name]
        if spec.scenario is Scenario.UNSUPPORTED_OS:
            assert not answer.is_queued
            continue
        detail = container.service.detail("OSD", spec.name, answer.execution_id)
        assert detail.status == EXPECTED[spec.scenario], (spec.scenario, detail)
        status = fleet.status(spec.name)
        assert not status.in_maintenance and status.power_state is spec.power_state, spec
        _assert_once(fleet, spec.name)
        if spec.scenario is Scenario.NEVER_RETURNS:
            assert "did not come back" in (detail.failure_reason or "")
        if spec.scenario in (Scenario.BROKEN_KB, Scenario.ROLLBACK_KB):
            assert detail.quarantined
    sent = [(m["X-Patchaas-Execution"], m["X-Patchaas-Kind"]) for m in mailer.sent]
    assert len(sent) == len(set(sent)) == 2 * sum(a.is_queued for a in answers)


@pytest.fixture
def pair(pg: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 6, scenarios={Scenario.NORMAL: 6})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=3,
                                            clock=clock.seconds)
    settings = support.test_settings(pg)
    dispatcher = BatchDispatcher()
    first = support.make_container(settings, fleet, clock, dispatcher)
    second = support.make_container(settings, fleet, clock, BatchDispatcher())
    support.register(first, specs)
    yield first, second, fleet, dispatcher, clock, specs
    first.close()
    second.close()


def test_an_instant_run_is_chained_in_one_batch(pair) -> None:
    first, second, fleet, dispatcher, clock, specs = pair
    answers = first.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
    ids = [a.execution_id for a in answers]
    report = batch_rounds.run(first.engine, ids)
    assert report.claimed == len(specs) and report.rounds > 5 and report.conflicts == 0
    assert not support.active(first)  # every step was due at once: the batch ran each execution to its end
    assert {r.state for r in support.executions(first, [a.execution_id for a in answers])} == {"completed"}
    for spec in specs:
        _assert_once(fleet, spec.name)


def test_two_batches_racing_on_the_same_executions_do_everything_once(pair) -> None:
    first, second, fleet, dispatcher, clock, specs = pair
    answers = first.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
    ids = [a.execution_id for a in answers]
    results = support.race(lambda: batch_rounds.run(first.engine, ids, batch.BatchConfig(max_rounds=3)),
                    lambda: batch_rounds.run(second.engine, ids, batch.BatchConfig(max_rounds=3)))
    assert sum(r.claimed for r in results) == len(ids)  # every execution was claimed by exactly one
    dispatcher.batches.clear()
    dispatcher.steps.clear()
    for _ in range(3):  # past the redrive window: the tick takes whatever was handed off to the other
        clock.advance(60)
        first.engine.tick()
    drive(first, dispatcher, clock)
    assert {r.state for r in support.executions(first, ids)} == {"completed"}
    for spec in specs:
        _assert_once(fleet, spec.name)


def test_a_single_step_worker_finds_the_batch_lease_held(pair) -> None:
    first, second, fleet, dispatcher, clock, specs = pair
    name = specs[0].name
    [answer] = first.service.execute_package("OSD", [name], PACKAGE, "t")
    pause = support.PauseAt("after_intent")
    first.engine.hooks = pause
    holder = threading.Thread(target=batch_rounds.run, args=(first.engine, [answer.execution_id]))
    holder.start()
    assert pause.reached_point.wait(10)
    assert second.engine.advance(answer.execution_id) is StepResult.NOT_DUE
    pause.release.set()
    holder.join()
    first.engine.hooks = support.PauseAt("never")
    dispatcher.batches.clear()
    dispatcher.steps.clear()
    clock.advance(60)
    first.engine.tick()
    drive(first, dispatcher, clock)
    assert support.executions(first, [answer.execution_id])[0].state == "completed"
    _assert_once(fleet, name)


def test_a_cancel_between_rounds_is_seen_by_the_next_round(pair) -> None:
    first, second, fleet, dispatcher, clock, specs = pair
    name = specs[0].name
    [answer] = first.service.execute_package("OSD", [name], PACKAGE, "t")
    cancelled = threading.Event()

    class CancelOnce:
        def reached(self, point: str, execution_id: str, step: str) -> None:
            if point == "after_commit" and step == "invoking_package" and not cancelled.is_set():
                cancelled.set()
                second.service.cancel("OSD", name, execution_id, by="jane", reason="freeze")

    first.engine.hooks = CancelOnce()
    dispatcher.steps.clear()
    batch_rounds.run(first.engine, [answer.execution_id])
    assert cancelled.is_set()
    drive(first, dispatcher, clock)
    [row] = support.executions(first, [answer.execution_id])
    assert row.state == "cancelled" and row.cancelled_by == "jane"
    assert not fleet.status(name).in_maintenance
    installs = fleet.effects(name, "install")
    cycles = {e.key.rsplit(":", 1)[1] for e in installs}
    assert cycles <= {"1"}, "the run went on past the cycle during which it was cancelled"


def test_the_budget_hands_still_due_executions_to_a_new_batch(pair) -> None:
    first, second, fleet, dispatcher, clock, specs = pair
    answers = first.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
    ids = [a.execution_id for a in answers]
    dispatcher.steps.clear()
    report = batch_rounds.run(first.engine, ids, batch.BatchConfig(max_rounds=1, size=4))
    assert report.rounds == 1 and report.steps == len(specs) and report.handed_off == len(specs)
    assert [len(b) for b in dispatcher.batches] == [4, 2]
    drive(first, dispatcher, clock)
    assert not support.active(first)


def test_transient_fleet_errors_are_released_with_backoff_and_the_runs_still_end(pg: str) -> None:
    clock = support.FakeClock()
    specs = build_fleet_specs(5, 6, scenarios={Scenario.NORMAL: 6})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=5,
                                            clock=clock.seconds, transient_error_rate=0.3)
    dispatcher = BatchDispatcher()
    container = support.make_container(support.test_settings(pg, max_attempts=50), fleet, clock, dispatcher)
    try:
        support.register(container, specs)
        answers = container.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
        drive(container, dispatcher, clock)
        rows = support.executions(container, [a.execution_id for a in answers])
        assert {r.state for r in rows} == {"completed"}
        for spec in specs:
            _assert_once(fleet, spec.name)
    finally:
        container.close()


def test_without_batch_messages_the_hand_off_is_one_message_per_execution() -> None:
    plain = support.ListDispatcher()
    handoff.hand_off(plain, ["VA1-000001", "VA1-000002"])
    assert list(plain.steps) == ["VA1-000001", "VA1-000002"]
    few = BatchDispatcher()
    handoff.hand_off(few, [f"VA1-{i:06d}" for i in range(7)])  # fewer than `spread`: one message each
    assert len(few.steps) == 7 and not few.batches
    batched = BatchDispatcher()
    handoff.hand_off(batched, [f"VA1-{i:06d}" for i in range(120)], size=10, spread=8)
    assert [len(b) for b in batched.batches] == [10] * 12 and not batched.steps
    spread = BatchDispatcher()
    handoff.hand_off(spread, [f"VA1-{i:06d}" for i in range(33)], size=50, spread=8)  # 8 batches of 4, then 1
    assert [len(b) for b in spread.batches] == [4] * 8 and list(spread.steps) == ["VA1-000032"]


def test_claim_many_takes_only_due_and_free_rows(pair) -> None:
    first, second, fleet, dispatcher, clock, specs = pair
    answers = first.service.execute_package("OSD", [s.name for s in specs[:3]], PACKAGE, "t")
    ids = [a.execution_id for a in answers]
    now = clock()
    with first.sessions.begin() as session:
        assert len(batch.claim_many(session, ids, "a", now, timedelta(seconds=60), timedelta(0))) == 3
    with first.sessions.begin() as session:
        assert batch.claim_many(session, ids, "b", now, timedelta(seconds=60), timedelta(0)) == []


class TimedDispatcher(BatchDispatcher):
    """Records the countdown of every hand-off."""

    def __init__(self) -> None:
        super().__init__()
        self.timed: list[tuple[str, float]] = []

    def advance(self, execution_id: str, delay: float) -> None:
        super().advance(execution_id, delay)
        self.timed.append((execution_id, delay))

    def advance_many(self, execution_ids: list[str], delay: float = 0.0) -> None:
        super().advance_many(execution_ids, delay)
        self.timed.extend((i, delay) for i in execution_ids)


def test_the_tick_hands_off_what_falls_due_before_the_next_tick_with_a_countdown(pg: str) -> None:
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 6, scenarios={Scenario.NORMAL: 6})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=3,
                                            clock=clock.seconds)
    dispatcher = TimedDispatcher()
    settings = support.test_settings(pg, tick_batch=2, short_countdown_seconds=5.0)
    container = support.make_container(settings, fleet, clock, dispatcher)
    try:
        support.register(container, specs)
        answers = container.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
        ids = [a.execution_id for a in answers]
        offsets = [0.0, 0.0, 1.0, 1.1, 4.0, 30.0]  # seconds from now; the last is beyond the look-ahead
        now = clock()
        with container.sessions.begin() as session:
            for execution_id, offset in zip(ids, offsets, strict=True):
                session.execute(sa.update(models.Execution).where(models.Execution.id == execution_id).values(
                    next_run_at=now + timedelta(seconds=offset), dispatched_until=None))
        dispatcher.timed.clear()
        steps, _ = container.engine.tick()
        assert steps == 5  # three claims of tick_batch=2 in one tick
        timed = dict(dispatcher.timed)
        assert set(timed) == set(ids[:5])
        assert timed[ids[0]] == timed[ids[1]] == 0.0
        assert timed[ids[2]] == timed[ids[3]] == 1.0  # one group: within the claim's tolerance of each other
        assert timed[ids[4]] == 4.0
        dispatcher.timed.clear()
        assert container.engine.tick()[0] == 0  # marked dispatched: the next tick leaves them alone
        clock.advance(31)
        assert container.engine.tick()[0] == 6  # nothing ran them: the redrive window passed
    finally:
        container.close()


def test_emails_in_batches_go_out_once_over_real_smtp(pg: str, mail_sink) -> None:
    clock = support.FakeClock()
    specs = build_fleet_specs(4, 20, scenarios={Scenario.NORMAL: 20})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=4,
                                            clock=clock.seconds)
    dispatcher = BatchDispatcher()
    smtp = mail.SmtpMailer(mail_sink.url)
    container = support.make_container(support.test_settings(pg), fleet, clock, dispatcher, smtp)
    other = support.make_container(support.test_settings(pg), fleet, clock, BatchDispatcher(), smtp)
    try:
        support.register(container, specs)
        answers = container.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
        assert dispatcher.email_batches and not dispatcher.emails  # 20 start emails: batch messages
        ids = [i for b in dispatcher.email_batches for i in b]
        dispatcher.email_batches.clear()
        results = support.race(lambda: handoff.deliver_many(container.engine, ids),
                        lambda: handoff.deliver_many(other.engine, ids))
        assert sum(d.sent for r in results for d in r) == len(ids)  # each claimed and sent by one of them
        assert handoff.deliver_many(container.engine, ids) and not any(
            d.sent for d in handoff.deliver_many(container.engine, ids))  # already sent
        sent = Counter((m["X-Patchaas-Execution"], m["X-Patchaas-Kind"]) for m in mail_sink.messages)
        assert sent == Counter({(a.execution_id, "start"): 1 for a in answers})
    finally:
        container.close()
        other.close()


def test_an_undeliverable_batch_stays_queued_with_its_reason(pair) -> None:
    first, second, fleet, dispatcher, clock, specs = pair
    first.service.execute_package("OSD", [s.name for s in specs], PACKAGE, "t")
    ids = list(dispatcher.emails)
    broken = support.make_container(first.settings, fleet, clock, BatchDispatcher(), mail.UnconfiguredMailer())
    try:
        deliveries = handoff.deliver_many(broken.engine, ids)
        assert len(deliveries) == len(ids) and not any(d.sent for d in deliveries)
        with first.sessions() as session:
            rows = session.scalars(sa.select(models.Outbox).where(models.Outbox.id.in_(ids))).all()
        assert all(r.sent_at is None and "PATCHAAS_SMTP_URL" in (r.last_error or "") for r in rows)
        clock.advance(600)
        assert first.engine.tick()[1] == len(ids)  # the tick hands them out again
    finally:
        broken.close()
