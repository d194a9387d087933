"""Customer emails through an outbox: a row per (execution, kind) written in the transition's transaction,
delivered over SMTP after commit by a dispatcher that claims the row, sends, and marks it sent.

SMTP has no exactly-once: a crash between the server's 250 and our commit sends again. Every message of
a row carries the same Message-ID (`<execution.kind@patchaas>`), the key mail systems deduplicate on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.contentmanager import _encode_text  # set_content's own encoder (the bytes: a test)
from email.message import EmailMessage
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.domain import health_points, messages
from orchestrator.persistence import models

REDRIVE_GROWTH = 8  # an email unsent for long is re-sent at most every 8 x redrive (as executions are)


def message_id(execution_id: str, kind: str) -> str:
    """The stable Message-ID of an outbox row."""
    return f"<{execution_id}.{kind}@patchaas>"


def enqueue(
    session: Session, execution: models.Execution, kind: str, now: datetime, redrive: timedelta = timedelta(seconds=30)
) -> models.Outbox | None:
    """Queue the `kind` email of `execution` (start or end) in the caller's transaction; once only. The
    caller hands it to a dispatcher after commit; the tick leaves it alone for `redrive`."""
    exists = session.scalar(
        sa.select(models.Outbox.id).where(
            models.Outbox.execution_id == execution.id, models.Outbox.kind == kind
        )
    )
    if exists is not None:
        return None
    account = session.get(models.Account, execution.account_alias)
    recipient = account.email if account else "unknown@invalid"
    subject, body = compose(session, execution, kind)
    row = models.Outbox(
        execution_id=execution.id,
        kind=kind,
        recipient=recipient,
        subject=subject,
        body=body,
        message_id=message_id(execution.id, kind),
        created_at=now,
        dispatched_until=now + redrive,
        attempts=0,
    )
    session.add(row)
    session.flush()
    return row


def enqueue_many(
    session: Session, items: Sequence[tuple[Any, str]], now: datetime, redrive: timedelta = timedelta(seconds=30)
) -> list[int]:
    """`enqueue` for many (execution, kind) pairs in the caller's transaction, in four statements whatever
    their number: the outbox rows already there, the accounts, the patches of the end emails, one INSERT.
    `execution` is a model or a row of the executions table; the outbox ids queued, in `items` order."""
    if not items:
        return []
    ids = sorted({execution.id for execution, _ in items})
    outbox = models.Outbox.__table__
    there = {(r.execution_id, r.kind) for r in session.execute(
        sa.select(outbox.c.execution_id, outbox.c.kind).where(outbox.c.execution_id.in_(ids)))}
    wanted: list[tuple[Any, str]] = []
    for execution, kind in items:
        if (execution.id, kind) not in there:
            there.add((execution.id, kind))
            wanted.append((execution, kind))
    if not wanted:
        return []
    aliases = sorted({execution.account_alias for execution, _ in wanted})
    emails = {r.alias: r.email for r in session.execute(
        sa.select(models.Account.alias, models.Account.email).where(models.Account.alias.in_(aliases)))}
    ending = sorted({execution.id for execution, kind in wanted if kind != "start"})
    patches: dict[str, list[Any]] = {i: [] for i in ending}
    if ending:
        table = models.Patch.__table__
        for patch in session.execute(
                sa.select(table).where(table.c.execution_id.in_(ending)).order_by(table.c.id)):
            patches[patch.execution_id].append(patch)
    rows = []
    for execution, kind in wanted:
        if kind == "start":
            subject, body = compose(session, execution, kind)  # no query for a start email
        else:
            subject, body = compose_end(execution, patches[execution.id])
        rows.append({
            "execution_id": execution.id, "kind": kind,
            "recipient": emails[execution.account_alias] if execution.account_alias in emails else "unknown@invalid",
            "subject": subject, "body": body, "message_id": message_id(execution.id, kind),
            "created_at": now, "dispatched_until": now + redrive, "attempts": 0,
        })
    return list(session.execute(
        sa.insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True), rows).scalars())


def compose(session: Session, execution: models.Execution, kind: str) -> tuple[str, str]:
    """Subject and body of the start or end email."""
    server = execution.server_name
    if kind == "start":
        subject = f"Patching started on {server} (execution {execution.id})"
        body = (
            f"Patching of {server} has started (execution {execution.id}).\n\n"
            "The server is put in maintenance mode and will be rebooted as many times as the updates need.\n"
            "You will receive another email when patching has ended.\n"
        )
        return subject, body
    patches = session.scalars(
        sa.select(models.Patch).where(models.Patch.execution_id == execution.id).order_by(models.Patch.id)
    ).all()
    return compose_end(execution, patches)


def compose_end(execution: Any, patches: Sequence[Any]) -> tuple[str, str]:
    """Subject and body of the end email of `execution` (a model or a row of its columns), given its patch
    rows in id order (`enqueue_many` reads them for many executions in one query)."""
    server = execution.server_name
    installed = [p for p in patches if p.status == "completed"]
    failed = [p for p in patches if p.status == "failed"]
    status = execution.state
    subject = f"Patching {status} on {server} (execution {execution.id})"
    lines = [
        f"Patching of {server} has ended: {status}.",
        f"Execution {execution.id}, {execution.cycle} cycle(s), started {execution.started_at:%Y-%m-%d %H:%M:%S} UTC"
        + (f", ended {execution.ended_at:%Y-%m-%d %H:%M:%S} UTC." if execution.ended_at else "."),
        "",
        f"Installed ({len(installed)}):",
        *(f"  - {p.kb} {p.title}" for p in installed),
    ]
    if failed:
        lines += ["", "Failed attempts:"]
        lines += [f"  - {p.kb} cycle {p.cycle}: {p.end_message}" for p in failed]
    attention = dict(execution.quarantined or {})
    if execution.failure_reason or attention:
        lines += ["", "Needs attention:"]
        if execution.failure_reason:
            lines.append(f"  - {execution.failure_reason}")
        lines += [f"  - {kb}: {why}" for kb, why in sorted(attention.items())]
    if health_points.HEALTH_HOLD in (execution.failure_reason or ""):
        lines += ["", "Maintenance mode was left ON on purpose: a health check failed after patching and the run's "
                      "policy is onHealthFailure fail. Turn it off in the control portal once the server is healthy."]
    elif "cleanup stopped" in (execution.failure_reason or ""):
        lines += ["", "Maintenance mode could NOT be turned off: check the server in the control portal."]
    else:
        lines += ["", "Maintenance mode was turned off at the end of the run."]
    lines.append(messages.execution_end(status, execution.failure_reason))
    return subject, "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=4096)
def _header(name: str, value: str) -> Any:
    """A header parsed once (the sender, the account's address, the MIME headers): the email package
    parses every header it is given (0.1-0.3 ms each), and an email is built for each delivery."""
    return policy.default.header_factory(name, value)


def build_message(row: models.Outbox, sender: str) -> EmailMessage:
    """The email of an outbox row: the headers and the payload `set_content` gives it (its own encoder
    chooses 7bit, 8bit, quoted-printable or base64), with the repeated headers parsed once (`_header`): the
    same bytes in about a third of the time (tests/unit/engine/test_email_build.py)."""
    cte, payload = _encode_text(row.body, "utf-8", None, policy.default)
    message = EmailMessage()
    message["From"] = _header("From", sender)
    message["To"] = _header("To", row.recipient)
    message["Subject"] = row.subject
    message["Message-ID"] = row.message_id
    message["X-Patchaas-Execution"] = row.execution_id
    message["X-Patchaas-Kind"] = _header("X-Patchaas-Kind", row.kind)
    message["Content-Type"] = _header("Content-Type", 'text/plain; charset="utf-8"')  # what set_content writes
    message["Content-Transfer-Encoding"] = _header("Content-Transfer-Encoding", cte)
    message["MIME-Version"] = _header("MIME-Version", "1.0")
    message.set_payload(payload)
    return message


@dataclass(frozen=True)
class Delivery:
    """What one delivery attempt did."""

    outbox_id: int
    sent: bool
    error: str | None = None


def claim(session: Session, outbox_id: int, now: datetime, hold: timedelta) -> models.Outbox | None:
    """Take an unsent row for `hold`, so two dispatchers do not send it at once."""
    table = models.Outbox.__table__
    result = session.execute(
        sa.update(table)
        .where(
            table.c.id == outbox_id,
            table.c.sent_at.is_(None),
            sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
        )
        .values(claimed_until=now + hold, attempts=table.c.attempts + 1)
    )
    if result.rowcount != 1:
        return None
    return session.get(models.Outbox, outbox_id, populate_existing=True)


def mark(session: Session, outbox_id: int, now: datetime, error: str | None, retry_in: timedelta) -> None:
    """Record a delivery: sent, or failed and to be retried after `retry_in`."""
    table = models.Outbox.__table__
    if error is None:
        values = {"sent_at": now, "claimed_until": None, "last_error": None}
    else:
        values = {"claimed_until": now + retry_in, "last_error": error[:2000]}
    session.execute(sa.update(table).where(table.c.id == outbox_id).values(**values))


def claim_unsent(session: Session, now: datetime, redrive: timedelta, limit: int) -> Sequence[int]:
    """Rows the tick should hand to the dispatcher again (not sent, not being sent, not just dispatched);
    marked dispatched so the next ticks do not send them again meanwhile: for `redrive` at first, then
    for about as long as the row has waited to be sent, up to `REDRIVE_GROWTH` x `redrive`, as the due
    executions are (executions.claim_due): an email still unsent long after it was handed off is behind a
    backed-up queue, not lost, and re-sending it every `redrive` only copies that queue (100,000 servers:
    82,000 email ids queued in 2,000 messages for a few thousand unsent rows). Oldest first in the order
    of the partial index `ix_outbox_unsent` (created_at, unsent rows only), so the scan reads unsent rows
    and stops at `limit`: ordered by id it walked the primary key past every email ever sent, or sorted
    every unsent row, on every tick."""
    table = models.Outbox.__table__
    rows = (
        session.execute(
            sa.select(table.c.id, table.c.created_at, table.c.claimed_until)
            .where(
                table.c.sent_at.is_(None),
                sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
                sa.or_(table.c.dispatched_until.is_(None), table.c.dispatched_until < now),
            )
            .order_by(table.c.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .all()
    )
    windows: dict[int, list[int]] = {}
    for row in rows:
        since = max(row.created_at, row.claimed_until or row.created_at)  # claimable since (a retry's backoff)
        growth = max(1, min(REDRIVE_GROWTH, int((now - since) / redrive)))
        windows.setdefault(growth, []).append(row.id)
    for growth, ids in windows.items():
        session.execute(sa.update(table).where(table.c.id.in_(ids)).values(dispatched_until=now + redrive * growth))
    ids = [row.id for row in rows]
    return ids
