"""Handing ids to workers: due executions (the tick's `dispatch_due`, batch messages of up to `size`) and
outbox rows (one message each, or `deliver_many` for many, sent over one SMTP connection)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.engine import batch, executions, notifications
from orchestrator.engine.config import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SPREAD, compute_backoff
from orchestrator.engine.steps import Stepper
from orchestrator.persistence import models

log = logging.getLogger(__name__)


def hand_off_emails(dispatcher: Any, ids: Sequence[int], size: int = DEFAULT_BATCH_SIZE,
                    spread: int = DEFAULT_BATCH_SPREAD) -> None:
    """Give outbox ids to workers: one message each for a few, batch messages (`deliver_many`, when the
    dispatcher has it) for more, as `hand_off` does for executions."""
    ids = list(ids)
    many = getattr(dispatcher, "deliver_many", None)
    chunk = max(1, min(size, len(ids) // max(1, spread)))
    if many is None or chunk == 1:
        for outbox_id in ids:
            dispatcher.deliver(outbox_id)
        return
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        if len(part) == 1:
            dispatcher.deliver(part[0])
        else:
            many(part)


def deliver_many(engine: Stepper, ids: Sequence[int]) -> list[notifications.Delivery]:
    """`Engine.deliver` for many outbox rows: one transaction claims them all, each is sent (the mailer's
    own `send`), one transaction marks them all. What a crash between send and mark does is unchanged: the
    claim's hold runs out and the row is sent again, with the same Message-ID."""
    now = engine.clock()
    cfg = engine.config

    def claim(session: Session) -> list[tuple[int, Any, int]]:
        rows = batch.claim_emails(session, ids, now, cfg.email_hold)
        return [(row.id, notifications.build_message(row, engine.mail_from), row.attempts) for row in rows]

    claimed = engine.transaction(claim)
    taken = {outbox_id for outbox_id, _, _ in claimed}
    results = [notifications.Delivery(i, sent=False, error="already sent or being sent")
               for i in ids if i not in taken]
    marks: list[tuple[int, str | None, timedelta]] = []
    session = getattr(engine.mailer, "session", None)  # one SMTP connection for the batch, when it has one
    with session() if session is not None and claimed else nullcontext(engine.mailer.send) as send:
        for outbox_id, message, attempts in claimed:
            error: str | None = None
            try:
                send(message)
            except Exception as exc:  # any SMTP or socket failure: the row stays queued
                error = f"{type(exc).__name__}: {exc}"
                log.warning("email %s not sent (attempt %d): %s", outbox_id, attempts, error)
            engine.hooks.reached("after_email", str(outbox_id), "deliver")
            marks.append((outbox_id, error, compute_backoff(attempts, cfg.retry_backoff, cfg.max_backoff)))
            results.append(notifications.Delivery(outbox_id, sent=error is None, error=error))

    def mark(session: Session) -> None:
        at = engine.clock()
        sent = sorted(outbox_id for outbox_id, error, _ in marks if error is None)
        if sent:  # what `notifications.mark` writes for a sent row, for all of them in one statement
            table = models.Outbox.__table__
            session.execute(sa.update(table).where(table.c.id.in_(sent))
                            .values(sent_at=at, claimed_until=None, last_error=None))
        for outbox_id, error, retry_in in marks:
            if error is not None:
                notifications.mark(session, outbox_id, at, error, retry_in)

    if marks:
        engine.transaction(mark)
    return results


def hand_off(
    dispatcher: Any, ids: Sequence[str], size: int = DEFAULT_BATCH_SIZE, spread: int = DEFAULT_BATCH_SPREAD,
    delay: float = 0.0,
) -> None:
    """Give `ids` to workers (after `delay` seconds). A few ids go one message each (`advance`), so they
    spread over the worker processes; more go in batch messages (`advance_many`, when the dispatcher has
    it) of up to `size`, at least `spread` of them."""
    ids = list(ids)
    many = getattr(dispatcher, "advance_many", None)
    chunk = max(1, min(size, len(ids) // max(1, spread)))
    if many is None or chunk == 1:
        for execution_id in ids:
            dispatcher.advance(execution_id, delay)
        return
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        if len(part) == 1:
            dispatcher.advance(part[0], delay)
        elif delay > 0:
            many(part, delay)
        else:
            many(part)


def dispatch_due(engine: Stepper, now: datetime) -> int:
    """The tick's hand-off of executions. It claims what is due and what falls due within the short
    countdown (the tick's own period by default), `tick_batch` rows at a time until fewer come back, and
    hands them to workers: what is due at once, the rest with a countdown to its time, in groups as wide
    as the claim's tolerance (`early`), so a timer is handled when it falls due rather than at the next
    tick. A lost message costs `redrive`, as before: the rows stay marked only that long.

    Each claim continues after the last row the previous one took (`after`: a keyset on the due index), so
    a tick of many rounds reads the rows due by `until` once, not once per round; countdowns are taken
    from the clock when the round's rows are handed off, and the tick stops claiming once it has run as
    long as its lookahead (the next tick takes over)."""
    cfg = engine.config
    lookahead = cfg.short_countdown if cfg.tick_lookahead is None else cfg.tick_lookahead
    until = now + lookahead
    width = cfg.early.total_seconds()
    total = 0
    after: tuple[datetime, str] | None = None
    started = time.monotonic()
    for _ in range(cfg.tick_max_rounds):
        at = engine.clock() if after is not None else now

        def claim(session: Session, at: datetime = at, after: tuple[datetime, str] | None = after
                  ) -> list[tuple[str, datetime]]:
            return executions.claim_due_until(session, at, until, cfg.redrive, cfg.tick_batch, after=after)

        rows = engine.transaction(claim)
        total += len(rows)
        if rows:
            after = (rows[-1][1], rows[-1][0])
        handed_at = engine.clock()
        group: list[str] = []
        start = 0.0
        for execution_id, due in rows:
            wait = max(0.0, (due - handed_at).total_seconds())
            if group and wait - start >= width:
                hand_off(engine.dispatcher, group, cfg.batch_size, spread=1, delay=start)  # timers spread already
                group = []
            if not group:
                start = wait
            group.append(execution_id)
        if group:
            hand_off(engine.dispatcher, group, cfg.batch_size, spread=1 if start > 0 else cfg.batch_spread,
                     delay=start)
        if len(rows) < cfg.tick_batch or time.monotonic() - started >= lookahead.total_seconds():
            break
    return total
