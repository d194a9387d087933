"""Many executions per task: the engine's steps, run in rounds that share their transactions.

`Engine.advance` runs one step of one execution in three transactions (claim, intent, save) plus one
Celery message per step. A batch runs the same steps for many executions at once, in rounds:

1. **claim** every due, unleased execution of the batch in one UPDATE … RETURNING (the lease and the
   attempt are counted exactly as `executions.claim` does);
2. **plan**: for each, the state machine's command and the engine's own `_perform` (its far-side checks:
   maintenance already on? this cycle's package already known? the boot id changed since the intent?),
   with the intent-and-effect pair held back instead of run;
3. **intents**: every held-back intent committed in one transaction (compare-and-set on the version, like
   `executions.record_intent`); a row that moved is dropped;
4. **effects**: each held-back effect, only after its intent is committed;
5. **save**: every decision saved in one transaction with the same compare-and-set (`executions.save`),
   transient failures released with their backoff (`executions.release`) — and, in the same transaction,
   the executions whose next step is due at once are claimed again for the next round (re-read from the
   database, so a cancel written meanwhile is seen), instead of going through the broker.

The durability design is unchanged: each transition is a compare-and-set on the version under our lease,
every intent is committed before its effect, emails go through the outbox in the save's transaction, and
a crash anywhere leaves leases that expire and rows the tick re-drives. A batch stops chaining after
`budget` (well under the lease) and hands whatever is still due to a new batch message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from orchestrator.domain import machine
from orchestrator.engine import effects, event_log, executions, handoff, health_runs, hook_runs, notifications
from orchestrator.engine.batch import (
    BatchConfig,
    BatchReport,
    claim_many,
    insert_records,
    record_intents,
    save_many,
    suspects,
)
from orchestrator.engine.config import compute_backoff
from orchestrator.engine.steps import Stepper, describe_error
from orchestrator.persistence import models
from orchestrator.ports import FleetError, FleetRefused

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass
class _Step:
    """One execution's step in a round."""

    view: machine.ExecutionView
    intent: dict[str, Any] | None
    state: str = ""  # the state the step started in (for hooks and logs)
    event: machine.Event | None = None
    pending_intent: dict[str, Any] | None = None  # an effect held back until its intent is committed
    act: Callable[[], None] | None = None
    error: str | None = None  # a transient failure: release with backoff
    conflict: bool = False
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)  # claimed (for the step's duration)


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """This process's thread pool for fleet calls (created on first use, after a prefork worker forked)."""
    key = (os.getpid(), threads)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="fleet")
        return pool


def fleet_width(fleet: Any, threads: int) -> int:
    """Fleet calls a round keeps in flight: the driver's `concurrency` if it names one (clc), else `threads`."""
    return named if isinstance(named := getattr(fleet, "concurrency", None), int) and named >= 1 else threads


STATUS_FIRST = (machine.InspectServer, machine.PollServer, machine.PowerOn, machine.SetMaintenance,
                machine.RebootServer, machine.PowerOff)  # commands whose far-side check is a status read


class _Prefetched:
    """A fleet whose reads (`status`, `cycle_result`) answer from the round's bulk reads, once each (a
    second read of the same thing, or one the bulk read did not know, goes to the fleet itself); every
    other call goes to the fleet. Effects are not affected: these are the reads `_perform` does before
    deciding on them, done earlier in the round in one call."""

    _MISSING = object()

    def __init__(self, fleet: Any, statuses: dict[str, Any], results: dict[tuple[str, str], Any]) -> None:
        self._fleet = fleet
        self._statuses = dict(statuses)
        self._results = dict(results)
        self._lock = threading.Lock()

    def status(self, server: str) -> Any:
        with self._lock:
            known = self._statuses.pop(server, None)
        return known if known is not None else self._fleet.status(server)

    def cycle_result(self, server: str, key: str) -> Any:
        with self._lock:
            known = self._results.pop((server, key), self._MISSING)
        return self._fleet.cycle_result(server, key) if known is self._MISSING else known

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fleet, name)


class BatchRunner:
    """Runs rounds of steps for a set of executions on one engine (its fleet, policy, lease, hooks)."""

    def __init__(self, engine: Stepper, config: BatchConfig | None = None) -> None:
        self.engine = engine
        self.config = config or BatchConfig.of(engine.config)

    def run(self, ids: Sequence[str]) -> BatchReport:
        engine, cfg = self.engine, self.config
        report = BatchReport()
        started = time.monotonic()
        now = engine.clock()
        with engine.sessions.begin() as session:
            rows = claim_many(session, ids, engine.owner, now, engine.config.lease, engine.config.early)
            claimed = {r.id for r in rows}  # leased just now, so never suspects: only the others are looked up
            alone = suspects(session, [i for i in ids if i not in claimed], now, engine.config.early)
        for execution_id in alone:
            engine.dispatcher.advance(execution_id, 0.0)
        steps = [_Step(executions.to_view(r), dict(r.intent) if r.intent else None) for r in rows]
        if any(s.view.hook_plan is None and s.view.state is machine.State.REQUESTED for s in steps):
            views = engine.transaction(lambda session: hook_runs.with_plans(session, [s.view for s in steps]))
            for s, v in zip(steps, views, strict=True):  # first steps: their hook plans fixed (engine/hook_runs.py)
                s.view = v
        report.claimed = len(steps)
        width = fleet_width(engine.fleet, cfg.fleet_threads)
        pool = _pool(width) if width > 1 and len(steps) > 1 else None
        while steps:
            report.rounds += 1
            last_round = (report.rounds >= cfg.max_rounds
                          or time.monotonic() - started >= cfg.budget.total_seconds())
            steps, still_due = self._round(steps, report, pool, chain=not last_round)
            if still_due:
                report.handed_off += len(still_due)
                handoff.hand_off(engine.dispatcher, still_due, cfg.size, spread=1)
        return report

    # --- one round ----------------------------------------------------------------------------

    def _round(
        self, steps: list[_Step], report: BatchReport, pool: ThreadPoolExecutor | None, chain: bool
    ) -> tuple[list[_Step], list[str]]:
        engine = self.engine
        now = engine.clock()
        commands = {s.view.id: machine.command_for(s.view, now, engine.policy) for s in steps}
        fleet = effects.RoundFleet(self._status_reader(steps, commands))  # effects recorded, done in bulk
        self._map(pool, lambda s: self._plan(s, now, commands[s.view.id], fleet), steps)

        waiting = [s for s in steps if s.pending_intent is not None and s.error is None]
        if waiting:
            with engine.sessions.begin() as session:
                versions = record_intents(session, [(s.view, s.pending_intent or {}) for s in waiting], engine.owner)
            for s in waiting:
                version = versions.get(s.view.id, 0)
                if version == 0:
                    s.conflict = True
                else:
                    s.view = dataclasses.replace(s.view, version=version)
            for s in waiting:
                if not s.conflict:
                    engine.hooks.reached("after_intent", s.view.id, s.state)
            effects.perform(engine.fleet, fleet, [s for s in waiting if not s.conflict],  # effects.py
                            lambda todo, parallel: self._map(pool if parallel else None, self._act, todo))

        return self._save(steps, report, chain)

    def _map(self, pool: ThreadPoolExecutor | None, fn: Callable[[_Step], None], steps: list[_Step]) -> None:
        fn = self.engine.telemetry.in_step(fn)  # each step's work in its log context (orchestrator/observability)
        if pool is None or len(steps) < 2:
            for s in steps:
                fn(s)
        else:
            list(pool.map(fn, steps))

    def _status_reader(self, steps: list[_Step], commands: dict[str, machine.Command]) -> Any:
        """The fleet the round's far-side checks read: with one bulk `statuses` call for every server
        whose command starts with a status read (polls, inspections, maintenance, power, reboot) and one
        `cycle_results` call for every report to read (awaiting_result, a package retry), when the driver
        has them; otherwise the engine's own fleet."""
        fleet = self.engine.fleet
        statuses: dict[str, Any] = {}
        results: dict[tuple[str, str], Any] = {}
        bulk = getattr(fleet, "statuses", None)
        servers = [s.view.server for s in steps if isinstance(commands[s.view.id], STATUS_FIRST)]
        if bulk is not None and len(servers) > 1:
            try:
                statuses = bulk(servers)
            except Exception as error:  # a failed bulk read: each step reads its own (and fails on its own)
                log.warning("bulk status of %d servers failed (%s); one call each", len(servers), describe_error(error))
        bulk = getattr(fleet, "cycle_results", None)
        wanted = []
        for s in steps:
            command = commands[s.view.id]
            if isinstance(command, machine.FetchCycleResult) or (
                    isinstance(command, machine.InvokeUpdatePackage) and s.intent is not None
                    and s.intent.get("key") == command.key):  # the retry's look-up (engine._perform)
                wanted.append((s.view.server, command.key))
        if bulk is not None and len(wanted) > 1:
            try:
                results = bulk(wanted)
            except Exception as error:
                log.warning("bulk cycle results of %d runs failed (%s); one call each", len(wanted),
                            describe_error(error))
        return _Prefetched(fleet, statuses, results) if statuses or results else fleet

    def _plan(self, s: _Step, now: datetime, command: machine.Command | None = None, fleet: Any = None) -> None:
        """The engine's `perform` for this step, with its intent-and-effect pair held back."""
        engine = self.engine
        s.state = s.view.state.value
        if command is None:
            command = machine.command_for(s.view, now, engine.policy)
        s.command = type(command).__name__

        def hold(view: machine.ExecutionView, key: str, act: Callable[[], None],
                 intent: dict[str, Any] | None = None) -> machine.ExecutionView:
            s.pending_intent = intent or {"key": key}
            s.act = act
            return view

        try:  # the engine's own far-side checks, on the round's statuses and cycle results (read in one call each)
            s.event, _ = engine.perform(command, s.view, s.intent, fleet=fleet, effect=hold)
        except FleetRefused as refused:
            s.event, s.pending_intent, s.act = machine.Abandoned(machine.Outcome.FAILED, str(refused)), None, None
        except Exception as error:  # FleetError or anything a driver raises: back off, never hold the lease
            s.pending_intent, s.act = None, None
            s.error = f"{s.command}: {describe_error(error)}"
            if not isinstance(error, FleetError):
                log.error("execution %s: %s", s.view.id, s.error, exc_info=error)

    def _act(self, s: _Step) -> None:
        """The effect, after its intent was committed."""
        assert s.act is not None
        try:
            s.act()
        except FleetRefused as refused:
            s.event = machine.Abandoned(machine.Outcome.FAILED, str(refused))
            return
        except Exception as error:
            s.error = f"{s.command}: {describe_error(error)}"
            if not isinstance(error, FleetError):
                log.error("execution %s: %s", s.view.id, s.error, exc_info=error)
            return
        self.engine.hooks.reached("after_effect", s.view.id, s.state)

    def _save(self, steps: list[_Step], report: BatchReport, chain: bool) -> tuple[list[_Step], list[str]]:
        """Every decision (or release) of the round in one transaction; claim again what is due at once."""
        engine = self.engine
        now = engine.clock()
        planned: list[tuple[_Step, machine.Decision | None]] = []
        for s in sorted(steps, key=lambda s: s.view.id):  # one lock order for every batch
            if s.conflict:
                report.conflicts += 1
                continue
            if s.error is not None or s.event is None:
                planned.append((s, None))
            else:
                planned.append((s, machine.decide(s.view, s.event, now, engine.policy)))
        try:  # a database blip is ridden out in-process (`Engine._tx`): the round's effects are done already
            outcome = engine.transaction(lambda session: self._write(session, planned, now, chain))
        except sa_exc.OperationalError:
            raise  # the database is away: the task retries; our leases expire and the tick re-drives
        except sa_exc.SQLAlchemyError as error:  # one bad row must not sink the others: save one by one
            log.warning("batch save failed (%s); saving the round one execution at a time", error)
            outcome = _Outcome()
            for item in planned:
                try:
                    with engine.sessions.begin() as session:
                        one = self._write(session, [item], now, chain=False)
                except sa_exc.OperationalError:
                    raise
                except sa_exc.SQLAlchemyError:
                    log.exception("execution %s: step not saved; its lease will expire", item[0].view.id)
                    continue
                outcome.merge(one)
        report.steps += outcome.saved
        report.retrying += outcome.released
        report.conflicts += outcome.conflicts
        engine.telemetry.batch_done(steps, outcome.saved_ids)  # each step's outcome and duration
        for s, _ in planned:
            if s.view.id in outcome.saved_ids:
                engine.hooks.reached("after_commit", s.view.id, s.view.state.value)
        handoff.hand_off_emails(engine.dispatcher, outcome.outbox_ids, spread=1)  # a round's emails: one message
        countdowns(engine, outcome.countdowns)
        return outcome.next_steps, outcome.due_now

    def _write(
        self, session: Session, planned: list[tuple[_Step, machine.Decision | None]], now: datetime, chain: bool
    ) -> _Outcome:
        """Releases, then every save as one compare-and-set statement (rows due again at once keep the
        lease: claimed for the next round in the same write), then the cycles' records, events, emails."""
        engine, cfg = self.engine, self.engine.config
        out = _Outcome()
        saves: list[tuple[_Step, machine.Decision, dict[str, Any], bool]] = []
        for s, decision in planned:
            view = s.view
            if decision is None:
                retry_at = now + compute_backoff(view.attempts, cfg.retry_backoff, cfg.max_backoff)
                log.warning("execution %s: %s (attempt %d); retrying at %s", view.id, s.error, view.attempts,
                            retry_at)
                if executions.release(session, view, engine.owner, s.error or "failed", retry_at, now):
                    out.released += 1
                else:
                    out.conflicts += 1
                continue
            due = decision.next_run_at
            soon = due is not None and due - now <= cfg.short_countdown
            dispatched_until = due + cfg.redrive if soon and due is not None else None
            values = executions.save_values(view, decision, now, dispatched_until)
            again = chain and due is not None and due <= now and not decision.view.terminal
            if again:  # `executions.claim` folded into the save: the lease is kept, the attempt counted
                values.update(lease_owner=engine.owner, lease_expires_at=now + cfg.lease,
                              attempts=values["attempts"] + 1, version=values["version"] + 1, updated_at=now)
            saves.append((s, decision, values, again))
        rows = save_many(session, [(s.view, values) for s, _, values, _ in saves], engine.owner)
        saved = [(s, decision, again) for s, decision, _, again in saves if s.view.id in rows]
        out.conflicts += len(saves) - len(saved)
        for s, *_ in saves:
            if s.view.id not in rows:
                log.info("execution %s moved under us; dropping our step", s.view.id)
        insert_records(session, [(s.view.id, d.initiation) for s, d, _ in saved if d.initiation is not None])
        health_runs.write_many(session, [(s.view.id, d.health) for s, d, _ in saved])  # with their transition
        events = [e for e in (executions.event_values(s.view, d, now) for s, d, _ in saved) if e is not None]
        if events:
            session.execute(sa.insert(models.ExecutionEvent.__table__), events)
        event_log.insert(session, [e for s, d, _ in saved  # run started/ended, cycles, quarantines: the webhooks'
                                   for e in event_log.of_transition(s.view, d, rows[s.view.id].account_alias, now)])
        # every email of the round in four statements (the rows just written carry every column they need)
        out.outbox_ids += notifications.enqueue_many(
            session, [(rows[s.view.id], kind) for s, decision, _ in saved for kind in decision.emails], now,
            cfg.redrive)
        for s, decision, again in saved:
            view = s.view
            row = rows[view.id]
            out.saved += 1
            out.saved_ids.add(view.id)
            due = decision.next_run_at
            if again:
                out.next_steps.append(_Step(executions.to_view(row), dict(row.intent) if row.intent else None))
            elif due is None or decision.view.terminal:
                continue
            elif due <= now:
                out.due_now.append(view.id)
            elif due - now <= cfg.short_countdown:
                out.countdowns.append((view.id, max(0.0, (due - now).total_seconds())))
        return out


@dataclass
class _Outcome:
    saved: int = 0
    released: int = 0
    conflicts: int = 0
    saved_ids: set[str] = field(default_factory=set)
    outbox_ids: list[int] = field(default_factory=list)
    countdowns: list[tuple[str, float]] = field(default_factory=list)
    due_now: list[str] = field(default_factory=list)
    next_steps: list[_Step] = field(default_factory=list)

    def merge(self, other: _Outcome) -> None:
        self.saved += other.saved
        self.released += other.released
        self.conflicts += other.conflicts
        self.saved_ids |= other.saved_ids
        self.outbox_ids += other.outbox_ids
        self.countdowns += other.countdowns
        self.due_now += other.due_now


def countdowns(engine: Stepper, waits: Sequence[tuple[str, float]]) -> None:
    """The round's short timers, grouped as the tick groups them: those due within `early` of each other go in
    one batch message (the steps after a countdown also run in rounds, not one task and one call each)."""
    width = engine.config.early.total_seconds()
    group: list[str] = []
    start = 0.0
    for execution_id, wait in sorted(waits, key=lambda item: item[1]):
        if group and wait - start >= width:
            handoff.hand_off(engine.dispatcher, group, engine.config.batch_size, spread=1, delay=start)
            group = []
        if not group:
            start = wait
        group.append(execution_id)
    if group:
        handoff.hand_off(engine.dispatcher, group, engine.config.batch_size, spread=1, delay=start)


def run(engine: Stepper, ids: Sequence[str], config: BatchConfig | None = None) -> BatchReport:
    """Run the due steps of `ids` on `engine` in shared rounds (the `patchaas.advance_batch` task)."""
    return BatchRunner(engine, config).run(ids)
