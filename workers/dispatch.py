"""Hands execution and outbox ids to Celery. A failed send is logged, never raised: the work is already
committed in the database and the tick re-sends it.

A broker blip (Redis restarting, failing over) is retried briefly with tenacity so a hand-off does not
wait for the tick's re-drive; once a send has failed for good, later sends try once only until the broker
answers again, so a caller handing off many ids (a group action of 1,000 servers) is never held up by an
outage for more than one short retry window."""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from tenacity import Retrying, stop_after_attempt, stop_after_delay, wait_exponential

from workers import queues

log = logging.getLogger(__name__)


class CeleryDispatcher:
    """The engine's Dispatcher over a Celery app."""

    def __init__(self, app: Celery, retry_seconds: float = 1.5, quiet_seconds: float = 5.0) -> None:
        self.app = app
        self.retry_seconds = retry_seconds  # how long one send retries a broker blip
        self.quiet_seconds = quiet_seconds  # after a send failed for good: single attempts for this long
        self._down_until = 0.0
        self._lock = threading.Lock()

    def advance(self, execution_id: str, delay: float) -> None:
        self._send(queues.ADVANCE, execution_id, delay)

    def advance_many(self, execution_ids: list[str], delay: float = 0.0) -> None:
        """One message for many executions: a batch task runs their due steps in shared transactions."""
        self._send(queues.ADVANCE_BATCH, list(execution_ids), delay)

    def deliver_many(self, outbox_ids: list[int]) -> None:
        """One message for many emails: a batch task claims and marks them in shared transactions."""
        self._send(queues.DELIVER_BATCH, list(outbox_ids), 0.0)

    def deliver(self, outbox_id: int) -> None:
        self._send(queues.DELIVER_EMAIL, outbox_id, 0.0)

    def deliver_webhooks(self, delivery_ids: list[int]) -> None:
        """One message for some webhook deliveries: a task claims, sends and marks them (engine/webhooks.py)."""
        self._send(queues.DELIVER_WEBHOOKS, list(delivery_ids), 0.0)

    def _send(self, task: str, arg: object, delay: float) -> None:
        down = time.monotonic() < self._down_until
        stop = stop_after_attempt(1) if down else stop_after_delay(self.retry_seconds)
        try:
            for attempt in Retrying(stop=stop, wait=wait_exponential(multiplier=0.1, max=0.5), reraise=True):
                with attempt:
                    self.app.send_task(task, args=[arg], countdown=delay or None, retry=False)
        except Exception as exc:  # the broker is down: the tick re-drives from the database
            with self._lock:
                self._down_until = time.monotonic() + self.quiet_seconds
            log.warning("could not send %s(%s): %s; the tick will re-send it", task, arg, exc)
        else:
            if down:
                with self._lock:
                    self._down_until = 0.0
