"""Test helpers: a recording dispatcher, a fake clock, and a synchronous driver that runs an engine's
steps until every execution has ended. Real code paths, no mocks of our own interfaces."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from orchestrator import bootstrap, ports
from orchestrator.bootstrap import Container
from orchestrator.persistence import db, models
from orchestrator.services import inventory
from orchestrator.settings import Settings
from simulation import fleet as simulated
from simulation.specs import SimServerSpec
from workers import mail

ALIAS = "OSD"


@dataclass
class FakeClock:
    """A clock the test moves; the simulated fleet reads the same time as floats."""

    now: datetime = field(default_factory=lambda: datetime(2026, 11, 10, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class ListDispatcher:
    """Records what the engine hands to workers; `drive` runs it."""

    def __init__(self) -> None:
        self.steps: deque[str] = deque()
        self.emails: deque[int] = deque()

    def advance(self, execution_id: str, delay: float) -> None:
        self.steps.append(execution_id)

    def deliver(self, outbox_id: int) -> None:
        self.emails.append(outbox_id)


def test_settings(database_url: str, **overrides: object) -> Settings:
    """Settings for in-process tests: fast polls, short leases."""
    values: dict[str, object] = {
        "database_url": database_url,
        "broker_url": "memory://",
        "poll_interval_seconds": 1.0,
        "reboot_timeout_seconds": 120.0,
        "package_timeout_seconds": 600.0,
        "power_timeout_seconds": 120.0,
        "lease_seconds": 60.0,
        "redrive_seconds": 5.0,
        "retry_backoff_seconds": 1.0,
        "settle_seconds": 0.0,  # settled at the first idle look after a reboot (tests/integration/engine/test_settle.py
        #                         waits out a real settle period)
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_container(
    settings: Settings, fleet: simulated.SimulatedFleet, clock: FakeClock, dispatcher: ListDispatcher,
    mailer: ports.Mailer | None = None,
) -> Container:
    return bootstrap.build(settings, dispatcher=dispatcher, fleet=fleet, mailer=mailer or mail.MemoryMailer(),
                           clock=clock)


def register(container: Container, specs: Sequence[SimServerSpec], group: str = "va1-0001") -> None:
    """Account OSD, one group, the specs as servers."""
    with container.sessions.begin() as session:
        inventory.ensure_account(session, ALIAS, "OSD", "VA1", "ops@osd.example", db.utcnow())
        inventory.ensure_group(session, ALIAS, group, "all")
        inventory.register_servers(
            session, ALIAS, (inventory.ServerSpec(s.name, s.os_type, s.power_state.value, group) for s in specs)
        )


def drive(container: Container, dispatcher: ListDispatcher, clock: FakeClock, max_rounds: int = 10_000,
          step_seconds: float = 1.0, on_tick: Callable[[], object] | None = None,
          on_step: Callable[[], object] | None = None) -> int:
    """Run queued steps and emails; when idle, move the clock and tick; stop when nothing is active.
    `on_tick` runs with every tick (e.g. the rollout gate, the window task); `on_step` after every step."""
    for rounds in range(max_rounds):
        while dispatcher.steps or dispatcher.emails:
            while dispatcher.steps:
                container.engine.advance(dispatcher.steps.popleft())
                if on_step is not None:
                    on_step()
            while dispatcher.emails:
                container.engine.deliver(dispatcher.emails.popleft())
        if on_tick is not None:
            on_tick()
            if dispatcher.steps or dispatcher.emails:
                continue
        if not active(container):
            container.engine.tick()
            while dispatcher.emails:
                container.engine.deliver(dispatcher.emails.popleft())
            return rounds
        clock.advance(step_seconds)
        container.engine.tick()
    raise AssertionError("executions still active after the round limit")


def active(container: Container) -> list[str]:
    with container.sessions() as session:
        return list(session.scalars(sa.select(models.Execution.id).where(models.Execution.ended_at.is_(None))))


def executions(container: Container, ids: Iterable[str] | None = None) -> list[models.Execution]:
    with container.sessions() as session:
        query = sa.select(models.Execution).order_by(models.Execution.server_name)
        if ids is not None:
            query = query.where(models.Execution.id.in_(list(ids)))
        return list(session.scalars(query))


def race(*calls):  # type: ignore[no-untyped-def]
    """Run `calls` in threads released at the same instant; their results in order."""
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


class PauseAt:
    """Hooks that hold a worker at one point until the test lets it go."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.reached_point = threading.Event()
        self.release = threading.Event()

    def reached(self, point: str, execution_id: str, step: str) -> None:
        if point == self.point and not self.reached_point.is_set():
            self.reached_point.set()
            assert self.release.wait(10)
