"""The engine's timings and limits (from Settings; PATCHAAS_LEASE_*, PATCHAAS_BATCH_*, PATCHAAS_TICK_*)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

DEFAULT_BATCH_SIZE = 100  # executions per batch message at most (PATCHAAS_BATCH_SIZE)
DEFAULT_BATCH_SPREAD = 8  # a hand-off is spread over at least this many messages, so every worker process gets some
MAX_TICK_ROUNDS = 200  # a tick claims at most this many times `tick_batch` rows (and for its lookahead at most)


@dataclass(frozen=True)
class EngineConfig:
    """The engine's timings (from Settings)."""

    lease: timedelta = timedelta(minutes=5)
    redrive: timedelta = timedelta(seconds=30)
    short_countdown: timedelta = timedelta(seconds=5)
    retry_backoff: timedelta = timedelta(seconds=2)
    max_backoff: timedelta = timedelta(minutes=5)
    tick_batch: int = 500
    email_hold: timedelta = timedelta(minutes=2)
    early: timedelta = timedelta(milliseconds=250)
    db_retry: timedelta = timedelta(seconds=20)  # a transaction retries a database blip this long
    # batches and timers (orchestrator/engine/rounds.py, tick.py); PATCHAAS_BATCH_* and PATCHAAS_TICK_* in Settings
    batch_size: int = DEFAULT_BATCH_SIZE  # executions per batch message at most
    batch_spread: int = DEFAULT_BATCH_SPREAD  # an immediate hand-off goes in at least this many messages
    batch_budget: timedelta = timedelta(seconds=2)  # a batch stops chaining after this long
    batch_max_rounds: int = 200
    batch_fleet_threads: int = 8
    tick_lookahead: timedelta | None = None  # the tick sends timers due within this (None: short_countdown)
    tick_max_rounds: int = MAX_TICK_ROUNDS  # a tick claims `tick_batch` rows at most this many times


def compute_backoff(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    """Exponential backoff for the `attempts`th failure of a step, capped."""
    return min(cap, base * (2 ** max(0, attempts - 1)))
