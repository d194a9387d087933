"""The event log and its webhooks (migration 0010, docs/HOOKS.md): `events` (an outbox written in the
transaction that decides each fact), `webhook_subscriptions` per account and `webhook_deliveries`, one per
(subscription, event), each claimed, sent and marked like an email of the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.persistence.db import UTCDateTime
from orchestrator.persistence.models import Base, JSONType

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


class Event(Base):
    """One significant fact (orchestrator/domain/event_log.py: KINDS). `id` orders an account's history
    (the `after` cursor of GET …/events); `event_id` is the stable id every delivery of it carries."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_account", "account_alias", "id"),
        sa.Index("ix_events_unfanned", "id", postgresql_where=sa.text("fanned_out_at IS NULL"),
                 sqlite_where=sa.text("fanned_out_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid(), unique=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"))
    kind: Mapped[str] = mapped_column(sa.String(40))
    execution_id: Mapped[str | None] = mapped_column(sa.String(10), index=True)  # no FK: the audit trail stays
    actor: Mapped[str | None] = mapped_column(sa.String(200))  # who caused it, when a person or script did
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    fanned_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # deliveries created (the tick)


class WebhookSubscription(Base):
    """Where an account wants its events POSTed. The signing secret is kept sealed (Fernet, with
    PATCHAAS_WEBHOOK_KEY) in `secret_sealed`, or named by `secret_ref` (env:NAME, file:/path) and read by the
    worker when it signs; it is never answered over the API after creation."""

    __tablename__ = "webhook_subscriptions"
    __table_args__ = (sa.UniqueConstraint("account_alias", "name", name="uq_webhook_subscriptions_account_name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    account_alias: Mapped[str] = mapped_column(sa.ForeignKey("accounts.alias"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    url: Mapped[str] = mapped_column(sa.String(2000))
    format: Mapped[str] = mapped_column(sa.String(8))  # json | slack | teams
    kinds: Mapped[list[str]] = mapped_column(JSONType, default=list)  # event kinds, or ["*"] for all
    secret_sealed: Mapped[str | None] = mapped_column(sa.Text)
    secret_ref: Mapped[str | None] = mapped_column(sa.String(500))
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())  # first failure since the last success
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One event to one subscription: due at `next_attempt_at`, handed to a worker by the tick
    (`dispatched_until`), taken by one sender at a time (`claimed_until`), until delivered or given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_subscription_event"),
        sa.Index("ix_webhook_deliveries_due", "next_attempt_at",
                 postgresql_where=sa.text("delivered_at IS NULL AND failed_at IS NULL"),
                 sqlite_where=sa.text("delivered_at IS NULL AND failed_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subscription_id: Mapped[int] = mapped_column(sa.ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("events.id", ondelete="CASCADE"), index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dispatched_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # given up after the retry period
    last_status: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
