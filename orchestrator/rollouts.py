"""Rate-controlled rollouts: a group action (or a patch window's occurrence) over N servers, released a few
at a time.

A rollout's executions are created up front, each *held*: `next_run_at` is NULL, so neither a worker nor
the tick can claim it, and it already holds its server (one active execution per server). The **gate**
releases held executions up to the concurrency limit (the start email is queued at that moment) and
stops the rollout once failures cross the error threshold: no new server starts, the running ones finish,
and the held rest end as *skipped*.

Decision (skipped): a skipped execution ends in the terminal state `cancelled` with `cancelled_by`
"rollout" and the reason in `cancel_reason` and `failure_reason`, e.g. "skipped: error threshold crossed
(3 of 50 failed)". Nothing was done to the server, so it gets no start and no end email; its history,
detail and CLC status (failed) say why.

The decision is pure (`decide`: members in, what to release and skip out); `RolloutGate` reads the
members, applies it in one transaction per rollout (the rollout row locked FOR UPDATE SKIP LOCKED, so
two gates never release for the same rollout), and hands the released ids to the workers after commit.
The beat task `patchaas.rollouts` runs it every tick; a new rollout runs it once in its own transaction.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import batch, machine, messages, models, notifications

log = logging.getLogger(__name__)

ROLLOUT = "rollout"  # cancelled_by of a skipped execution
MAX_WAVES = 20
_LIMIT = re.compile(r"^\s*(\d{1,6})\s*(%?)\s*$")


# --- the rate-control options ------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """A count ("5") or a percentage of the targets ("10%")."""

    value: int
    percent: bool = False

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_limit(raw: str | int | None, what: str, minimum: int = 0) -> Limit | None:
    """A count or a percentage; ValueError with a message for people when it is neither."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        raise ValueError(f"{what} must be a count (5) or a percentage of the targets (10%), not {raw!r}")
    match = _LIMIT.match(str(raw))
    if match is None:
        raise ValueError(f"{what} must be a count (5) or a percentage of the targets (10%), not {raw!r}")
    value, percent = int(match.group(1)), bool(match.group(2))
    if percent and not minimum <= value <= 100:
        raise ValueError(f"{what} must be a percentage between {minimum}% and 100%, not {raw!r}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, not {raw!r}")
    return Limit(value, percent)


def concurrency_limit(limit: Limit | None, total: int) -> int:
    """How many executions may run at once: all of them without a limit; a percentage rounds up, at least 1."""
    if limit is None:
        return max(1, total)
    if limit.percent:
        return max(1, math.ceil(total * limit.value / 100))
    return max(1, limit.value)


def error_limit(limit: Limit | None, total: int) -> int | None:
    """How many failures are tolerated (a percentage rounds down); one more crosses the threshold."""
    if limit is None:
        return None
    if limit.percent:
        return math.floor(total * limit.value / 100)
    return limit.value


@dataclass(frozen=True)
class RateControl:
    """Max concurrency, error threshold and ordered waves of one rollout. Each wave is a list of group ids
    or server names; a wave starts only when the previous one has ended; targets no wave names run last."""

    max_concurrency: Limit | None = None
    max_errors: Limit | None = None
    waves: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def parse(
        cls,
        max_concurrency: str | int | None = None,
        max_errors: str | int | None = None,
        waves: Sequence[Sequence[str]] | None = None,
    ) -> RateControl:
        """Validated options (ValueError with a message for people)."""
        concurrency = parse_limit(max_concurrency, "maxConcurrency", minimum=1)
        errors = parse_limit(max_errors, "maxErrors", minimum=0)
        parsed: list[tuple[str, ...]] = []
        for index, wave in enumerate(waves or (), start=1):
            if isinstance(wave, str):
                wave = [part for part in wave.split(",")]
            names = tuple(str(name).strip() for name in wave if str(name).strip())
            if not names:
                raise ValueError(f"wave {index} is empty: give group ids or server names")
            parsed.append(names)
        if len(parsed) > MAX_WAVES:
            raise ValueError(f"at most {MAX_WAVES} waves, not {len(parsed)}")
        return cls(concurrency, errors, tuple(parsed))

    @property
    def empty(self) -> bool:
        return self.max_concurrency is None and self.max_errors is None and not self.waves

    def describe(self) -> str:
        parts = [f"max concurrency {self.max_concurrency or 'unlimited'}"]
        parts.append(f"max errors {self.max_errors}" if self.max_errors is not None else "no error threshold")
        if self.waves:
            parts.append(f"{len(self.waves)} wave(s) first")
        return ", ".join(parts)


def assign_waves(names: Sequence[str], waves: Sequence[Iterable[str]]) -> dict[str, int]:
    """The wave of each target: the first wave that holds it; the rest run in one more wave at the end."""
    wave_of: dict[str, int] = {}
    for index, members in enumerate(waves):
        for name in members:
            wave_of.setdefault(name, index)
    rest = len(waves)
    return {name: wave_of.get(name, rest) for name in names}


# --- the gate's decision (pure) ----------------------------------------------------------------


class MemberStatus(StrEnum):
    """Where one execution of a rollout is, as the gate sees it."""

    HELD = "held"  # created, not released yet
    RUNNING = "running"  # released, not ended
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # by an operator, by the window's cutoff, or skipped by the gate


class RolloutState(StrEnum):
    RUNNING = "running"  # releasing as slots free up
    STOPPED = "stopped"  # the error threshold was crossed or the window closed: nothing new starts
    COMPLETED = "completed"  # every execution was released and has ended


@dataclass(frozen=True)
class Member:
    """One execution of a rollout."""

    id: str
    position: int
    wave: int
    status: MemberStatus


@dataclass(frozen=True)
class GateDecision:
    """What the gate does now: release these, skip those (with `reason`), and the rollout's state."""

    release: tuple[str, ...]
    skip: tuple[str, ...]
    reason: str | None
    state: RolloutState
    ended: bool  # nothing held, nothing running: the rollout is over
    running: int  # executions running once the release is done


def threshold_reason(failed: int, total: int) -> str:
    return f"skipped: error threshold crossed ({failed} of {total} failed)"


def window_closed_reason(not_after: datetime) -> str:
    return (f"skipped: the patch window closed at {not_after:%Y-%m-%d %H:%M} UTC (end minus cutoff) before this "
            "server's turn; it is patched in the next window")


def decide(
    members: Sequence[Member],
    concurrency: int,
    errors: int | None,
    now: datetime,
    not_after: datetime | None = None,
    stopped_reason: str | None = None,
) -> GateDecision:
    """Release held members of the lowest unfinished wave, in position order, up to `concurrency` running;
    once more than `errors` have failed (or the window's `not_after` has passed) release nothing and skip
    every held member. A rollout stopped before (`stopped_reason`) stays stopped."""
    held = sorted((m for m in members if m.status is MemberStatus.HELD), key=lambda m: (m.wave, m.position))
    running = sum(1 for m in members if m.status is MemberStatus.RUNNING)
    failed = sum(1 for m in members if m.status is MemberStatus.FAILED)
    reason = stopped_reason
    if reason is None and errors is not None and failed > errors:
        reason = threshold_reason(failed, len(members))
    if reason is None and not_after is not None and now >= not_after and held:
        reason = window_closed_reason(not_after)
    if reason is not None:
        skip = tuple(m.id for m in held)
        return GateDecision((), skip, reason, RolloutState.STOPPED, running == 0, running)
    if not held:
        return GateDecision((), (), None, RolloutState.RUNNING if running else RolloutState.COMPLETED,
                            running == 0, running)
    unfinished = [m.wave for m in members if m.status in (MemberStatus.HELD, MemberStatus.RUNNING)]
    wave = min(unfinished)
    slots = max(0, concurrency - running)
    release = tuple(m.id for m in held if m.wave == wave)[:slots]
    return GateDecision(release, (), None, RolloutState.RUNNING, False, running + len(release))


# --- the gate on the database ------------------------------------------------------------------


def member_status(state: str, ended: bool, held: bool) -> MemberStatus:
    if not ended:
        return MemberStatus.HELD if held else MemberStatus.RUNNING
    if state == machine.State.COMPLETED.value:
        return MemberStatus.COMPLETED
    if state == machine.State.FAILED.value:
        return MemberStatus.FAILED
    return MemberStatus.CANCELLED


def members_of(session: Session, rollout_id: int) -> list[Member]:
    table = models.Execution.__table__
    rows = session.execute(
        sa.select(table.c.id, table.c.rollout_position, table.c.rollout_wave, table.c.state, table.c.ended_at,
                  table.c.next_run_at)
        .where(table.c.rollout_id == rollout_id)
    ).all()
    return [
        Member(r.id, r.rollout_position or 0, r.rollout_wave or 0,
               member_status(r.state, r.ended_at is not None, r.next_run_at is None))
        for r in rows
    ]


@dataclass
class GateReport:
    """What one pass of the gate did."""

    rollouts: int = 0
    released: list[str] | None = None
    skipped: int = 0
    ended: int = 0

    def summary(self) -> str:
        return (f"{self.rollouts} rollouts: {len(self.released or [])} released, {self.skipped} skipped, "
                f"{self.ended} ended")


@dataclass(frozen=True)
class Applied:
    """The effect of one gate decision inside a transaction: hand these to the workers after commit."""

    released: tuple[str, ...]
    outbox_ids: tuple[int, ...]
    skipped: int
    ended: bool


def apply(session: Session, rollout: models.Rollout, now: datetime, redrive: timedelta) -> Applied:
    """Decide for `rollout` (locked by the caller) and write the decision: released rows become due with
    their start email queued; skipped rows end as cancelled by the rollout; the rollout's state."""
    members = members_of(session, rollout.id)
    decision = decide(members, rollout.concurrency_limit, rollout.error_limit, now, rollout.not_after,
                      rollout.stop_reason)
    table = models.Execution.__table__
    released: list[str] = []
    outbox_ids: list[int] = []
    for execution_id in decision.release:
        done = session.execute(
            sa.update(table)
            .where(table.c.id == execution_id, table.c.ended_at.is_(None), table.c.next_run_at.is_(None))
            .values(next_run_at=now, dispatched_until=now + redrive, started_at=now, updated_at=now,
                    version=table.c.version + 1)
        )
        if done.rowcount != 1:
            continue
        released.append(execution_id)
        session.add(models.ExecutionEvent(
            execution_id=execution_id, at=now, from_state=machine.State.REQUESTED.value,
            to_state=machine.State.REQUESTED.value, cycle=0,
            note=f"released by rollout {rollout.id} ({decision.running} of at most {rollout.concurrency_limit} "
                 "running)"))
        row = session.get(models.Execution, execution_id, populate_existing=True)
        if row is not None:
            queued = notifications.enqueue(session, row, "start", now, redrive)
            if queued is not None:
                outbox_ids.append(queued.id)
    skipped = 0
    for execution_id in decision.skip:
        reason = decision.reason or "skipped"
        done = session.execute(
            sa.update(table)
            .where(table.c.id == execution_id, table.c.ended_at.is_(None), table.c.next_run_at.is_(None))
            .values(state=machine.State.CANCELLED.value, outcome=machine.Outcome.CANCELLED.value,
                    cancelled_by=ROLLOUT, cancel_reason=reason, failure_reason=reason,
                    end_message=messages.execution_end(machine.State.CANCELLED.value, reason),
                    ended_at=now, updated_at=now, version=table.c.version + 1)
        )
        if done.rowcount == 1:
            skipped += 1
            session.add(models.ExecutionEvent(
                execution_id=execution_id, at=now, from_state=machine.State.REQUESTED.value,
                to_state=machine.State.CANCELLED.value, cycle=0, note=reason))
    if decision.state is RolloutState.STOPPED and rollout.stop_reason is None:
        rollout.stop_reason = decision.reason
        log.warning("rollout %s stopped: %s", rollout.id, decision.reason)
    rollout.state = decision.state.value
    rollout.updated_at = now
    if decision.ended and rollout.ended_at is None:
        rollout.ended_at = now
    return Applied(tuple(released), tuple(outbox_ids), skipped, decision.ended)


def hand_off(dispatcher: Any, released: Sequence[str], outbox_ids: Sequence[int]) -> None:
    """After commit: the released executions to the workers, their start emails to the mailer."""
    if released:
        batch.hand_off(dispatcher, list(released))
    for outbox_id in outbox_ids:
        dispatcher.deliver(outbox_id)


class RolloutGate:
    """Runs the gate over every open rollout (the `patchaas.rollouts` beat task)."""

    def __init__(self, sessions: sessionmaker[Session], dispatcher: Any, clock: Callable[[], datetime],
                 redrive: timedelta = timedelta(seconds=30)) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.clock = clock
        self.redrive = redrive

    @classmethod
    def of(cls, service: Any) -> RolloutGate:
        """The gate over a PatchService's database, dispatcher and clock."""
        return cls(service.sessions, service.dispatcher, service.clock, service.redrive)

    def run(self, limit: int = 500) -> GateReport:
        """One pass: each open rollout in its own transaction (locked; one busy elsewhere is left for the
        next pass)."""
        report = GateReport(released=[])
        with self.sessions() as session:
            ids = list(session.scalars(
                sa.select(models.Rollout.id).where(models.Rollout.ended_at.is_(None))
                .order_by(models.Rollout.id).limit(limit)
            ))
        for rollout_id in ids:
            applied = self.run_one(rollout_id)
            if applied is None:
                continue
            report.rollouts += 1
            assert report.released is not None
            report.released.extend(applied.released)
            report.skipped += applied.skipped
            report.ended += applied.ended
        return report

    def run_one(self, rollout_id: int) -> Applied | None:
        now = self.clock()
        with self.sessions.begin() as session:
            rollout = session.scalars(
                sa.select(models.Rollout)
                .where(models.Rollout.id == rollout_id, models.Rollout.ended_at.is_(None))
                .with_for_update(skip_locked=True)
            ).first()
            if rollout is None:
                return None
            applied = apply(session, rollout, now, self.redrive)
        hand_off(self.dispatcher, applied.released, applied.outbox_ids)
        return applied


@dataclass(frozen=True)
class RolloutInfo:
    """A rollout as people read it."""

    id: int
    account_alias: str
    state: str
    total: int
    max_concurrency: str | None
    max_errors: str | None
    concurrency_limit: int
    error_limit: int | None
    waves: int
    not_after: datetime | None
    stop_reason: str | None
    created_at: datetime
    ended_at: datetime | None
    counts: Mapping[str, int]


def info(session: Session, rollout: models.Rollout) -> RolloutInfo:
    counts: dict[str, int] = {s.value: 0 for s in MemberStatus}
    for member in members_of(session, rollout.id):
        counts[member.status.value] += 1
    return RolloutInfo(
        id=rollout.id, account_alias=rollout.account_alias, state=rollout.state, total=rollout.total,
        max_concurrency=rollout.max_concurrency, max_errors=rollout.max_errors,
        concurrency_limit=rollout.concurrency_limit, error_limit=rollout.error_limit, waves=rollout.waves,
        not_after=rollout.not_after, stop_reason=rollout.stop_reason, created_at=rollout.created_at,
        ended_at=rollout.ended_at, counts=counts,
    )
