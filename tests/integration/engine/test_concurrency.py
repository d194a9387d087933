"""Races on real PostgreSQL: two workers on one transition, two ticks on one table, two dispatchers on one
email. One wins; nothing is done or recorded twice."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from orchestrator import bootstrap
from orchestrator.engine import executions
from orchestrator.engine.steps import StepResult
from orchestrator.persistence import models
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.mailsink import MailSink
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import mail


@pytest.fixture
def world(pg: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 6, scenarios={Scenario.NORMAL: 6})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=3,
                                            clock=clock.seconds)
    settings = support.test_settings(pg)
    dispatcher = support.ListDispatcher()
    first = support.make_container(settings, fleet, clock, dispatcher)
    second = support.make_container(settings, fleet, clock, support.ListDispatcher())
    support.register(first, specs)
    yield first, second, fleet, dispatcher, clock, specs
    first.close()
    second.close()


def test_two_workers_claiming_one_step_at_once_one_wins(world) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    [answer] = first.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    lease = timedelta(seconds=60)
    for _ in range(20):
        results = support.race(lambda: _claim(first, answer.execution_id, "a", clock(), lease),
                        lambda: _claim(second, answer.execution_id, "b", clock(), lease))
        assert sum(r is not None for r in results) == 1, results
        with first.sessions.begin() as session:  # free the row for the next round
            session.execute(sa.update(models.Execution).where(models.Execution.id == answer.execution_id)
                            .values(lease_owner=None, lease_expires_at=None))


def _claim(container, execution_id, owner, now, lease):
    with container.sessions.begin() as session:
        row = executions.claim(session, execution_id, owner, now, lease)
        return None if row is None else row.version


def test_a_worker_arriving_mid_step_stops_quietly_and_nothing_is_done_twice(world) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    name = specs[0].name
    [answer] = first.service.execute_package("OSD", [name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "t")
    execution_id = answer.execution_id
    for point in ("after_intent", "after_effect"):
        # run up to a step with an effect, then hold the first worker inside it
        while support.executions(first, [execution_id])[0].state not in ("entering_maintenance", "invoking_package"):
            assert first.engine.advance(execution_id) is StepResult.ADVANCED
        pause = support.PauseAt(point)
        first.engine.hooks = pause
        holder = threading.Thread(target=first.engine.advance, args=(execution_id,))
        holder.start()
        assert pause.reached_point.wait(10)
        assert second.engine.advance(execution_id) is StepResult.NOT_DUE  # the lease is held
        pause.release.set()
        holder.join()
        first.engine.hooks = support.PauseAt("none")  # a point that never fires
    support.drive(first, dispatcher, clock)
    installs = [(e.key, e.kb) for e in fleet.effects(name, "install")]
    assert installs and len(installs) == len(set(installs))
    kinds = Counter(e.kind for e in fleet.effects(name))
    assert kinds["maintenance_on"] == 1 and kinds["maintenance_off"] == 1
    assert support.executions(first, [execution_id])[0].state == "completed"


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
    from orchestrator.domain import machine

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
    results = support.race(lambda: first.service.execute_package("OSD", [specs[0].name], package, "a"),
                    lambda: second.service.execute_package("OSD", [specs[0].name], package, "b"))
    queued = [r[0] for r in results if r[0].is_queued]
    refused = [r[0] for r in results if not r[0].is_queued]
    assert len(queued) == 1 and len(refused) == 1
    assert "already being patched" in (refused[0].error_message or "")


def test_outbox_email_goes_out_once_over_real_smtp(world, mail_sink: MailSink) -> None:
    first, second, fleet, dispatcher, clock, specs = world
    smtp = mail.SmtpMailer(mail_sink.url)
    one = bootstrap.build(first.settings, dispatcher=support.ListDispatcher(), fleet=fleet, mailer=smtp, clock=clock)
    two = bootstrap.build(first.settings, dispatcher=support.ListDispatcher(), fleet=fleet, mailer=smtp, clock=clock)
    try:
        [answer] = first.service.execute_package("OSD", [specs[1].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID),
                                                 "t")
        outbox_id = dispatcher.emails.popleft()
        results = support.race(lambda: one.engine.deliver(outbox_id), lambda: two.engine.deliver(outbox_id))
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
                             mailer=mail.UnconfiguredMailer(), clock=clock)
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
