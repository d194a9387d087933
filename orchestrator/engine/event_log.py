"""The event log as an outbox: `record` writes an event row in the caller's transaction (a transition, a
request, a window change), so an event exists exactly when the fact it tells was committed; the tick's
`fan_out` later turns each new event into one delivery per matching webhook subscription.

An event's `event_id` (a UUID) is minted once, at insert: every delivery and every retry of it carries the
same id, which is what receivers deduplicate on (docs/HOOKS.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.domain import event_log, machine, webhooks
from orchestrator.persistence import event_models, models

EVENTS = event_models.Event.__table__
SUBSCRIPTIONS = event_models.WebhookSubscription.__table__
DELIVERIES = event_models.WebhookDelivery.__table__


def row(account: str, fact: event_log.Fact, now: datetime) -> dict[str, Any]:
    """The columns of one event."""
    if fact.kind not in event_log.KINDS:
        raise ValueError(f"unknown event kind {fact.kind!r}")
    return {"event_id": uuid.uuid4(), "account_alias": account, "kind": fact.kind, "execution_id": fact.execution_id,
            "actor": fact.actor[:200] if fact.actor else None, "payload": dict(fact.payload), "created_at": now}


def insert(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Many events in one statement, in the caller's transaction."""
    if rows:
        session.execute(sa.insert(EVENTS), list(rows))


def record(session: Session, account: str, kind: str, now: datetime, *, payload: dict[str, Any] | None = None,
           execution_id: str | None = None, actor: str | None = None) -> None:
    """Write one event in the caller's transaction (rolled back with it)."""
    insert(session, [row(account, event_log.Fact(kind, payload or {}, execution_id, actor), now)])


def record_facts(session: Session, account: str, facts: Iterable[event_log.Fact], now: datetime) -> None:
    insert(session, [row(account, fact, now) for fact in facts])


def of_transition(old: machine.ExecutionView, decision: machine.Decision, account: str,
                  now: datetime) -> list[dict[str, Any]]:
    """The event rows a saved transition implies (run started/ended, cycle ended, KB quarantined, a server
    left in maintenance): steps.py and rounds.py insert them with the save, in its transaction."""
    return [row(account, fact, now) for fact in event_log.of_decision(old, decision)]


def record_transition(session: Session, old: machine.ExecutionView, decision: machine.Decision,
                      now: datetime) -> None:
    """`of_transition` for one saved step (steps.py), with the account read if the view lacks it."""
    facts = event_log.of_decision(old, decision)
    if not facts:
        return
    account = old.account or session.scalar(
        sa.select(models.Execution.account_alias).where(models.Execution.id == old.id))
    if account:
        record_facts(session, account, facts, now)


# --- fan-out: events → deliveries (the tick) ---------------------------------------------------


def wants(kinds: Sequence[str], kind: str) -> bool:
    """Whether a subscription to `kinds` takes an event of `kind` ("*" takes all, "run.*" a family)."""
    return any(k == "*" or k == kind or (k.endswith(".*") and kind.startswith(k[:-1])) for k in kinds)


def fan_out(session: Session, now: datetime, limit: int) -> int:
    """Take up to `limit` events not fanned out yet (FOR UPDATE SKIP LOCKED: two ticks never take the same),
    create one delivery per enabled subscription of the event's account that wants its kind and existed
    when it happened, and mark them fanned out. How many events were taken."""
    taken = session.execute(
        sa.select(EVENTS.c.id, EVENTS.c.account_alias, EVENTS.c.kind, EVENTS.c.created_at)
        .where(EVENTS.c.fanned_out_at.is_(None)).order_by(EVENTS.c.id).limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not taken:
        return 0
    accounts = sorted({e.account_alias for e in taken})
    subscriptions = session.execute(
        sa.select(SUBSCRIPTIONS.c.id, SUBSCRIPTIONS.c.account_alias, SUBSCRIPTIONS.c.kinds, SUBSCRIPTIONS.c.created_at)
        .where(SUBSCRIPTIONS.c.account_alias.in_(accounts), SUBSCRIPTIONS.c.enabled.is_(True))
    ).all()
    rows = [
        {"subscription_id": s.id, "event_id": e.id, "attempts": 0, "next_attempt_at": now, "created_at": now}
        for e in taken for s in subscriptions
        if s.account_alias == e.account_alias and s.created_at <= e.created_at and wants(s.kinds or [], e.kind)
    ]
    if rows:
        insert_deliveries(session, rows)
    session.execute(sa.update(EVENTS).where(EVENTS.c.id.in_([e.id for e in taken])).values(fanned_out_at=now))
    return len(taken)


def insert_deliveries(session: Session, rows: list[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT (subscription, event) DO NOTHING: a repeated fan-out adds nothing."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - the two databases we run on are above
        session.execute(sa.insert(DELIVERIES), rows)
        return
    session.execute(dialect_insert(DELIVERIES).on_conflict_do_nothing(
        index_elements=["subscription_id", "event_id"]), rows)


# --- reading the history ------------------------------------------------------------------------


def view_of(r: Any) -> webhooks.EventView:
    return webhooks.EventView(sequence=r.id, event_id=str(r.event_id), kind=r.kind, account=r.account_alias,
                              execution_id=r.execution_id, actor=r.actor, created_at=r.created_at,
                              payload=dict(r.payload or {}))


def page(session: Session, account: str, after: int, limit: int, kinds: Sequence[str] = (),
         execution_id: str | None = None) -> list[webhooks.EventView]:
    """The account's events with an id above `after`, oldest first."""
    query = sa.select(EVENTS).where(EVENTS.c.account_alias == account, EVENTS.c.id > after)
    if kinds:
        query = query.where(sa.or_(*(EVENTS.c.kind.like(k[:-1] + "%") if k.endswith(".*") else EVENTS.c.kind == k
                                     for k in kinds)))
    if execution_id:
        query = query.where(EVENTS.c.execution_id == execution_id)
    return [view_of(r) for r in session.execute(query.order_by(EVENTS.c.id).limit(limit))]



def record_requests(session: Session, account: str, queued: Iterable[tuple[str, str]], by: str, package_id: str,
                    now: datetime, rollout_id: int | None = None) -> None:
    """One `run.requested` per queued (execution id, server), in the request's transaction: the audit trail
    of who asked for each run."""
    extra: dict[str, Any] = {"rolloutId": rollout_id} if rollout_id is not None else {}
    record_facts(session, account, (event_log.Fact("run.requested", {"server": server, "packageId": package_id,
                                                                     **extra}, execution_id, by)
                                    for execution_id, server in queued), now)
