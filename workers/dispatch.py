"""Hands execution and outbox ids to Celery. A failed send is logged, never raised: the work is already
committed in the database and the tick re-sends it."""

from __future__ import annotations

import logging

from celery import Celery

from workers import app as app_mod

log = logging.getLogger(__name__)


class CeleryDispatcher:
    """The engine's Dispatcher over a Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def advance(self, execution_id: str, delay: float) -> None:
        self._send(app_mod.ADVANCE, execution_id, delay)

    def deliver(self, outbox_id: int) -> None:
        self._send(app_mod.DELIVER_EMAIL, outbox_id, 0.0)

    def _send(self, task: str, arg: object, delay: float) -> None:
        try:
            self.app.send_task(task, args=[arg], countdown=delay or None, retry=False)
        except Exception as exc:  # the broker is down: the tick re-drives from the database
            log.warning("could not send %s(%s): %s; the tick will re-send it", task, arg, exc)
