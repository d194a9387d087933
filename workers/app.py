"""The Celery app: thin tasks (an id in, one step of the service, done) and the beat tick.

`create_app(settings)` builds it; nothing connects at import time. Each worker process builds its own
container (database engine, fleet driver) lazily on its first task, after the prefork pool has forked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu import Queue
from sqlalchemy.exc import OperationalError

from orchestrator.settings import Settings
from workers.dispatch import CeleryDispatcher
from workers.queues import (
    ADVANCE,
    ADVANCE_BATCH,
    DELIVER_BATCH,
    DELIVER_EMAIL,
    DELIVER_WEBHOOKS,
    QUEUE,
    ROLLOUTS,
    TICK,
    TIMERS_QUEUE,
    WINDOWS,
)

if TYPE_CHECKING:
    from orchestrator.bootstrap import Container

log = logging.getLogger(__name__)

# the task names and queues live in workers/queues.py


def celery_config(settings: Settings) -> dict[str, Any]:
    """The settings durability depends on (see docs/ARCHITECTURE.md, "Celery settings")."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # reconnect forever: 0 would mean "never" (celery#8626)
        "broker_transport_options": _transport_options(settings),
        "task_default_queue": QUEUE,
        "task_queues": (Queue(QUEUE), Queue(TIMERS_QUEUE)),  # a worker consumes both, in turn
        "task_routes": {name: {"queue": TIMERS_QUEUE} for name in (TICK, WINDOWS, ROLLOUTS)},
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "patchaas-tick": {"task": TICK, "schedule": settings.tick_seconds, "options": {"expires": 60}},
            "patchaas-windows": {"task": WINDOWS, "schedule": settings.tick_seconds, "options": {"expires": 60}},
            "patchaas-rollouts": {"task": ROLLOUTS, "schedule": settings.tick_seconds, "options": {"expires": 60}},
        },
    }


def _transport_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_seconds}
    if settings.broker_url.startswith("memory://"):
        options["polling_interval"] = 0.02  # the in-process queue is polled; Redis uses BRPOP instead
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        # A Redis that stops answering without closing the connection (frozen, failed over behind a VIP,
        # dropped by a NAT) would block a publish forever: the beat's tick, a worker's hand-off after its
        # commit. Bound every socket operation so they fail and the tick re-drives instead.
        options.update(
            socket_timeout=settings.broker_socket_timeout_seconds,
            socket_connect_timeout=settings.broker_socket_timeout_seconds,
            socket_keepalive=True,
        )
    return options


def create_app(settings: Settings, container: Callable[[], Container] | None = None) -> Celery:
    """The Celery app for `settings`; `container` overrides how a process builds its services."""
    app = Celery("patchaas", set_as_current=False)
    app.conf.update(celery_config(settings))
    holder = _ContainerHolder(settings, app, container)

    retry_db = {"autoretry_for": (OperationalError,), "retry_backoff": 1, "retry_backoff_max": 30,
                "max_retries": 8, "retry_jitter": True}

    @app.task(name=ADVANCE, shared=False, **retry_db)
    def advance(execution_id: str) -> str:
        """Run the current step of one execution."""
        return holder.get().engine.advance(execution_id).value

    @app.task(name=ADVANCE_BATCH, shared=False, **retry_db)
    def advance_batch(execution_ids: list[str]) -> str:
        """Run the due steps of many executions in rounds that share their transactions (engine/rounds.py)."""
        from orchestrator.engine import rounds

        return rounds.run(holder.get().engine, execution_ids).summary()

    @app.task(name=TICK, shared=False)
    def tick() -> str:
        """Claim due executions and unsent emails; hand them to workers. Not retried: beat sends the next
        tick in `tick_seconds` anyway, and retried ticks would only pile up behind a database outage."""
        try:
            steps, emails = holder.get().engine.tick()
        except OperationalError as exc:
            log.warning("tick skipped, the database is unreachable: %s", str(exc).splitlines()[0])
            return "skipped"
        return f"{steps} steps, {emails} emails"

    @app.task(name=DELIVER_EMAIL, shared=False, **retry_db)
    def deliver_email(outbox_id: int) -> str:
        """Send one email of the outbox."""
        delivery = holder.get().engine.deliver(outbox_id)
        return "sent" if delivery.sent else f"not sent: {delivery.error}"

    @app.task(name=DELIVER_BATCH, shared=False, **retry_db)
    def deliver_batch(outbox_ids: list[int]) -> str:
        """Send many emails of the outbox: one transaction claims them, one marks them (engine/handoff.py)."""
        from orchestrator.engine import handoff

        deliveries = handoff.deliver_many(holder.get().engine, outbox_ids)
        return f"{sum(d.sent for d in deliveries)} of {len(outbox_ids)} sent"

    @app.task(name=DELIVER_WEBHOOKS, shared=False, **retry_db)
    def deliver_webhooks(delivery_ids: list[int]) -> str:
        """Sign and POST due webhook deliveries; mark them delivered or due again (orchestrator/engine/webhooks.py)."""
        outbox = holder.get().engine.webhooks
        attempts = outbox.deliver(delivery_ids) if outbox is not None else []
        return f"{sum(a.delivered for a in attempts)} of {len(delivery_ids)} delivered"

    @app.task(name=ROLLOUTS, shared=False)
    def rollouts_gate() -> str:
        """Release held executions of rate-controlled rollouts up to their concurrency; skip the rest once
        the error threshold is crossed (orchestrator/services/rollouts.py). Not retried: the next tick comes anyway."""
        from orchestrator.services.rollouts import RolloutGate

        try:
            return RolloutGate.of(holder.get().service).run().summary()
        except OperationalError as exc:
            log.warning("rollout gate skipped, the database is unreachable: %s", str(exc).splitlines()[0])
            return "skipped"

    @app.task(name=WINDOWS, shared=False)
    def windows_start() -> str:
        """Start the patch-window occurrences that are open and not started yet (once each, whatever
        repeats: a unique key per occurrence; orchestrator/services/windows.py)."""
        from orchestrator.services.windows import WindowService

        try:
            started = WindowService(holder.get().service).start_due()
            WindowService(holder.get().service).close_due()  # window.closed events, once per occurrence
        except OperationalError as exc:
            log.warning("window pass skipped, the database is unreachable: %s", str(exc).splitlines()[0])
            return "skipped"
        return f"{len(started)} occurrences started"

    app.patchaas_holder = holder  # type: ignore[attr-defined]
    return app


class _ContainerHolder:
    """Builds the process's container once, on first use."""

    def __init__(self, settings: Settings, app: Celery, factory: Callable[[], Container] | None) -> None:
        self.settings = settings
        self.app = app
        self.factory = factory
        self._container: Container | None = None
        self._lock = threading.Lock()

    def get(self) -> Container:
        if self._container is None:
            with self._lock:
                if self._container is None:
                    if self.factory is not None:
                        self._container = self.factory()
                    else:
                        from orchestrator import bootstrap

                        self._container = bootstrap.build(self.settings, dispatcher=CeleryDispatcher(self.app))
        return self._container
