"""Webhook deliveries, like the emails of the outbox: at least once, with a stable event id.

The tick (`WebhookOutbox.tick`, called by `Engine.tick`) fans new events out into deliveries and hands the
due ones to workers (`dispatcher.deliver_webhooks`, the `patchaas.deliver_webhooks` task), marking them
dispatched for `redrive` (SELECT … FOR UPDATE SKIP LOCKED: two ticks never hand off the same delivery). A
worker claims them (one UPDATE … RETURNING that sets `claimed_until`: two workers never send the same
delivery at once), signs and POSTs each, then marks it delivered, or due again after an exponential backoff,
or given up after `max_age` (24 h). A crash between the POST and the mark leaves the claim to expire; the
tick hands the delivery off again and it is sent again, with the same event id (receivers deduplicate).

A subscription whose every attempt has failed for `disable_after` (24 h, at least `disable_min_failures` in a
row) is disabled with the reason, which the API shows; a `webhook.disabled` event tells the account.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.domain import webhooks
from orchestrator.engine import event_log, webhook_secrets
from orchestrator.ports import Hooks, WebhookSender

log = logging.getLogger(__name__)
T = TypeVar("T")
DELIVERIES, SUBSCRIPTIONS, EVENTS = event_log.DELIVERIES, event_log.SUBSCRIPTIONS, event_log.EVENTS


@dataclass(frozen=True)
class WebhookConfig:
    """Timings and limits (from Settings: PATCHAAS_WEBHOOK_*)."""

    keys: str | None = None  # PATCHAAS_WEBHOOK_KEY: the Fernet key(s) that open sealed secrets
    hold: timedelta = timedelta(minutes=2)  # a claimed delivery is not sent again for this long (> the batch)
    redrive: timedelta = timedelta(seconds=30)  # a handed-off delivery is not handed off again for this long
    retry_base: timedelta = timedelta(seconds=10)
    retry_cap: timedelta = timedelta(hours=1)
    max_age: timedelta = timedelta(hours=24)  # retried for this long after its first attempt, then given up
    disable_after: timedelta = timedelta(hours=24)
    disable_min_failures: int = 5
    batch: int = 20  # deliveries per task message
    threads: int = 8  # parallel POSTs of one task
    tick_batch: int = 500
    tick_rounds: int = 20
    early: timedelta = timedelta(milliseconds=250)


@dataclass(frozen=True)
class Attempt:
    """What one attempt of one delivery did."""

    delivery_id: int
    event_id: str
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


@dataclass
class _Job:
    delivery_id: int
    subscription_id: int
    attempts: int
    first_at: datetime
    event_id: str
    url: str = ""
    body: bytes = b""
    headers: dict[str, str] | None = None
    status: int | None = None
    error: str | None = None


class WebhookOutbox:
    """Fan-out, hand-off and delivery of webhook deliveries over the engine's transactions."""

    def __init__(self, transaction: Callable[[Callable[[Session], Any]], Any], sender: WebhookSender,
                 clock: Callable[[], datetime], config: WebhookConfig, hooks: Hooks | None = None) -> None:
        self.transaction = transaction  # `Stepper.transaction`: rides out a database blip
        self.sender = sender
        self.clock = clock
        self.config = config
        self.hooks = hooks

    # --- the tick -----------------------------------------------------------------------------

    def tick(self, dispatcher: Any) -> int:
        """Fan new events out, then hand the due deliveries to workers; how many were handed off. A
        dispatcher without `deliver_webhooks` (tests, a bare engine) gets them delivered here and now."""
        cfg = self.config
        now = self.clock()
        for _ in range(cfg.tick_rounds):
            if self.transaction(lambda session: event_log.fan_out(session, now, cfg.tick_batch)) < cfg.tick_batch:
                break
        due: list[int] = self.transaction(lambda session: claim_due(session, now, cfg.redrive, cfg.tick_batch))
        hand = getattr(dispatcher, "deliver_webhooks", None)
        for start in range(0, len(due), cfg.batch):
            part = due[start:start + cfg.batch]
            if hand is None:
                self.deliver(part)
            else:
                hand(part)
        return len(due)

    # --- one task: claim, send, mark ------------------------------------------------------------

    def deliver(self, ids: Sequence[int]) -> list[Attempt]:
        """Send the deliveries of `ids` that are due and nobody else is sending."""
        now = self.clock()
        jobs: list[_Job] = self.transaction(lambda session: self._claim(session, ids, now))
        if not jobs:
            return []
        sendable = [j for j in jobs if j.error is None]
        if len(sendable) > 1 and self.config.threads > 1:
            with ThreadPoolExecutor(min(self.config.threads, len(sendable)), thread_name_prefix="webhook") as pool:
                list(pool.map(self._send, sendable))
        else:
            for job in sendable:
                self._send(job)
        self.transaction(lambda session: self._mark(session, jobs))
        return [Attempt(j.delivery_id, j.event_id, j.status, j.error) for j in jobs]

    def _claim(self, session: Session, ids: Sequence[int], now: datetime) -> list[_Job]:
        enabled = sa.select(SUBSCRIPTIONS.c.id).where(SUBSCRIPTIONS.c.enabled.is_(True))
        rows = session.execute(
            sa.update(DELIVERIES)
            .where(DELIVERIES.c.id.in_(sorted(set(ids))), DELIVERIES.c.delivered_at.is_(None),
                   DELIVERIES.c.failed_at.is_(None), DELIVERIES.c.next_attempt_at <= now + self.config.early,
                   sa.or_(DELIVERIES.c.claimed_until.is_(None), DELIVERIES.c.claimed_until < now),
                   DELIVERIES.c.subscription_id.in_(enabled))
            .values(claimed_until=now + self.config.hold, attempts=DELIVERIES.c.attempts + 1)
            .returning(DELIVERIES.c.id, DELIVERIES.c.subscription_id, DELIVERIES.c.event_id, DELIVERIES.c.attempts,
                       DELIVERIES.c.created_at)
        ).all()
        if not rows:
            return []
        events = {r.id: event_log.view_of(r) for r in session.execute(
            sa.select(EVENTS).where(EVENTS.c.id.in_({r.event_id for r in rows})))}
        subscriptions = {s.id: s for s in session.execute(
            sa.select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id.in_({r.subscription_id for r in rows})))}
        stamp = int(now.timestamp())
        jobs = []
        for r in sorted(rows, key=lambda r: r.id):
            event, sub = events[r.event_id], subscriptions[r.subscription_id]
            job = _Job(r.id, r.subscription_id, r.attempts, r.created_at, event.event_id, sub.url)
            try:
                secret = webhook_secrets.resolve(sub.secret_sealed, sub.secret_ref, self.config.keys)
                job.body = webhooks.body(event, sub.format)
                job.headers = webhooks.headers(event, r.id, r.attempts, secret, job.body, stamp)
            except (webhook_secrets.SecretUnavailable, ValueError) as exc:
                job.error = f"not sent: {exc}"
            jobs.append(job)
        return jobs

    def _send(self, job: _Job) -> None:
        try:
            job.status = self.sender.post(job.url, job.body, job.headers or {})
            job.error = webhooks.describe_status(job.status)
        except Exception as exc:  # refused, timed out, TLS, a blocked address: retried later
            job.error = f"{type(exc).__name__}: {exc}"[:500]
        if job.error is not None:
            log.warning("webhook delivery %s (event %s, attempt %d) failed: %s", job.delivery_id, job.event_id,
                        job.attempts, job.error)
        if self.hooks is not None:
            self.hooks.reached("after_webhook", str(job.delivery_id), "deliver")  # sent, not marked: a crash point

    def _mark(self, session: Session, jobs: Sequence[_Job]) -> None:
        cfg = self.config
        now = self.clock()
        for job in jobs:
            if job.error is None:
                session.execute(sa.update(DELIVERIES).where(DELIVERIES.c.id == job.delivery_id).values(
                    delivered_at=now, claimed_until=None, last_status=job.status, last_error=None))
                session.execute(sa.update(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == job.subscription_id).values(
                    consecutive_failures=0, failing_since=None, last_success_at=now))
                continue
            retry_at = webhooks.next_attempt(job.attempts, job.first_at, now, cfg.retry_base, cfg.retry_cap,
                                             cfg.max_age)
            values: dict[str, Any] = {"claimed_until": None, "dispatched_until": None, "last_status": job.status,
                                      "last_error": job.error[:2000]}
            if retry_at is None:
                values.update(failed_at=now, last_error=f"given up after {job.attempts} attempts: {job.error}"[:2000])
            else:
                values["next_attempt_at"] = retry_at
            session.execute(sa.update(DELIVERIES).where(DELIVERIES.c.id == job.delivery_id,
                                                        DELIVERIES.c.delivered_at.is_(None)).values(**values))
            self._failed(session, job, now)

    def _failed(self, session: Session, job: _Job, now: datetime) -> None:
        """Count the failure on the subscription; disable it when it has kept failing."""
        cfg = self.config
        sub = session.execute(
            sa.update(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == job.subscription_id)
            .values(consecutive_failures=SUBSCRIPTIONS.c.consecutive_failures + 1,
                    failing_since=sa.func.coalesce(
                        SUBSCRIPTIONS.c.failing_since, sa.literal(now, SUBSCRIPTIONS.c.failing_since.type)),
                    last_failure_at=now, last_error=(job.error or "")[:2000])
            .returning(SUBSCRIPTIONS.c.consecutive_failures, SUBSCRIPTIONS.c.failing_since, SUBSCRIPTIONS.c.enabled,
                       SUBSCRIPTIONS.c.name, SUBSCRIPTIONS.c.account_alias)
        ).one_or_none()
        if sub is None or not sub.enabled:
            return
        reason = webhooks.disable_reason(sub.consecutive_failures, sub.failing_since, now, cfg.disable_after,
                                         cfg.disable_min_failures)
        if reason is None:
            return
        done = session.execute(sa.update(SUBSCRIPTIONS).where(
            SUBSCRIPTIONS.c.id == job.subscription_id, SUBSCRIPTIONS.c.enabled.is_(True)).values(
            enabled=False, disabled_reason=f"{reason} (last error: {job.error})"[:2000], disabled_at=now,
            updated_at=now))
        if done.rowcount == 1:  # type: ignore[attr-defined]
            log.warning("webhook subscription %s (%s) disabled: %s", job.subscription_id, sub.name, reason)
            event_log.record(session, sub.account_alias, "webhook.disabled", now, payload={
                "webhookId": job.subscription_id, "name": sub.name, "reason": reason, "lastError": job.error})


def claim_due(session: Session, now: datetime, redrive: timedelta, limit: int) -> list[int]:
    """The tick: due deliveries of enabled subscriptions, not being sent nor just handed off, locked with
    SKIP LOCKED and marked handed off for `redrive`."""
    ids = list(session.execute(
        sa.select(DELIVERIES.c.id)
        .join(SUBSCRIPTIONS, SUBSCRIPTIONS.c.id == DELIVERIES.c.subscription_id)
        .where(DELIVERIES.c.delivered_at.is_(None), DELIVERIES.c.failed_at.is_(None),
               DELIVERIES.c.next_attempt_at <= now, SUBSCRIPTIONS.c.enabled.is_(True),
               sa.or_(DELIVERIES.c.dispatched_until.is_(None), DELIVERIES.c.dispatched_until < now),
               sa.or_(DELIVERIES.c.claimed_until.is_(None), DELIVERIES.c.claimed_until < now))
        .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id).limit(limit)
        .with_for_update(of=DELIVERIES, skip_locked=True)
    ).scalars())
    if ids:
        session.execute(sa.update(DELIVERIES).where(DELIVERIES.c.id.in_(ids)).values(dispatched_until=now + redrive))
    return ids
