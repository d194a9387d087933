"""The clc driver's adaptive client-side limiter (AIMD on 429s, slow start, recovery, Retry-After pauses) and
the reading of `Retry-After`, on a fake clock: waits are recorded and advance the clock, never slept."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.ports import FleetError
from workers.fleet import throttle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(clock: Clock, **kw: object) -> throttle.AdaptiveLimiter:
    values: dict[str, object] = {"ceiling": 100.0, "capacity": 1, "start": 10.0}
    values.update(kw)
    return throttle.AdaptiveLimiter(clock=clock, sleep=clock.sleep, **values)  # type: ignore[arg-type]


def answer_ok_for(lim: throttle.AdaptiveLimiter, clock: Clock, seconds: float) -> None:
    """Requests as fast as the limiter lets them go, every one answered (no 429), for `seconds`."""
    end = clock.now + seconds
    while clock.now < end:
        sent = lim.acquire()
        lim.succeeded(sent)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("2", 2.0), (" 0 ", 0.0), ("1.5", 1.5), ("-3", 0.0), ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
     ("Wednesday, 21-Oct-15 07:28:10 GMT", 10.0), ("Wed Oct 21 07:28:05 2015", 5.0),
     ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0), ("soon", None), ("", None), (None, None), ("nan", None)],
)
def test_retry_after_reads_seconds_and_http_dates(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert throttle.retry_after_seconds(header, now=now) == expected


def test_retry_after_is_capped() -> None:
    assert throttle.retry_after_seconds("86400", cap=30.0) == 30.0
    later = datetime.now(UTC) + timedelta(days=2)
    assert throttle.retry_after_seconds(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), cap=60.0) == 60.0


def test_requests_are_paced_at_the_rate() -> None:
    clock = Clock()
    lim = limiter(clock, start=4.0, ceiling=4.0, capacity=2)
    for _ in range(6):
        lim.acquire()
    assert clock.slept == [0.25] * 4  # a burst of 2, then one every 1/rate seconds


def test_slow_start_doubles_each_second_up_to_the_ceiling() -> None:
    clock = Clock()
    lim = limiter(clock)
    answer_ok_for(lim, clock, 1.0)
    assert 18.0 <= lim.rate <= 22.0
    answer_ok_for(lim, clock, 10.0)
    assert lim.rate == 100.0


def test_a_429_decreases_the_rate_once_per_window() -> None:
    clock = Clock()
    lim = limiter(clock, start=50.0)
    sent = [lim.acquire() for _ in range(5)]  # on the wire together
    lim.throttled_for(sent[0], None)
    assert lim.rate == pytest.approx(35.0)  # × 0.7
    for at in sent[1:]:  # sent before the decrease: already accounted for
        lim.throttled_for(at, None)
    assert lim.rate == pytest.approx(35.0) and lim.throttled == 5
    lim.throttled_for(lim.acquire(), None)  # sent after it: the rate is still too high
    assert lim.rate == pytest.approx(24.5)


def test_the_rate_never_falls_below_the_floor() -> None:
    clock = Clock()
    lim = limiter(clock, start=1.0, floor=0.5)
    for _ in range(10):
        lim.throttled_for(lim.acquire(), None)
    assert lim.rate == 0.5


def test_after_a_429_the_rate_recovers_fast_to_just_below_then_probes_slowly() -> None:
    clock = Clock()
    lim = limiter(clock, start=80.0)
    lim.throttled_for(lim.acquire(), None)
    assert lim.rate == pytest.approx(56.0)
    answer_ok_for(lim, clock, 3.0)  # half the gap to 0.9 × 80 per second: most of it within seconds
    assert 68.0 <= lim.rate <= 72.0
    answer_ok_for(lim, clock, 10.0)  # above 72: only 1% of the rate a second
    assert 72.0 <= lim.rate <= 80.0
    lim.throttled_for(lim.acquire(), None)  # and a new 429 sets the new mark
    assert lim.rate < 56.0 + 1.0


def test_a_long_retry_after_holds_every_caller() -> None:
    clock = Clock()
    lim = limiter(clock, start=100.0, capacity=10)
    sent = lim.acquire()
    lim.throttled_for(sent, 5.0)
    start = clock.now
    lim.acquire()
    assert clock.now - start >= 5.0
    short = limiter(Clock(), start=100.0, capacity=10)
    short.throttled_for(short.acquire(), 1.0)  # one token's worth: only the refused request waits (the driver)
    assert short._paused_until == 0.0


def test_a_turn_too_far_away_is_refused_as_transient() -> None:
    clock = Clock()
    lim = limiter(clock, start=1.0, ceiling=1.0, max_wait=5.0)
    lim.throttled_for(lim.acquire(), 30.0)  # the control plane asked for half a minute
    with pytest.raises(FleetError, match="rate limit"):
        lim.acquire()


def test_callers_on_many_threads_are_served_one_at_a_time_in_order() -> None:
    lock = threading.Lock()
    clock = Clock()

    def sleep(seconds: float) -> None:
        with lock:
            clock.sleep(seconds)

    lim = throttle.AdaptiveLimiter(ceiling=50.0, capacity=1, start=50.0, clock=clock, sleep=sleep)
    taken: list[float] = []

    def work() -> None:
        for _ in range(10):
            at = lim.acquire()
            with lock:
                taken.append(at)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 80
    assert clock.now - 100.0 == pytest.approx(79 / 50.0)  # 80 requests at 50/s: paced, none skipped the queue


def test_a_process_shares_one_limiter_per_key() -> None:
    made: list[throttle.AdaptiveLimiter] = []

    def make() -> throttle.AdaptiveLimiter:
        made.append(throttle.AdaptiveLimiter(10.0))
        return made[-1]

    first = throttle.shared("http://clc.test/|unit-test-user", make)
    assert throttle.shared("http://clc.test/|unit-test-user", make) is first
    assert throttle.shared("http://other.test/|unit-test-user", make) is not first
    assert len(made) == 2
