"""The simulated CLC API's server-side rate limit: R requests a second per account (a token bucket with a
burst of `burst` requests), as real control planes throttle (AWS SSM SendCommand, Azure Run Command). A
request over the limit is answered 429 `{"message": ...}` with `Retry-After` (whole seconds, rounded up, as
RFC 9110 writes it): the time until the account's bucket holds a token again.

The account is the path's alias (`/v2/servers/{alias}/...`, `/v2/operations/{alias}/...`,
`/v2/patchaas/{alias}/...`); the login, which names no account in its path, has a bucket of its own.
`RateLimitLog` counts the requests accepted and refused per account (GET /simulator/faults `rateLimit`), so
a benchmark can tell how many requests a client wasted by sending them over the limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOGIN_BUCKET = "(login)"  # the bucket of requests that name no account (POST /v2/authentication/login)
_ACCOUNT_PATHS = ("servers", "operations", "patchaas", "groups")
THROTTLED_MESSAGE = "The request was throttled: too many requests for this account."


def account_of(path: str) -> str:
    """The account a CLC path is counted against: `/v2/<kind>/<alias>/...` → ALIAS, else the login bucket."""
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "v2" and parts[1] in _ACCOUNT_PATHS and parts[2]:
        return parts[2].upper()
    return LOGIN_BUCKET


@dataclass
class _Bucket:
    tokens: float
    at: float


class AccountRateLimit:
    """A token bucket per account: `rate` requests a second, up to `burst` at once (default: one second's
    worth, at least 1). `admit(account)` takes a token and answers 0.0, or answers the seconds until the
    account's next token without taking one (the request is refused)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("a rate limit needs rate > 0")
        self.rate = rate
        self.burst = float(burst) if burst is not None else max(1.0, rate)
        if self.burst < 1:
            raise ValueError("a rate limit's burst must be at least 1")
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def admit(self, account: str) -> float:
        """0.0 when the request may go on (a token taken), else the seconds until a token is there."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(account)
            if bucket is None:
                bucket = self._buckets[account] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def retry_after_header(wait: float) -> str:
    """`Retry-After` for a wait of `wait` seconds: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))


@dataclass
class RateLimitLog:
    """Requests accepted and refused (429) per account, while a rate limit is on."""

    accepted: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, account: str, accepted: bool) -> None:
        with self._lock:
            counts = self.accepted if accepted else self.refused
            counts[account] = counts.get(account, 0) + 1

    def as_json(self, rate: float | None) -> dict[str, Any]:
        """`{"rate", "accepted", "refused", "byAccount": {alias: {"accepted", "refused"}}}`."""
        with self._lock:
            accounts = sorted(set(self.accepted) | set(self.refused))
            return {
                "rate": rate,
                "accepted": sum(self.accepted.values()),
                "refused": sum(self.refused.values()),
                "byAccount": {a: {"accepted": self.accepted.get(a, 0), "refused": self.refused.get(a, 0)}
                              for a in accounts},
            }
