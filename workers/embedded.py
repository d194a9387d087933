"""The embedded runtime: the production Celery tasks and beat tick, run by a worker thread and a beat
thread over Celery's in-process `memory://` broker, on a SQLite file. No PostgreSQL, no Redis; not
`task_always_eager` — messages really go through a broker and a worker consumes them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from celery import beat
from celery.contrib.testing.worker import start_worker

from orchestrator import bootstrap, ports
from orchestrator.bootstrap import Container
from orchestrator.persistence import migrate
from orchestrator.ports import Fleet, Hooks
from orchestrator.settings import Settings
from workers.app import create_app
from workers.dispatch import CeleryDispatcher

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded(
    settings: Settings,
    fleet: Fleet | None = None,
    mailer: ports.Mailer | None = None,
    concurrency: int = 4,
    hooks: Hooks | None = None,
) -> Iterator[Container]:
    """Migrate the database, start a worker thread and a beat thread, yield the shared container."""
    if not settings.broker_url.startswith("memory://"):
        raise ValueError("the embedded runtime runs on the in-process broker (memory://)")
    migrate.upgrade(settings.database_url)
    container: Container | None = None

    def shared() -> Container:
        assert container is not None
        return container

    app = create_app(settings, container=shared)
    container = bootstrap.build(settings, dispatcher=CeleryDispatcher(app), fleet=fleet, mailer=mailer,
                                hooks=hooks)
    clock = beat.EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")
    with start_worker(
        app, pool="threads", concurrency=concurrency, perform_ping_check=False, loglevel="WARNING",
        shutdown_timeout=30,
    ):
        clock.start()
        try:
            yield container
        finally:
            clock.stop()
            container.close()
