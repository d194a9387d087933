"""Races on real PostgreSQL: two workers on one transition, two ticks on one table, two dispatchers on one
email. One wins; nothing is done or recorded twice."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestrator import bootstrap, executions, models, notifications
from orchestrator.engine import StepResult
from orchestrator.mailsink import MailSink
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from tests import support
from workers.fleet import simulated


@pytest.fixture
def world(pg: str):
    clock = support.FakeClock()
    specs = simulated.build_fleet_specs(3, 6, scenarios={simulated.Scenario.NORMAL: 6})
    fleet = simulated.SimulatedFleet.create(specs, simulated.MemoryStore(), simulated.SimTimings.instant(), seed=3,
                                            clock=clock.seconds)
    settings = support.test_settings(pg)
    dispatcher = support.ListDispatcher()
    first = support.make_container(settings, fleet, clock, dispatcher)
    second = support.make_container(settings, fleet, clock, support.ListDispatcher())
    support.register(first, specs)
    yield first, second, fleet, dispatcher, clock, specs
    first.close()
    second.close()


def _race(*calls):
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_workers_racing_one_transition_one_wins(world) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    [answer] = first.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    execution_id = answer.execution_id
    outcomes_seen: Counter[StepResult] = Counter()
    for _ in range(40):  # race every step of the run until it ends
        results = _race(lambda: first.engine.advance(execution_id), lambda: second.engine.advance(execution_id))
        outcomes_seen.update(results)
        assert results.count(StepResult.ADVANCED) <= 1, results
        clock.advance(2)
        if not support.active(first):
            break
    assert not support.active(first)
    assert outcomes_seen[StepResult.NOT_DUE] >= 1  # the loser saw the lease and stopped quietly
    installs = [(e.key, e.kb) for e in fleet.effects(specs[0].name, "install")]
    assert len(installs) == len(set(installs))
    kinds = Counter(e.kind for e in fleet.effects(specs[0].name))
    assert kinds["maintenance_on"] == 1 and kinds["maintenance_off"] == 1
    with first.sessions() as session:
        cycles = session.scalars(sa.select(models.Initiation.cycle).where(
            models.Initiation.execution_id == execution_id)).all()
    assert len(cycles) == len(set(cycles))


def test_a_save_from_a_stale_version_is_refused(world) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    [answer] = first.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    now = clock()
    with first.sessions.begin() as session:
        row = executions.claim(session, answer.execution_id, "worker-a", now, timedelta(seconds=1))
        assert row is not None
        stale = executions.to_view(row)
    clock.advance(5)  # worker-a's lease expires; worker-b takes the step and moves on
    assert second.engine.advance(answer.execution_id) is StepResult.ADVANCED
    from orchestrator import machine

    decision = machine.decide(stale, machine.Abandoned(machine.Outcome.FAILED, "late"), clock(), machine.Policy())
    with first.sessions.begin() as session:
        assert not executions.save(session, stale, decision, "worker-a", clock(), None)
    [row] = support.executions(first, [answer.execution_id])
    assert row.outcome is None and row.state != "exiting_maintenance"


def test_concurrent_ticks_claim_disjoint_sets(world) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    package = PackageRequest(packageId=DEFAULT_PACKAGE_ID)
    answers = first.service.execute_package("OSD", [s.name for s in specs], package, "t")
    assert all(a.is_queued for a in answers)
    clock.advance(60)  # past the dispatch window set at creation
    with first.sessions.begin() as one, second.sessions.begin() as two:
        claimed_one = executions.claim_due(one, clock(), timedelta(seconds=30), limit=4)
        claimed_two = executions.claim_due(two, clock(), timedelta(seconds=30), limit=10)
    assert len(claimed_one) == 4
    assert set(claimed_one).isdisjoint(claimed_two)
    assert len(claimed_one) + len(claimed_two) == len(specs)
    with first.sessions.begin() as session:
        assert executions.claim_due(session, clock(), timedelta(seconds=30), limit=10) == []


def test_one_execution_per_server_at_a_time(world) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    package = PackageRequest(packageId=DEFAULT_PACKAGE_ID)
    results = _race(lambda: first.service.execute_package("OSD", [specs[0].name], package, "a"),
                    lambda: second.service.execute_package("OSD", [specs[0].name], package, "b"))
    queued = [r[0] for r in results if r[0].is_queued]
    refused = [r[0] for r in results if not r[0].is_queued]
    assert len(queued) == 1 and len(refused) == 1
    assert "already being patched" in (refused[0].error_message or "")


def test_outbox_email_goes_out_once_over_real_smtp(world, mail_sink: MailSink) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    smtp = notifications.SmtpMailer(mail_sink.url)
    one = bootstrap.build(first.settings, dispatcher=support.ListDispatcher(), fleet=fleet, mailer=smtp, clock=clock)
    two = bootstrap.build(first.settings, dispatcher=support.ListDispatcher(), fleet=fleet, mailer=smtp, clock=clock)
    try:
        [answer] = first.service.execute_package("OSD", [specs[1].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID),
                                                 "t")
        outbox_id = dispatcher.emails.popleft()
        results = _race(lambda: one.engine.deliver(outbox_id), lambda: two.engine.deliver(outbox_id))
        assert sorted(r.sent for r in results) == [False, True]
        assert len(mail_sink.messages) == 1
        message = mail_sink.messages[0]
        assert message["To"] == "ops@osd.example"
        assert message["Message-ID"] == f"<{answer.execution_id}.start@patchaas>"
        assert answer.execution_id in message["Subject"]
        assert one.engine.deliver(outbox_id).sent is False  # already sent
    finally:
        one.close()
        two.close()


def test_undeliverable_email_stays_queued_with_its_reason(world) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    first.service.execute_package("OSD", [specs[2].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    outbox_id = dispatcher.emails.popleft()
    broken = bootstrap.build(first.settings, dispatcher=support.ListDispatcher(), fleet=fleet,
                             mailer=notifications.UnconfiguredMailer(), clock=clock)
    try:
        delivery = broken.engine.deliver(outbox_id)
        assert not delivery.sent and "PATCHAAS_SMTP_URL" in (delivery.error or "")
        with first.sessions() as session:
            row = session.get(models.Outbox, outbox_id)
            assert row is not None and row.sent_at is None and "PATCHAAS_SMTP_URL" in (row.last_error or "")
        clock.advance(600)
        assert first.engine.tick()[1] >= 1  # the tick hands it to a dispatcher again
    finally:
        broken.close()
