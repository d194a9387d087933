"""The engine the composition root builds: one step at a time (steps.py), plus the tick that hands due
rows and unsent emails to the dispatcher, and the delivery of one email of the outbox."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from orchestrator.engine import handoff, notifications
from orchestrator.engine.config import compute_backoff
from orchestrator.engine.steps import Stepper
from orchestrator.engine.webhooks import WebhookOutbox

log = logging.getLogger(__name__)


class Engine(Stepper):
    """Advances executions one durable step at a time; ticks; delivers emails."""

    webhooks: WebhookOutbox | None = None  # the webhook outbox (engine/webhooks.py), wired by bootstrap.build

    # --- the tick -----------------------------------------------------------------------------

    def tick(self) -> tuple[int, int]:
        """Claim due executions and unsent emails and hand them to the dispatcher; (steps, emails)."""
        started = time.perf_counter()
        now = self.clock()
        steps = handoff.dispatch_due(self, now)  # due and soon-due rows, with countdowns (handoff.py)
        emails = self.transaction(
            lambda session: notifications.claim_unsent(session, now, self.config.redrive, self.config.tick_batch)
        )
        handoff.hand_off_emails(self.dispatcher, emails)  # batch messages when the dispatcher sends them
        if self.webhooks is not None:  # new events fanned out to subscriptions, due deliveries handed off
            try:
                self.webhooks.tick(self.dispatcher)
            except sa_exc.OperationalError as exc:  # never holds the steps back: the next tick tries again
                log.warning("webhook hand-off skipped, the database is unreachable: %s", str(exc).splitlines()[0])
            except Exception:
                log.exception("webhook hand-off failed; the next tick retries")
        self.telemetry.tick(time.perf_counter() - started, steps, len(emails))
        return steps, len(emails)

    # --- emails -------------------------------------------------------------------------------

    def deliver(self, outbox_id: int) -> notifications.Delivery:
        """Send one outbox row if nobody else is sending it; mark it sent, or schedule a retry."""
        now = self.clock()

        def claim(session: Session) -> tuple[Any, int] | None:
            row = notifications.claim(session, outbox_id, now, self.config.email_hold)
            return None if row is None else (notifications.build_message(row, self.mail_from), row.attempts)

        claimed = self.transaction(claim)
        if claimed is None:
            return notifications.Delivery(outbox_id, sent=False, error="already sent or being sent")
        message, attempts = claimed
        error: str | None = None
        try:
            self.mailer.send(message)
        except Exception as exc:  # any SMTP or socket failure: the row stays queued
            error = f"{type(exc).__name__}: {exc}"
            log.warning("email %s not sent (attempt %d): %s", outbox_id, attempts, error)
        self.hooks.reached("after_email", str(outbox_id), "deliver")
        retry_in = compute_backoff(attempts, self.config.retry_backoff, self.config.max_backoff)
        # sent but not marked would send it again after the hold: ride out a database blip here
        self.transaction(lambda session: notifications.mark(session, outbox_id, self.clock(), error, retry_in))
        return notifications.Delivery(outbox_id, sent=error is None, error=error)
