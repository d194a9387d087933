"""Fault injection of the simulated CLC API: what goes wrong on purpose (`Faults`), how often it did
(`FaultLog`), and the ASGI middleware that does it (`FaultInjector`): added latency on every CLC request, a
server-side rate limit per account (429 with `Retry-After`, simulation/clc_rate_limit.py), a share of
requests answered 500/502/503, a share of connections closed without an answer. Half of the injected
5xx and drops (by default) strike after the request's effect was done: the answer is lost, not the work.
Tokens that expire after `token_ttl_seconds` are the control plane's (simulation/clc_control_plane.py)."""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simulation.clc_answers import SERVER_ERROR, json_message
from simulation.clc_control_plane import DEFAULT_TOKEN_TTL
from simulation.clc_rate_limit import THROTTLED_MESSAGE, AccountRateLimit, RateLimitLog, account_of, retry_after_header

TRANSPORT_STATE_KEY = "patchaas.transport"  # where DroppableH11Protocol puts the connection's transport


@dataclass(frozen=True)
class Faults:
    """What goes wrong on purpose. Rates are per request; `after_effect_share` of the injected 5xx and
    drops happen after the request's effect was done (the work is done, only the answer is lost)."""

    error_rate: float = 0.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    token_ttl_seconds: float = DEFAULT_TOKEN_TTL
    after_effect_share: float = 0.5
    seed: int = 0
    report_drop_rate: float = 0.0  # share of cycle reports a simulated server never posts (polling must cover)
    report_duplicate_rate: float = 0.0  # share of cycle reports posted twice (the API must record them once)
    hide_package_results: bool = False  # packageRuns never tells a run finished: results only by report channel
    rate_limit: float = 0.0  # requests a second per account, answered 429 + Retry-After beyond it (0: no limit)
    rate_limit_burst: float | None = None  # the bucket's size (None: one second's worth)

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "after_effect_share", "report_drop_rate", "report_duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value} is not within [0, 1]")
        if self.error_rate + self.drop_rate > 1.0:
            raise ValueError("error_rate + drop_rate must not exceed 1")
        if self.latency_ms < 0 or self.token_ttl_seconds <= 0:
            raise ValueError("latency_ms must be >= 0 and token_ttl_seconds > 0")
        if self.rate_limit < 0 or (self.rate_limit_burst is not None and self.rate_limit_burst < 1):
            raise ValueError("rate_limit must be >= 0 and rate_limit_burst >= 1")


@dataclass
class FaultLog:
    """How many faults were injected (GET /simulator/faults): tests prove the run went through them."""

    requests: int = 0
    errors_before: int = 0
    errors_after: int = 0
    drops_before: int = 0
    drops_after: int = 0
    rate_limited: RateLimitLog = field(default_factory=RateLimitLog)
    rate: float | None = None  # the server-side rate limit, when on
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        """Add one to the counter `name` (requests, errors_before, drops_after, ...)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_json(self) -> dict[str, Any]:
        """The counters as the faults endpoint answers them."""
        with self._lock:
            return {
                "requests": self.requests,
                "errors": {"beforeEffect": self.errors_before, "afterEffect": self.errors_after},
                "drops": {"beforeEffect": self.drops_before, "afterEffect": self.drops_after},
                "rateLimit": self.rate_limited.as_json(self.rate),
            }


class DroppedConnection(ConnectionError):
    """A drop was asked for but the server gives no access to the connection (not `serve()`)."""


async def _swallow(_message: Message) -> None:
    return None


class FaultInjector:
    """ASGI middleware: latency, the rate limit, 5xx answers and dropped connections on the CLC paths
    (`/v2/...`). A request over the rate limit is refused on arrival (its account's bucket is empty) and
    answered 429 after the same latency as any other; it never reaches the app."""

    def __init__(self, app: ASGIApp, faults: Faults, log: FaultLog) -> None:
        self.app = app
        self.faults = faults
        self.log = log
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()
        self.limit = AccountRateLimit(faults.rate_limit, faults.rate_limit_burst) if faults.rate_limit > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        self.log.count("requests")
        wait = 0.0
        if self.limit is not None:
            account = account_of(str(scope.get("path", "")))
            wait = self.limit.admit(account)
            self.log.rate_limited.count(account, accepted=wait == 0.0)
        if self.faults.latency_ms > 0:
            await asyncio.sleep(self.faults.latency_ms / 1000.0)
        if wait > 0.0:
            refusal = json_message(429, THROTTLED_MESSAGE)
            refusal.headers["Retry-After"] = retry_after_header(wait)
            await refusal(scope, receive, send)
            return
        fault, after, status = self._roll()
        if fault is None:
            await self.app(scope, receive, send)
            return
        if after:
            await self.app(scope, receive, _swallow)  # the effect happens; its answer is lost
        self.log.count(f"{fault}s_{'after' if after else 'before'}")
        if fault == "drop":
            await self._drop(scope, receive)
        else:
            await json_message(status, SERVER_ERROR)(scope, receive, send)

    def _roll(self) -> tuple[str | None, bool, int]:
        with self._lock:
            roll = self._rng.random()
            after = self._rng.random() < self.faults.after_effect_share
            status = self._rng.choice((500, 502, 503))
        if roll < self.faults.error_rate:
            return "error", after, status
        if roll < self.faults.error_rate + self.faults.drop_rate:
            return "drop", after, status
        return None, False, 200

    async def _drop(self, scope: Scope, receive: Receive) -> None:
        """Close the connection without an answer, then wait for the server to notice."""
        transport = (scope.get("state") or {}).get(TRANSPORT_STATE_KEY)
        if transport is None:
            raise DroppedConnection("connection drop asked for outside `serve()`")
        transport.close()
        while (await receive())["type"] != "http.disconnect":
            pass
