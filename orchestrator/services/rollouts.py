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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain import event_log as event_facts
from orchestrator.domain import health_points, machine, messages
from orchestrator.engine import event_log, handoff, notifications
from orchestrator.persistence import models

log = logging.getLogger(__name__)

ROLLOUT = "rollout"  # cancelled_by of a skipped execution


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


def member_status(state: str, ended: bool, held: bool, reason: str | None = None) -> MemberStatus:
    """A completed run with a health check warning (onHealthFailure continue) counts as failed: a health failure
    counts against the error threshold whatever the run's policy (docs/HOOKS.md)."""
    if not ended:
        return MemberStatus.HELD if held else MemberStatus.RUNNING
    if state == machine.State.COMPLETED.value:
        warned = (reason or "").startswith(health_points.WARNING)
        return MemberStatus.FAILED if warned else MemberStatus.COMPLETED
    if state == machine.State.FAILED.value:
        return MemberStatus.FAILED
    return MemberStatus.CANCELLED


def members_of(session: Session, rollout_id: int) -> list[Member]:
    table = models.Execution.__table__
    rows = session.execute(
        sa.select(table.c.id, table.c.rollout_position, table.c.rollout_wave, table.c.state, table.c.ended_at,
                  table.c.next_run_at, table.c.failure_reason)
        .where(table.c.rollout_id == rollout_id)
    ).all()
    return [
        Member(r.id, r.rollout_position or 0, r.rollout_wave or 0,
               member_status(r.state, r.ended_at is not None, r.next_run_at is None, r.failure_reason))
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
            .returning(table.c.server_name)
        ).scalar_one_or_none()
        if done is not None:
            skipped += 1
            event_log.record_facts(session, rollout.account_alias,
                                   [event_facts.skipped(execution_id, done, reason, rollout.id)], now)
            session.add(models.ExecutionEvent(
                execution_id=execution_id, at=now, from_state=machine.State.REQUESTED.value,
                to_state=machine.State.CANCELLED.value, cycle=0, note=reason))
    if decision.state is RolloutState.STOPPED and rollout.stop_reason is None:
        rollout.stop_reason = decision.reason
        log.warning("rollout %s stopped: %s", rollout.id, decision.reason)
        failed = sum(m.status is MemberStatus.FAILED for m in members)
        event_log.record(session, rollout.account_alias, "rollout.halted", now, payload={
            "rolloutId": rollout.id, "reason": decision.reason, "total": len(members), "failed": failed,
            "skipped": skipped, "running": decision.running, "requestedBy": rollout.requested_by})
    rollout.state = decision.state.value
    rollout.updated_at = now
    if decision.ended and rollout.ended_at is None:
        rollout.ended_at = now
    return Applied(tuple(released), tuple(outbox_ids), skipped, decision.ended)


def hand_off(dispatcher: Any, released: Sequence[str], outbox_ids: Sequence[int]) -> None:
    """After commit: the released executions to the workers, their start emails to the mailer."""
    if released:
        handoff.hand_off(dispatcher, list(released))
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
