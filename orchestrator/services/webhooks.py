"""Webhook subscriptions per account, and the account's event history (docs/HOOKS.md). Shared by the REST
API (`/v2/patchaas/{alias}/webhooks`, `/v2/patchaas/{alias}/events`: orchestrator/entrypoints/rest/webhooks.py)
and the CLI (`patchaas webhook …`: orchestrator/entrypoints/cli/webhooks.py).

A subscription is a URL, a format (generic JSON, Slack, Microsoft Teams), the event kinds it wants and a
signing secret. The secret is sealed at rest or named by a reference (orchestrator/engine/webhook_secrets.py)
and shown once: in the answer that creates the subscription, when patchaas generated it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain import event_log as kinds_mod
from orchestrator.domain import naming, webhooks
from orchestrator.engine import event_log, webhook_secrets
from orchestrator.persistence import event_models, models
from orchestrator.services.errors import Conflict, NotFound, ServiceError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_URL = 2000
FAMILIES = frozenset(k.split(".")[0] for k in kinds_mod.KINDS)
SUB = event_models.WebhookSubscription
DELIVERY = event_models.WebhookDelivery


@dataclass(frozen=True)
class WebhookSpec:
    """What an operator asks for."""

    name: str
    url: str
    format: str = "json"
    kinds: Sequence[str] = ("*",)
    secret: str | None = None  # given in clear: sealed with PATCHAAS_WEBHOOK_KEY
    secret_ref: str | None = None  # or a reference the workers read: env:NAME, file:/path


@dataclass(frozen=True)
class WebhookInfo:
    """A subscription as the API and the CLI show it: never its secret (but once, `secret`, at creation)."""

    id: int
    name: str
    url: str  # redacted for Slack and Teams, whose URL is itself the credential
    format: str
    kinds: tuple[str, ...]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    consecutive_failures: int
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    secret_ref: str | None
    created_by: str
    created_at: datetime
    counts: dict[str, int] = field(default_factory=dict)  # deliveries: pending, delivered, failed
    secret: str | None = None


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """Known event kinds, `family.*` or `*`; at least one."""
    wanted = tuple(dict.fromkeys(k.strip() for k in kinds if k.strip()))
    bad = [k for k in wanted if k != "*" and k not in kinds_mod.KINDS
           and not (k.endswith(".*") and k[:-2] in FAMILIES)]
    if bad or not wanted:
        raise ServiceError(f"unknown event kind(s) {', '.join(bad) or '(none given)'}; known: *, "
                           f"{', '.join(sorted(f + '.*' for f in FAMILIES))}, {', '.join(kinds_mod.KINDS)}")
    return wanted


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if (len(url) > MAX_URL or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() for c in url) or parts.username or parts.password):
        raise ServiceError(f"the webhook URL must be an http(s) URL of at most {MAX_URL} characters, without "
                           "spaces or user:password@")
    return url


def display_url(url: str, fmt: str) -> str:
    """The URL as answered: a Slack or Teams webhook URL is a credential, so only its origin is shown."""
    if fmt == "json":
        return url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


class WebhookService:
    """Create, list, read, enable and delete subscriptions; page the event history."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], datetime], keys: str | None) -> None:
        self.sessions = sessions
        self.clock = clock
        self.keys = keys

    def create(self, alias: str, spec: WebhookSpec, by: str) -> WebhookInfo:
        alias = naming.check_alias(alias)
        if not NAME_RE.match(spec.name):
            raise ServiceError("a webhook name has 1 to 100 letters, digits or . _ -, starting with a letter or digit")
        if spec.format not in webhooks.FORMATS:
            raise ServiceError(f"unknown format {spec.format!r}; known: {', '.join(webhooks.FORMATS)}")
        if spec.secret and spec.secret_ref:
            raise ServiceError("give a secret or a secretRef, not both")
        url, wanted = check_url(spec.url), check_kinds(spec.kinds)
        shown: str | None = None
        sealed: str | None = None
        try:
            ref = webhook_secrets.check_ref(spec.secret_ref) if spec.secret_ref else None
            if ref is None:
                secret = webhook_secrets.check_secret(spec.secret) if spec.secret else webhook_secrets.generate()
                shown = None if spec.secret else secret
                sealed = webhook_secrets.seal(secret, self.keys)
        except (ValueError, webhook_secrets.SecretUnavailable) as exc:
            raise ServiceError(str(exc)) from None
        now = self.clock()
        try:
            with self.sessions.begin() as session:
                if session.get(models.Account, alias) is None:
                    raise NotFound(f"account {alias} not found")
                row = SUB(account_alias=alias, name=spec.name, url=url, format=spec.format, kinds=list(wanted),
                          secret_sealed=sealed, secret_ref=ref, enabled=True, consecutive_failures=0,
                          created_by=by[:200], created_at=now, updated_at=now)
                session.add(row)
                session.flush()
                event_log.record(session, alias, "webhook.created", now, actor=by, payload=_about(row))
                info = _info(row, {}, shown)
        except IntegrityError:
            raise Conflict(f"account {alias} already has a webhook named {spec.name!r}") from None
        return info

    def list_webhooks(self, alias: str) -> list[WebhookInfo]:
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            rows = session.scalars(sa.select(SUB).where(SUB.account_alias == alias).order_by(SUB.id)).all()
            counts = _counts(session, [r.id for r in rows])
            return [_info(r, counts.get(r.id, {})) for r in rows]

    def get(self, alias: str, webhook_id: int) -> WebhookInfo:
        with self.sessions() as session:
            row = self._row(session, alias, webhook_id)
            return _info(row, _counts(session, [row.id]).get(row.id, {}))

    def find(self, alias: str, ident: str) -> int:
        """A subscription id from an id or a name."""
        if ident.strip().isdigit():
            return int(ident)
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            found = session.scalar(sa.select(SUB.id).where(SUB.account_alias == alias, SUB.name == ident.strip()))
        if found is None:
            raise NotFound(f"webhook {ident} not found")
        return int(found)

    def delete(self, alias: str, webhook_id: int, by: str | None = None) -> WebhookInfo:
        """Forget the subscription and its pending deliveries; answers it as it was."""
        with self.sessions.begin() as session:
            row = self._row(session, alias, webhook_id, for_update=True)
            info = _info(row, _counts(session, [row.id]).get(row.id, {}))
            event_log.record(session, row.account_alias, "webhook.deleted", self.clock(), actor=by, payload=_about(row))
            session.delete(row)
        return info

    def enable(self, alias: str, webhook_id: int, by: str | None = None) -> WebhookInfo:
        """Enable a disabled subscription again: its pending deliveries resume (those given up stay so)."""
        now = self.clock()
        with self.sessions.begin() as session:
            row = self._row(session, alias, webhook_id, for_update=True)
            if not row.enabled:
                row.enabled, row.disabled_reason, row.disabled_at, row.updated_at = True, None, None, now
                row.consecutive_failures, row.failing_since = 0, None
                event_log.record(session, row.account_alias, "webhook.enabled", now, actor=by, payload=_about(row))
            session.flush()
            return _info(row, _counts(session, [row.id]).get(row.id, {}))

    def events(self, alias: str, after: int = 0, limit: int = 100, kinds: Sequence[str] = (),
               execution_id: str | None = None) -> list[webhooks.EventView]:
        """The account's event history after the event `after` (its `sequence`), oldest first."""
        alias = naming.check_alias(alias)
        wanted = check_kinds(kinds) if kinds else ()
        with self.sessions() as session:
            return event_log.page(session, alias, after, limit, () if "*" in wanted else wanted, execution_id)

    def _row(self, session: Session, alias: str, webhook_id: int,
             for_update: bool = False) -> event_models.WebhookSubscription:
        alias = naming.check_alias(alias)
        row = session.get(SUB, webhook_id, with_for_update=for_update)
        if row is None or row.account_alias != alias:
            raise NotFound(f"webhook {webhook_id} not found")
        return row


def _about(row: event_models.WebhookSubscription) -> dict[str, object]:
    return {"webhookId": row.id, "name": row.name, "format": row.format, "kinds": list(row.kinds or []),
            "url": display_url(row.url, row.format)}


def _counts(session: Session, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    if not ids:
        return {}
    state = sa.case((DELIVERY.delivered_at.is_not(None), "delivered"), (DELIVERY.failed_at.is_not(None), "failed"),
                    else_="pending")
    found: dict[int, dict[str, int]] = {i: {"pending": 0, "delivered": 0, "failed": 0} for i in ids}
    for sub_id, name, n in session.execute(sa.select(DELIVERY.subscription_id, state, sa.func.count())
                                           .where(DELIVERY.subscription_id.in_(ids))
                                           .group_by(DELIVERY.subscription_id, state)):
        found[sub_id][name] = int(n)
    return found


def _info(row: event_models.WebhookSubscription, counts: dict[str, int], secret: str | None = None) -> WebhookInfo:
    return WebhookInfo(
        id=row.id, name=row.name, url=display_url(row.url, row.format), format=row.format,
        kinds=tuple(row.kinds or ()), enabled=row.enabled, disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at, consecutive_failures=row.consecutive_failures, failing_since=row.failing_since,
        last_success_at=row.last_success_at, last_failure_at=row.last_failure_at, last_error=row.last_error,
        secret_ref=row.secret_ref, created_by=row.created_by, created_at=row.created_at, counts=dict(counts),
        secret=secret,
    )
