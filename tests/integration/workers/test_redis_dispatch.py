"""Ids through a real Redis broker: what is sent lands in the queue; when Redis loses everything the tick
re-sends from PostgreSQL; a dead broker never breaks a committed request."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from orchestrator import bootstrap
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas.patching import PackageRequest
from simulation import fleet as simulated
from simulation.mailsink import free_port
from simulation.specs import Scenario, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from workers import app as app_mod
from workers import mail
from workers.dispatch import CeleryDispatcher


def _queued(client: redis.Redis) -> list[tuple[str, list[object]]]:
    messages = []
    for raw in client.lrange("patchaas", 0, -1):
        envelope = json.loads(raw)
        body = json.loads(base64.b64decode(envelope["body"]))
        messages.append((envelope["headers"]["task"], body[0][0]))
    return messages


@pytest.fixture
def world(pg: str, redis_url: str):
    clock = support.FakeClock()
    specs = build_fleet_specs(5, 3, scenarios={Scenario.NORMAL: 3})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), simulated.SimTimings.instant(), seed=5,
                                            clock=clock.seconds)
    settings = support.test_settings(pg, broker_url=redis_url)
    celery_app = app_mod.create_app(settings)
    container = bootstrap.build(settings, dispatcher=CeleryDispatcher(celery_app), fleet=fleet,
                                mailer=mail.MemoryMailer(), clock=clock)
    support.register(container, specs)
    client = redis.Redis.from_url(redis_url)
    yield container, clock, specs, client
    client.close()
    container.close()


def test_a_request_puts_its_step_and_its_email_on_the_broker(world) -> None:
    container, clock, specs, client = world
    [answer] = container.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID),
                                                 "t")
    queued = _queued(client)
    assert (app_mod.ADVANCE, answer.execution_id) in queued
    assert any(task == app_mod.DELIVER_EMAIL for task, _ in queued)


def test_the_tick_resends_what_redis_lost(world) -> None:
    container, clock, specs, client = world
    package = PackageRequest(packageId=DEFAULT_PACKAGE_ID)
    answers = container.service.execute_package("OSD", [s.name for s in specs], package, "t")
    client.flushdb()  # the broker restarts with nothing
    assert container.engine.tick() == (0, 0)  # still inside the dispatch window: nothing sent twice
    clock.advance(container.settings.redrive_seconds + 1)
    steps, emails = container.engine.tick()
    assert steps == len(specs) and emails == len(specs)
    queued = _queued(client)
    assert {a.execution_id for a in answers} <= {arg for task, arg in queued if task == app_mod.ADVANCE}


def test_a_dead_broker_does_not_break_a_committed_request(pg: str) -> None:
    settings = support.test_settings(pg, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    dispatcher = CeleryDispatcher(app_mod.create_app(settings))
    dispatcher.advance("VA1-123456", 0.0)  # logs a warning, does not raise
    dispatcher.deliver(1)
