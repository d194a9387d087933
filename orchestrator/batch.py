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

import copy
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from orchestrator import executions, machine, models, notifications
from orchestrator.fleet import FleetError, FleetRefused

if TYPE_CHECKING:
    from orchestrator.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_SIZE = 100  # executions per batch message at most (PATCHAAS_BATCH_SIZE)
DEFAULT_SPREAD = 8  # a hand-off is spread over at least this many messages, so every worker process gets some


@dataclass(frozen=True)
class BatchConfig:
    """How much one batch task does."""

    size: int = DEFAULT_SIZE  # executions per batch message (the dispatcher splits larger hand-offs)
    budget: timedelta = timedelta(seconds=2)  # stop chaining after this long (far below the lease); the rest
    # goes back to the queue, so a worker process is never held long by one batch
    max_rounds: int = 200  # and after this many rounds
    fleet_threads: int = 8  # fleet calls of one round run on this many threads (1: one after the other)

    @classmethod
    def of(cls, config: Any) -> BatchConfig:
        """The batch settings an engine was configured with (`EngineConfig.batch_*`, from Settings)."""
        return cls(size=config.batch_size, budget=config.batch_budget, max_rounds=config.batch_max_rounds,
                   fleet_threads=config.batch_fleet_threads)


@dataclass
class BatchReport:
    """What a batch did."""

    claimed: int = 0
    steps: int = 0
    conflicts: int = 0
    retrying: int = 0
    rounds: int = 0
    handed_off: int = 0

    def summary(self) -> str:
        return (f"{self.steps} steps of {self.claimed} executions in {self.rounds} rounds; "
                f"{self.retrying} retrying, {self.conflicts} conflicts, {self.handed_off} handed off")


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


def claim_many(
    session: Session, ids: Sequence[str], owner: str, now: datetime, lease: timedelta, early: timedelta
) -> list[sa.Row[Any]]:
    """`executions.claim` for many ids in one statement: the due, unleased ones, leased and counted.

    Only executions whose last step finished (attempts 0): one whose step was interrupted (a crash, a
    kill, a transient error) runs alone (`suspects`), so a step that kills its process takes down no
    batch twice, and an innocent execution does not collect attempts for a neighbour's crash."""
    if not ids:
        return []
    table = models.Execution.__table__
    stmt = (
        sa.update(table)
        .where(
            table.c.id.in_(sorted(set(ids))),
            table.c.ended_at.is_(None),
            table.c.attempts == 0,
            table.c.next_run_at <= now + early,
            sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now),
        )
        .values(
            lease_owner=owner,
            lease_expires_at=now + lease,
            attempts=table.c.attempts + 1,
            version=table.c.version + 1,
            updated_at=now,
        )
        .returning(*table.c)
    )
    return list(session.execute(stmt).all())


def suspects(session: Session, ids: Sequence[str], now: datetime, early: timedelta) -> list[str]:
    """The due, unleased executions of `ids` whose last step was interrupted: each gets its own message."""
    if not ids:
        return []
    table = models.Execution.__table__
    return list(session.execute(
        sa.select(table.c.id).where(
            table.c.id.in_(sorted(set(ids))),
            table.c.ended_at.is_(None),
            table.c.attempts > 0,
            table.c.next_run_at <= now + early,
            sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now),
        )
    ).scalars())


def record_intents(
    session: Session, items: Sequence[tuple[machine.ExecutionView, dict[str, Any]]], owner: str
) -> dict[str, int]:
    """`executions.record_intent` for many executions: {id: new version} for those still at their version
    under our lease (one statement on PostgreSQL)."""
    if not items:
        return {}
    if session.get_bind().dialect.name != "postgresql":
        versions = {view.id: executions.record_intent(session, view, owner, intent) for view, intent in items}
        return {k: v for k, v in versions.items() if v}
    data = [{"b_id": view.id, "b_version": view.version, "intent": intent} for view, intent in items]
    result = session.execute(
        sa.text(
            "UPDATE executions AS e SET intent = v.intent, version = v.b_version + 1 "
            "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(b_id varchar, b_version integer, intent json) "
            "WHERE e.id = v.b_id AND e.version = v.b_version AND e.lease_owner = :owner "
            "RETURNING e.id, e.version"
        ),
        {"rows": json.dumps(data, default=_jsonable), "owner": owner},
    )
    return {row.id: row.version for row in result}


def save_many(
    session: Session, items: Sequence[tuple[machine.ExecutionView, dict[str, Any]]], owner: str
) -> dict[str, sa.Row[Any]]:
    """Compare-and-set many rows, each from the version its view was read at and under our lease, to the
    columns `executions.save_values` gave it; the rows written, by id. One statement on PostgreSQL
    (UPDATE … FROM jsonb_to_recordset), one per row elsewhere."""
    if not items:
        return {}
    table = models.Execution.__table__
    if session.get_bind().dialect.name != "postgresql":
        written: dict[str, sa.Row[Any]] = {}
        for view, values in items:
            row = session.execute(
                sa.update(table)
                .where(table.c.id == view.id, table.c.version == view.version, table.c.lease_owner == owner)
                .values(**values)
                .returning(*table.c)
            ).one_or_none()
            if row is not None:
                written[view.id] = row
        return written
    every = set.intersection(*(set(values) for _, values in items))
    some = set.union(*(set(values) for _, values in items)) - every
    dialect = session.get_bind().dialect
    columns = ["b_id varchar", "b_version integer"]
    columns += [f'"{k}" {table.c[k].type.compile(dialect=dialect)}' for k in sorted(every | some)]
    columns += [f'"has_{k}" boolean' for k in sorted(some)]
    sets = [f'"{k}" = v."{k}"' for k in sorted(every)]
    sets += [f'"{k}" = CASE WHEN v."has_{k}" THEN v."{k}" ELSE e."{k}" END' for k in sorted(some)]
    returning = ", ".join(f'e."{c.name}"' for c in table.c)
    data = []
    for view, values in items:
        doc = {"b_id": view.id, "b_version": view.version, **values}
        doc.update({f"has_{k}": k in values for k in some})
        data.append(doc)
    statement = sa.text(
        f"UPDATE executions AS e SET {', '.join(sets)} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v({', '.join(columns)}) "
        "WHERE e.id = v.b_id AND e.version = v.b_version AND e.lease_owner = :owner "
        f"RETURNING {returning}"
    ).columns(*table.c)  # matched by position: listed in the model's order
    result = session.execute(statement, {"rows": json.dumps(data, default=_jsonable), "owner": owner})
    return {row.id: row for row in result}


def insert_records(session: Session, records: Sequence[tuple[str, machine.InitiationRecord]]) -> None:
    """The cycles' initiation rows and their patch rows, for many executions: two statements."""
    if not records:
        return
    initiations = models.Initiation.__table__
    ids = session.execute(
        sa.insert(initiations).returning(initiations.c.id, sort_by_parameter_order=True),
        [executions.initiation_values(execution_id, record) for execution_id, record in records],
    ).scalars().all()
    patches = [values for (execution_id, record), initiation_id in zip(records, ids, strict=True)
               for values in executions.patch_values(execution_id, initiation_id, record)]
    if patches:
        session.execute(sa.insert(models.Patch.__table__), patches)


def hand_off_emails(dispatcher: Any, ids: Sequence[int], size: int = DEFAULT_SIZE,
                    spread: int = DEFAULT_SPREAD) -> None:
    """Give outbox ids to workers: one message each for a few, batch messages (`deliver_many`, when the
    dispatcher has it) for more, as `hand_off` does for executions."""
    ids = list(ids)
    many = getattr(dispatcher, "deliver_many", None)
    chunk = max(1, min(size, len(ids) // max(1, spread)))
    if many is None or chunk == 1:
        for outbox_id in ids:
            dispatcher.deliver(outbox_id)
        return
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        if len(part) == 1:
            dispatcher.deliver(part[0])
        else:
            many(part)


def claim_emails(session: Session, ids: Sequence[int], now: datetime, hold: timedelta) -> list[sa.Row[Any]]:
    """`notifications.claim` for many rows in one statement: the unsent, unclaimed ones, held for `hold`."""
    table = models.Outbox.__table__
    return list(session.execute(
        sa.update(table)
        .where(
            table.c.id.in_(sorted(set(ids))),
            table.c.sent_at.is_(None),
            sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
        )
        .values(claimed_until=now + hold, attempts=table.c.attempts + 1)
        .returning(*table.c)
    ).all())


def deliver_many(engine: Engine, ids: Sequence[int]) -> list[notifications.Delivery]:
    """`Engine.deliver` for many outbox rows: one transaction claims them all, each is sent (the mailer's
    own `send`), one transaction marks them all. What a crash between send and mark does is unchanged: the
    claim's hold runs out and the row is sent again, with the same Message-ID."""
    now = engine.clock()
    cfg = engine.config

    def claim(session: Session) -> list[tuple[int, Any, int]]:
        rows = claim_emails(session, ids, now, cfg.email_hold)
        return [(row.id, notifications.build_message(row, engine.mail_from), row.attempts) for row in rows]

    claimed = engine._tx(claim)
    taken = {outbox_id for outbox_id, _, _ in claimed}
    results = [notifications.Delivery(i, sent=False, error="already sent or being sent")
               for i in ids if i not in taken]
    marks: list[tuple[int, str | None, timedelta]] = []
    session = getattr(engine.mailer, "session", None)  # one SMTP connection for the batch, when it has one
    with session() if session is not None and claimed else nullcontext(engine.mailer.send) as send:
        for outbox_id, message, attempts in claimed:
            error: str | None = None
            try:
                send(message)
            except Exception as exc:  # any SMTP or socket failure: the row stays queued
                error = f"{type(exc).__name__}: {exc}"
                log.warning("email %s not sent (attempt %d): %s", outbox_id, attempts, error)
            engine.hooks.reached("after_email", str(outbox_id), "deliver")
            marks.append((outbox_id, error, _backoff(attempts, cfg.retry_backoff, cfg.max_backoff)))
            results.append(notifications.Delivery(outbox_id, sent=error is None, error=error))

    def mark(session: Session) -> None:
        at = engine.clock()
        sent = sorted(outbox_id for outbox_id, error, _ in marks if error is None)
        if sent:  # what `notifications.mark` writes for a sent row, for all of them in one statement
            table = models.Outbox.__table__
            session.execute(sa.update(table).where(table.c.id.in_(sent))
                            .values(sent_at=at, claimed_until=None, last_error=None))
        for outbox_id, error, retry_in in marks:
            if error is not None:
                notifications.mark(session, outbox_id, at, error, retry_in)

    if marks:
        engine._tx(mark)
    return results


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set | tuple):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def hand_off(
    dispatcher: Any, ids: Sequence[str], size: int = DEFAULT_SIZE, spread: int = DEFAULT_SPREAD, delay: float = 0.0
) -> None:
    """Give `ids` to workers (after `delay` seconds). A few ids go one message each (`advance`), so they
    spread over the worker processes; more go in batch messages (`advance_many`, when the dispatcher has
    it) of up to `size`, at least `spread` of them."""
    ids = list(ids)
    many = getattr(dispatcher, "advance_many", None)
    chunk = max(1, min(size, len(ids) // max(1, spread)))
    if many is None or chunk == 1:
        for execution_id in ids:
            dispatcher.advance(execution_id, delay)
        return
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        if len(part) == 1:
            dispatcher.advance(part[0], delay)
        elif delay > 0:
            many(part, delay)
        else:
            many(part)


MAX_TICK_ROUNDS = 20  # a tick claims at most this many times `tick_batch` rows


def dispatch_due(engine: Engine, now: datetime) -> int:
    """The tick's hand-off of executions. It claims what is due and what falls due within the short
    countdown (the tick's own period by default), `tick_batch` rows at a time until fewer come back, and
    hands them to workers: what is due at once, the rest with a countdown to its time, in groups as wide
    as the claim's tolerance (`early`), so a timer is handled when it falls due rather than at the next
    tick. A lost message costs `redrive`, as before: the rows stay marked only that long."""
    cfg = engine.config
    until = now + (cfg.short_countdown if cfg.tick_lookahead is None else cfg.tick_lookahead)
    width = cfg.early.total_seconds()
    total = 0
    for _ in range(cfg.tick_max_rounds):
        rows = engine._tx(lambda session: executions.claim_due_until(session, now, until, cfg.redrive, cfg.tick_batch))
        total += len(rows)
        group: list[str] = []
        start = 0.0
        for execution_id, due in rows:
            wait = max(0.0, (due - now).total_seconds())
            if group and wait - start >= width:
                hand_off(engine.dispatcher, group, cfg.batch_size, spread=1, delay=start)  # timers spread already
                group = []
            if not group:
                start = wait
            group.append(execution_id)
        if group:
            hand_off(engine.dispatcher, group, cfg.batch_size, spread=1 if start > 0 else cfg.batch_spread,
                     delay=start)
        if len(rows) < cfg.tick_batch:
            break
    return total


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

    def __init__(self, engine: Engine, config: BatchConfig | None = None) -> None:
        self.engine = engine
        self.config = config or BatchConfig.of(engine.config)

    def run(self, ids: Sequence[str]) -> BatchReport:
        engine, cfg = self.engine, self.config
        report = BatchReport()
        started = time.monotonic()
        now = engine.clock()
        with engine.sessions.begin() as session:
            rows = claim_many(session, ids, engine.owner, now, engine.config.lease, engine.config.early)
            alone = suspects(session, ids, now, engine.config.early)
        for execution_id in alone:
            engine.dispatcher.advance(execution_id, 0.0)
        steps = [_Step(executions.to_view(r), dict(r.intent) if r.intent else None) for r in rows]
        report.claimed = len(steps)
        pool = _pool(cfg.fleet_threads) if cfg.fleet_threads > 1 and len(steps) > 1 else None
        while steps:
            report.rounds += 1
            last_round = (report.rounds >= cfg.max_rounds
                          or time.monotonic() - started >= cfg.budget.total_seconds())
            steps, still_due = self._round(steps, report, pool, chain=not last_round)
            if still_due:
                report.handed_off += len(still_due)
                hand_off(engine.dispatcher, still_due, cfg.size, spread=1)
        return report

    # --- one round ----------------------------------------------------------------------------

    def _round(
        self, steps: list[_Step], report: BatchReport, pool: ThreadPoolExecutor | None, chain: bool
    ) -> tuple[list[_Step], list[str]]:
        engine = self.engine
        now = engine.clock()
        commands = {s.view.id: machine.command_for(s.view, now, engine.policy) for s in steps}
        fleet = self._status_reader(steps, commands)
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
            self._map(pool, self._act, [s for s in waiting if not s.conflict])

        return self._save(steps, report, chain)

    def _map(self, pool: ThreadPoolExecutor | None, fn: Callable[[_Step], None], steps: list[_Step]) -> None:
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
                log.warning("bulk status of %d servers failed (%s); one call each", len(servers), _describe(error))
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
                log.warning("bulk cycle results of %d runs failed (%s); one call each", len(wanted), _describe(error))
        return _Prefetched(fleet, statuses, results) if statuses or results else fleet

    def _plan(self, s: _Step, now: datetime, command: machine.Command | None = None, fleet: Any = None) -> None:
        """The engine's `_perform` for this step, with its intent-and-effect pair held back."""
        engine = self.engine
        s.state = s.view.state.value
        if command is None:
            command = machine.command_for(s.view, now, engine.policy)
        s.command = type(command).__name__
        planner = copy.copy(engine)  # the engine's own far-side checks; only `_effect` is replaced
        if fleet is not None:
            planner.fleet = fleet  # the round's statuses and cycle results, read in one call each

        def hold(view: machine.ExecutionView, key: str, act: Callable[[], None],
                 intent: dict[str, Any] | None = None) -> machine.ExecutionView:
            s.pending_intent = intent or {"key": key}
            s.act = act
            return view

        planner._effect = hold  # type: ignore[method-assign]
        try:
            s.event, _ = planner._perform(command, s.view, s.intent)
        except FleetRefused as refused:
            s.event, s.pending_intent, s.act = machine.Abandoned(machine.Outcome.FAILED, str(refused)), None, None
        except Exception as error:  # FleetError or anything a driver raises: back off, never hold the lease
            s.pending_intent, s.act = None, None
            s.error = f"{s.command}: {_describe(error)}"
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
            s.error = f"{s.command}: {_describe(error)}"
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
            outcome = engine._tx(lambda session: self._write(session, planned, now, chain))
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
        for s, _ in planned:
            if s.view.id in outcome.saved_ids:
                engine.hooks.reached("after_commit", s.view.id, s.view.state.value)
        hand_off_emails(engine.dispatcher, outcome.outbox_ids, spread=1)  # a round's emails: one message
        for execution_id, delay in outcome.countdowns:
            engine.dispatcher.advance(execution_id, delay)
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
                retry_at = now + _backoff(view.attempts, cfg.retry_backoff, cfg.max_backoff)
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
        events = [e for e in (executions.event_values(s.view, d, now) for s, d, _ in saved) if e is not None]
        if events:
            session.execute(sa.insert(models.ExecutionEvent.__table__), events)
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


def _backoff(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    return min(cap, base * (2 ** max(0, attempts - 1)))


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(error, FleetError) else f"{type(error).__name__}: {first}"


def run(engine: Engine, ids: Sequence[str], config: BatchConfig | None = None) -> BatchReport:
    """Run the due steps of `ids` on `engine` in shared rounds (the `patchaas.advance_batch` task)."""
    return BatchRunner(engine, config).run(ids)
