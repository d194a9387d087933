"""Webhook delivery rules, pure: the signature (Stripe's scheme), the body of an event in each format, the
retry schedule and when a subscription that keeps failing is disabled (docs/HOOKS.md).

The engine (orchestrator/engine/webhooks.py) claims, sends and marks deliveries; this module decides what
is sent and when to try again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchestrator.domain import webhook_formats

EVENT_ID_HEADER = "X-Patchaas-Event-Id"
EVENT_KIND_HEADER = "X-Patchaas-Event-Kind"
DELIVERY_HEADER = "X-Patchaas-Delivery"
ATTEMPT_HEADER = "X-Patchaas-Attempt"
SIGNATURE_HEADER = "X-Patchaas-Signature"
TOLERANCE_SECONDS = 300  # a receiver refuses a signature older (or newer) than this: a replay
FORMATS = ("json", "slack", "teams")


# --- the signature ------------------------------------------------------------------------------


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Patchaas-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. The
    timestamp is inside the signed text, so a captured request cannot be replayed later with a new one."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, now: int, tolerance: int = TOLERANCE_SECONDS) -> bool:
    """What a receiver checks (docs/HOOKS.md has the same in a few lines): a `t` within `tolerance` of now
    and one `v1` equal, in constant time, to the HMAC of "<t>.<body>" (several `v1` while a secret rotates)."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts.get("t", [""])[0])
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))


# --- the body -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventView:
    """One event as a delivery sends it."""

    sequence: int  # the events table's id: the `after` cursor of GET …/events
    event_id: str  # the stable id: the same in every attempt and in every copy
    kind: str
    account: str
    execution_id: str | None
    actor: str | None
    created_at: datetime
    payload: Mapping[str, Any]


def envelope(event: EventView) -> dict[str, Any]:
    """The generic JSON body (and the REST answer of GET …/events)."""
    return {
        "id": event.event_id, "sequence": event.sequence, "kind": event.kind, "account": event.account,
        "executionId": event.execution_id, "actor": event.actor,
        "createdAt": event.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "data": dict(event.payload),
    }


def body(event: EventView, fmt: str) -> bytes:
    """The bytes POSTed for `event` in format `fmt`: the same for every attempt of the same event."""
    if fmt == "slack":
        document = webhook_formats.slack(event.kind, envelope(event))
    elif fmt == "teams":
        document = webhook_formats.teams(event.kind, envelope(event))
    elif fmt == "json":
        document = envelope(event)
    else:
        raise ValueError(f"unknown webhook format {fmt!r}; known: {', '.join(FORMATS)}")
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def headers(event: EventView, delivery_id: int, attempt: int, secret: str, body_: bytes, now: int,
            user_agent: str = "patchaas-webhooks/1") -> dict[str, str]:
    """Every header of one attempt: the stable event id, the kind, the delivery and attempt, the signature."""
    return {
        "Content-Type": "application/json", "User-Agent": user_agent,
        EVENT_ID_HEADER: event.event_id, EVENT_KIND_HEADER: event.kind, DELIVERY_HEADER: str(delivery_id),
        ATTEMPT_HEADER: str(attempt), SIGNATURE_HEADER: signature(secret, body_, now),
    }


# --- retries and disabling ------------------------------------------------------------------------


def backoff(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    """The wait after the `attempts`th failed attempt: base, 2 x base, 4 x base, … capped."""
    return min(cap, base * (2 ** min(max(0, attempts - 1), 30)))


def next_attempt(attempts: int, first_at: datetime, now: datetime, base: timedelta, cap: timedelta,
                 max_age: timedelta) -> datetime | None:
    """When to try a delivery again after its `attempts`th failure at `now`; None when it is given up. The
    last attempt is at `first_at + max_age` (24 h by default), never later."""
    give_up = first_at + max_age
    if now >= give_up:
        return None
    return min(now + backoff(attempts, base, cap), give_up)


def disable_reason(consecutive_failures: int, failing_since: datetime | None, now: datetime,
                   after: timedelta, min_failures: int) -> str | None:
    """Why a subscription is disabled now, or None: it has failed every attempt for `after` (24 h) and at
    least `min_failures` attempts in a row (so one late failure after a quiet day does not disable it)."""
    if failing_since is None or consecutive_failures < min_failures or now - failing_since < after:
        return None
    hours = (now - failing_since).total_seconds() / 3600
    return (f"disabled after {consecutive_failures} failed attempts in a row over {hours:.0f} h (since "
            f"{failing_since:%Y-%m-%d %H:%M} UTC); fix the receiver and enable it again")


def describe_status(status: int) -> str | None:
    """None for a delivered attempt (any 2xx); otherwise the error recorded."""
    return None if 200 <= status < 300 else f"HTTP {status}"
