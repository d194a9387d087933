"""Backoff, `Retry-After`, and the client-side rate limits of the HTTP drivers: a fixed token bucket and
the adaptive limiter the clc driver shares per control plane account (`AdaptiveLimiter`, `shared`)."""

from __future__ import annotations

import email.utils
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

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


# --- Retry-After ---------------------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: datetime | None = None, cap: float = 3600.0) -> float | None:
    """The wait a `Retry-After` header asks for (RFC 9110 §10.2.3): delay-seconds (`"2"`; a decimal is taken
    too) or an HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`, the wait until then, 0 when past); capped at
    `cap`; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT; an obsolete form may come without a zone
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(cap, max(0.0, seconds))


# --- the adaptive client-side limit ------------------------------------------------------------------


class AdaptiveLimiter:
    """A client-side rate limit that learns the control plane's: requests are paced at `rate` (a token
    bucket of `capacity`, callers served in order), and `rate` moves with the answers (AIMD-style):

    - **slow start**: from `start` the rate doubles every second of answers without a 429, up to `ceiling`;
    - **decrease**: a 429 for a request sent after the last decrease (a window's worth of requests already
      on the wire counts once) multiplies the rate by `decrease` (not below `floor`), and drops the bucket's
      saved-up tokens; the rate it was refused at is remembered;
    - **recovery**: then the rate climbs back quickly (half the gap each `recovery_seconds`) to just under
      the refused rate (`recover_share` of it), and above that only probes, by `probe_share` of the rate a
      second, so that the next 429 comes late and alone;
    - **Retry-After**: the refused request waits what the answer asked (the driver does); a wait longer than
      a second — more than one token's worth — also holds every request of this limiter until then.

    Shared by every thread of a process that talks to the same control plane account (`shared`); a caller
    whose turn is more than `max_wait` seconds away is refused with `FleetError` (transient) at once.
    """

    def __init__(
        self,
        ceiling: float,
        capacity: int = 1,
        start: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = 30.0,
        floor: float = 0.5,
        decrease: float = 0.7,
        recover_share: float = 0.9,
        recovery_seconds: float = 1.0,
        probe_share: float = 0.01,
    ) -> None:
        if ceiling <= 0 or capacity < 1 or not 0 < decrease < 1:
            raise ValueError("an adaptive limit needs ceiling > 0, capacity >= 1 and 0 < decrease < 1")
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.rate = min(ceiling, start if start is not None else ceiling)
        self.capacity = float(capacity)
        self.max_wait = max_wait
        self.decrease, self.recover_share = decrease, recover_share
        self.recovery_seconds, self.probe_share = recovery_seconds, probe_share
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = float(capacity)
        self._at = clock()
        self._waiting: deque[threading.Event] = deque()  # callers in order; the first one is next
        self._paused_until = 0.0
        self._slow_start = True
        self._refused_at: float | None = None  # the rate of the last 429
        self._decreased_at = -math.inf  # when the rate last went down
        self._grown_at = self._at
        self.throttled = 0  # 429s seen (tests, logs)

    def acquire(self) -> float:
        """Wait for this caller's turn and take a token; returns the monotonic time it was taken (the send
        time to hand back to `succeeded`/`throttled`)."""
        turn = threading.Event()
        with self._lock:
            ahead = len(self._waiting)
            expected = (ahead + 1 - min(self._tokens, self.capacity)) / self.rate
            expected = max(expected, self._paused_until - self._clock())
            if ahead and expected > self.max_wait:
                raise FleetError(f"client-side rate limit: the next request slot is {expected:.1f}s away")
            self._waiting.append(turn)
            if ahead == 0:
                turn.set()
        turn.wait()
        try:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
                self._at = now
                wait = max(0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate,
                           self._paused_until - now)
                if wait > self.max_wait:
                    raise FleetError(f"client-side rate limit: the next request slot is {wait:.1f}s away")
                self._tokens -= 1.0
            if wait > 0:
                self._sleep(wait)
        finally:
            with self._lock:
                self._waiting.popleft()
                if self._waiting:
                    self._waiting[0].set()
        return self._clock()

    def succeeded(self, sent_at: float) -> None:
        """An answer that was not a 429: the rate grows (slow start, recovery or probing)."""
        with self._lock:
            now = self._clock()
            elapsed = min(1.0, max(0.0, now - self._grown_at))
            self._grown_at = now
            if elapsed <= 0:
                return
            if self._slow_start:
                rate = self.rate * 2.0 ** elapsed
            else:
                target = (self._refused_at or self.ceiling) * self.recover_share
                probe = max(0.5, self.probe_share * self.rate) * elapsed
                gap = (target - self.rate) * min(1.0, elapsed / self.recovery_seconds)
                rate = self.rate + max(probe, gap)
            self.rate = min(self.ceiling, rate)

    def throttled_for(self, sent_at: float, retry_after: float | None) -> None:
        """A 429 for a request sent at `sent_at`: decrease (once per window), honour a long Retry-After."""
        with self._lock:
            now = self._clock()
            self.throttled += 1
            if retry_after is not None and retry_after > 1.0:
                self._paused_until = max(self._paused_until, now + retry_after)
            if sent_at <= self._decreased_at:
                return  # sent before we slowed down: the decrease already accounts for it
            self._slow_start = False
            self._refused_at = self.rate
            self.rate = max(self.floor, self.rate * self.decrease)
            self._tokens = min(self._tokens, 0.0)
            self._decreased_at = now
            self._grown_at = now


_limiters: dict[tuple[int, str], AdaptiveLimiter] = {}
_limiters_lock = threading.Lock()


def shared(key: str, make: Callable[[], AdaptiveLimiter]) -> AdaptiveLimiter:
    """This process's limiter for `key` (a control plane's base URL and account): made on first use, after a
    prefork worker forked, and shared by every driver of the process that names the same key."""
    with _limiters_lock:
        found = _limiters.get((os.getpid(), key))
        if found is None:
            found = _limiters[(os.getpid(), key)] = make()
        return found
