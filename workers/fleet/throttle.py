"""Backoff and the client-side rate limit of the HTTP drivers."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from orchestrator.ports import FleetError

# --- backoff and the rate limit ----------------------------------------------------------------


def backoff_seconds(failures: int, initial: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait after the `failures`th failed attempt: initial * 2**(failures-1) plus a jitter of up to
    `initial`, capped at `cap` (the jitter spreads the retries of many workers hit by the same outage)."""
    jitter = (rng or _RANDOM).uniform(0.0, initial)
    return min(cap, initial * 2 ** max(0, failures - 1) + jitter)


_RANDOM = random.Random()


class TokenBucket:
    """A client-side rate limit: `rate` requests a second on average, bursts of up to `capacity`.

    A caller that finds the bucket empty reserves the next token and waits for it outside the lock (so
    callers are served in order); a wait longer than `max_wait` is refused with `FleetError` instead.
    Per process: N worker processes together send up to N times the rate.
    """

    def __init__(
        self,
        rate: float,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = 30.0,
    ) -> None:
        self.rate = rate
        self.capacity = float(capacity)
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(capacity)
        self._at = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting if needed; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            wait = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate
            if wait > self.max_wait:
                raise FleetError(f"client-side rate limit: the next request slot is {wait:.1f}s away")
            self._tokens -= 1.0
        if wait > 0:
            self._sleep(wait)
        return wait
