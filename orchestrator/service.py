"""The service layer: execute a package on servers or groups, read history and detail, cancel.

Entry points (Python API, REST, CLI) call these and only translate their answers.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import batch, bulk, db, machine, messages, models, naming, notifications, packages, rollouts
from orchestrator import engine as engine_mod
from schemas import selection
from schemas.patching import (
    ExecutionDetail,
    ExecutionSummary,
    InitMessage,
    PackageRequest,
    PatchDetail,
    QueuedServer,
)

log = logging.getLogger(__name__)

CLC_NOT_QUEUED = (
    "The operation cannot be queued because the server cannot be found or it is not in a valid state."
)
MAX_PAGE = 500


def unsupported_message(pkg: packages.Package, os_type: str) -> str:
    """Why a server's OS refuses the package."""
    supported = ", ".join(sorted(pkg.os_types))
    return f"{CLC_NOT_QUEUED} The package {pkg.name} does not support {os_type} (supported: {supported})."


def busy_message(name: str, active: str) -> str:
    """Why a server that is being patched refuses another execution."""
    return f"{CLC_NOT_QUEUED} Server {name} is already being patched by execution {active}."


class ServiceError(Exception):
    """A request the service refuses; `status` is the HTTP status an API answers with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    """No such thing in this account (or it belongs to another one: same answer, no hint)."""

    status = 404


class Conflict(ServiceError):
    """The thing exists but is not in a state that allows the request."""

    status = 409


@dataclass(frozen=True)
class RolloutLaunch:
    """A rollout just created (not committed yet): the CLC answers, and what to hand over after commit."""

    answers: list[QueuedServer]
    rollout_id: int
    released: tuple[str, ...]
    outbox_ids: tuple[int, ...]


def _is_group_id(raw: str) -> bool:
    """Whether `raw` reads as a group id (va1-0001) rather than a server name."""
    try:
        naming.check_group_id(raw)
    except naming.NamingError:
        return False
    return True


class AnswerCache:
    """The JSON answers (summary item, detail) of ended executions, kept by this process.

    An ended execution never changes: the engine writes an execution only under its lease with a
    compare-and-set on `version`, and a claim requires `ended_at IS NULL`; its cycles and patches are
    inserted in the transaction of the step that recorded them; a cancel of an ended execution is refused
    (409) and reports for it are not taken. So the key is (kind, id, version, ended_at) and only ended
    executions are put: a running one is always read fresh, and any write that did reach an ended row
    would have bumped its version (a new key). Least recently used answers go first once the cache holds
    `max_bytes` (an answer larger than that is not kept)."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.size = 0  # bytes held
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return body

    def put(self, key: tuple[Any, ...], body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self._items[key] = body
            self.size += len(body)
            while self.size > self.max_bytes:
                _, gone = self._items.popitem(last=False)
                self.size -= len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0


def _answer_key(kind: str, row: Any) -> tuple[Any, ...] | None:
    """The cache key of an execution's answer, None while it runs (never cached)."""
    if row.ended_at is None:
        return None
    return (kind, row.id, row.version, row.ended_at)


READ_POOL_SIZE = 10
READ_PING_AFTER_IDLE_SECONDS = 1.0


def read_engine_for(engine: Any) -> Any:
    """The engine of the REST read paths beside `engine` (PostgreSQL; elsewhere `engine` itself): its own
    pool of `READ_POOL_SIZE` connections, in AUTOCOMMIT from the start. A read there is its statements
    and nothing else: no BEGIN before the first one, no ROLLBACK when the connection goes back, and no
    isolation level switched per checkout (`execution_options(isolation_level=…)` on the shared pool cost as
    much as a statement under load: psycopg2 releases the GIL for each switch). No overflow, so no
    connection is opened and closed per burst. Statements are reported to `engine`'s cursor listeners too
    (statement counters, tracing), and disposing `engine` disposes it."""
    if engine.dialect.name != "postgresql":
        return engine
    reads = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=READ_POOL_SIZE, max_overflow=0)
    db.ping_when_idle(reads, READ_PING_AFTER_IDLE_SECONDS)

    @sa.event.listens_for(reads, "before_cursor_execute")
    def _before(*args: Any) -> None:
        engine.dispatch.before_cursor_execute(*args)

    @sa.event.listens_for(reads, "after_cursor_execute")
    def _after(*args: Any) -> None:
        engine.dispatch.after_cursor_execute(*args)

    @sa.event.listens_for(engine, "engine_disposed")
    def _disposed(_engine: Any) -> None:
        reads.dispose()

    return reads


SUMMARY_JSON = TypeAdapter(ExecutionSummary)
DETAIL_JSON = TypeAdapter(ExecutionDetail)

# The read paths' statements, built once (SQLAlchemy caches their compiled form).
_servers = models.Server.__table__
_executions = models.Execution.__table__
_SERVER = sa.select(_servers.c.account_alias).where(_servers.c.name == sa.bindparam("name"))
_SUMMARY_COLUMNS = (_executions.c.id, _executions.c.state, _executions.c.started_at, _executions.c.ended_at,
                    _executions.c.server_name, _executions.c.created_at, _executions.c.version)
_NEWEST_FIRST = (_executions.c.created_at.desc(), _executions.c.id.desc())
_PAGE = (
    sa.select(_SERVER.scalar_subquery().label("owner"), *_SUMMARY_COLUMNS)
    .where(_executions.c.server_name == sa.bindparam("name"))
    .order_by(*_NEWEST_FIRST).limit(sa.bindparam("limit", type_=sa.Integer))
)
_CURSOR = sa.select(_executions.c.id, _executions.c.server_name, _executions.c.created_at).where(
    _executions.c.id == sa.bindparam("id")
)
_PAGE_BEFORE = (
    sa.select(*_SUMMARY_COLUMNS)
    .where(
        _executions.c.server_name == sa.bindparam("name"),
        sa.tuple_(_executions.c.created_at, _executions.c.id)
        < sa.tuple_(sa.bindparam("created_at", type_=_executions.c.created_at.type),
                    sa.bindparam("id", type_=_executions.c.id.type)),
    )
    .order_by(*_NEWEST_FIRST).limit(sa.bindparam("limit", type_=sa.Integer))
)
_INITIATIONS = (
    sa.select(models.Initiation.__table__)
    .where(models.Initiation.__table__.c.execution_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(models.Initiation.__table__.c.cycle)
)
_DETAIL_ROW = sa.select(
    _servers.c.name, _servers.c.account_alias, _executions.c.id, _executions.c.state, _executions.c.started_at,
    _executions.c.ended_at, _executions.c.version, _executions.c.begin_message, _executions.c.end_message,
    _executions.c.server_name, _executions.c.cycle, _executions.c.installed_count, _executions.c.failure_reason,
    _executions.c.quarantined, _executions.c.cancelled_by, _executions.c.cancel_reason,
).select_from(
    _servers.outerjoin(_executions, sa.and_(_executions.c.id == sa.bindparam("id"),
                                            _executions.c.server_name == _servers.c.name))
).where(_servers.c.name == sa.bindparam("name"))
_PATCHES = (
    sa.select(models.Patch.__table__)
    .where(models.Patch.__table__.c.execution_id == sa.bindparam("execution_id"))
    .order_by(models.Patch.__table__.c.id)
)


@dataclass(frozen=True)
class ServerInfo:
    """A server of the inventory, and the execution patching it right now (if any)."""

    name: str
    account_alias: str
    group_id: str | None
    datacenter: str
    os_type: str
    power_state: str
    in_maintenance: bool
    active_execution_id: str | None


@dataclass(frozen=True)
class GroupInfo:
    """A group, the servers directly in it and its nested groups (recursively)."""

    id: str
    name: str
    datacenter: str
    parent_id: str | None
    servers: tuple[str, ...]
    groups: tuple[GroupInfo, ...]


class PatchService:
    """Requests and queries on executions."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        dispatcher: engine_mod.Dispatcher,
        clock: Callable[[], datetime],
        redrive: timedelta = timedelta(seconds=30),
    ) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.clock = clock
        self.redrive = redrive  # what we dispatch right after commit, the tick leaves alone this long
        self.bulk_from = 2  # requests for at least this many servers are accepted in bulk (orchestrator/bulk.py)
        self.answers = AnswerCache()  # JSON of ended executions' summaries and details (REST hot paths)
        self._read_engine: Any = None

    # --- requests -----------------------------------------------------------------------------

    def execute_package(
        self, alias: str, servers: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rollouts.RateControl | None = None,
    ) -> list[QueuedServer]:
        """Queue one execution per server; each server is answered on its own (CLC semantics). With `rate`
        (max concurrency, error threshold, waves) they are queued as one rollout (orchestrator/rollouts.py)."""
        alias = naming.check_alias(alias)
        try:
            pkg = packages.get(package.package_id)
        except packages.UnknownPackage as exc:
            raise ServiceError(str(exc)) from None
        try:
            selection.parse(package.parameters)
        except ValueError as exc:
            raise ServiceError(str(exc)) from None
        if not servers:
            raise ServiceError("no servers given")
        if rate is not None and not rate.empty:
            return self._execute_rollout(alias, servers, package, requested_by, rate)
        answers: list[QueuedServer] = []
        queued: list[tuple[str, int | None]] = []
        now = self.clock()
        with self.sessions.begin() as session:
            if len(servers) >= self.bulk_from:
                results = bulk.queue_many(self, session, alias, servers, pkg, package, requested_by, now)
            else:
                results = [self._queue_one(session, alias, raw, pkg, package, requested_by, now) for raw in servers]
            for answer, outbox_id in results:
                answers.append(answer)
                if answer.is_queued and answer.execution_id:
                    queued.append((answer.execution_id, outbox_id))
        batch.hand_off(self.dispatcher, [execution_id for execution_id, _ in queued])  # batches when it can
        batch.hand_off_emails(self.dispatcher, [outbox_id for _, outbox_id in queued if outbox_id is not None])
        return answers

    def execute_package_on_groups(
        self, alias: str, group_ids: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rollouts.RateControl | None = None,
    ) -> list[QueuedServer]:
        """The group action: every server of the groups and their subgroups, each answered on its own;
        rate-controlled when `rate` is given."""
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            names = self.servers_in_groups(session, alias, group_ids)
        if not names:
            raise ServiceError("the groups hold no servers")
        return self.execute_package(alias, names, package, requested_by, rate)

    # --- rollouts (orchestrator/rollouts.py) ---------------------------------------------------

    def _execute_rollout(
        self, alias: str, servers: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rollouts.RateControl,
    ) -> list[QueuedServer]:
        now = self.clock()
        with self.sessions.begin() as session:
            launch = self.start_rollout(session, alias, servers, package, requested_by, rate, now)
        rollouts.hand_off(self.dispatcher, launch.released, launch.outbox_ids)
        return launch.answers

    def start_rollout(
        self, session: Session, alias: str, servers: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rollouts.RateControl, now: datetime, not_after: datetime | None = None,
    ) -> RolloutLaunch:
        """In the caller's transaction: accept the servers exactly as a plain request does (same checks, same
        CLC answers), hold the queued executions (not due, no start email yet) as one rollout, and let the
        gate release the first ones. The caller hands `released` and `outbox_ids` over after commit."""
        try:
            pkg = packages.get(package.package_id)
            selection.parse(package.parameters)
        except (packages.UnknownPackage, ValueError) as exc:
            raise ServiceError(str(exc)) from None
        waves = [self._wave_members(session, alias, index, wave) for index, wave in enumerate(rate.waves, 1)]
        if len(servers) >= self.bulk_from:
            results = bulk.queue_many(self, session, alias, servers, pkg, package, requested_by, now)
        else:
            results = [self._queue_one(session, alias, raw, pkg, package, requested_by, now) for raw in servers]
        answers = [answer for answer, _ in results]
        queued = [a for a in answers if a.is_queued and a.execution_id]
        wave_of = rollouts.assign_waves([a.server for a in queued], waves)
        ordered = sorted(enumerate(queued), key=lambda item: (wave_of[item[1].server], item[0]))
        row = models.Rollout(
            account_alias=alias, requested_by=requested_by[:200],
            max_concurrency=str(rate.max_concurrency) if rate.max_concurrency else None,
            max_errors=str(rate.max_errors) if rate.max_errors is not None else None,
            concurrency_limit=rollouts.concurrency_limit(rate.max_concurrency, len(queued)),
            error_limit=rollouts.error_limit(rate.max_errors, len(queued)),
            waves=len(set(wave_of.values())) or 1, total=len(queued), state=rollouts.RolloutState.RUNNING.value,
            not_after=not_after, created_at=now, updated_at=now,
        )
        session.add(row)
        session.flush()
        if queued:
            table = models.Execution.__table__
            session.execute(
                sa.update(table).where(table.c.id == sa.bindparam("b_id")).values(
                    next_run_at=None, dispatched_until=None, not_after=not_after, rollout_id=row.id,
                    rollout_position=sa.bindparam("b_position"), rollout_wave=sa.bindparam("b_wave")),
                [{"b_id": a.execution_id, "b_position": position, "b_wave": wave_of[a.server]}
                 for position, (_, a) in enumerate(ordered)],
            )
            # held: the start email is queued when the gate releases the execution
            outbox = models.Outbox.__table__
            session.execute(sa.delete(outbox).where(outbox.c.execution_id.in_([a.execution_id for a in queued]),
                                                    outbox.c.kind == "start"))
        applied = rollouts.apply(session, row, now, self.redrive)
        log.info("rollout %s: %d servers queued (%s)", row.id, len(queued), rate.describe())
        return RolloutLaunch(answers, row.id, applied.released, applied.outbox_ids)

    def _wave_members(self, session: Session, alias: str, index: int, wave: Sequence[str]) -> set[str]:
        """The servers a wave names: group ids (nested groups included) and server names."""
        members: set[str] = set()
        for raw in wave:
            if _is_group_id(raw):
                members.update(self.servers_in_groups(session, alias, [raw]))
                continue
            try:
                members.add(naming.check_server_name(raw))
            except naming.NamingError:
                raise ServiceError(f"wave {index}: {raw!r} is neither a group id (va1-0001) nor a server name "
                                   "(VA1OSDPATCH01)") from None
        return members

    def rollout(self, alias: str, rollout_id: int) -> rollouts.RolloutInfo:
        """A rollout of the account: limits, state, why it stopped, and its executions counted by status."""
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            row = session.get(models.Rollout, rollout_id)
            if row is None or row.account_alias != alias:
                raise NotFound(f"rollout {rollout_id} not found")
            return rollouts.info(session, row)

    def rollout_of(self, alias: str, execution_id: str) -> int | None:
        """The rollout an execution of the account belongs to (None: a plain request)."""
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            row = session.execute(
                sa.select(models.Execution.rollout_id, models.Execution.account_alias)
                .where(models.Execution.id == naming.check_execution_id(execution_id))
            ).first()
        if row is None or row.account_alias != alias:
            raise NotFound(f"execution {execution_id} not found")
        return row.rollout_id

    def servers_in_groups(self, session: Session, alias: str, group_ids: Iterable[str]) -> list[str]:
        """Names of the servers in `group_ids` and all their nested groups, in a stable order."""
        wanted: list[str] = []
        for raw in group_ids:
            try:
                gid = naming.check_group_id(raw)
            except naming.NamingError as exc:
                raise ServiceError(str(exc)) from None
            group = session.get(models.Group, gid)
            if group is None or group.account_alias != alias:
                raise NotFound(f"group {raw} not found")
            wanted.append(gid)
        seen: set[str] = set()
        frontier = list(wanted)
        while frontier:
            seen.update(frontier)
            children = session.scalars(
                sa.select(models.Group.id).where(models.Group.parent_id.in_(frontier))
            ).all()
            frontier = [c for c in children if c not in seen]
        rows = session.scalars(
            sa.select(models.Server.name)
            .where(models.Server.group_id.in_(seen), models.Server.account_alias == alias)
            .order_by(models.Server.name)
        ).all()
        return list(rows)

    def _queue_one(
        self,
        session: Session,
        alias: str,
        raw: str,
        pkg: packages.Package,
        package: PackageRequest,
        requested_by: str,
        now: datetime,
    ) -> tuple[QueuedServer, int | None]:
        try:
            name = naming.check_server_name(raw)
        except naming.NamingError:
            return QueuedServer(server=raw, is_queued=False, error_message=CLC_NOT_QUEUED), None
        server = session.get(models.Server, name)
        if server is None or server.account_alias != alias:
            return QueuedServer(server=raw, is_queued=False, error_message=CLC_NOT_QUEUED), None
        if not pkg.supports(server.os_type):
            message = unsupported_message(pkg, server.os_type)
            return QueuedServer(server=name, is_queued=False, error_message=message), None
        for _ in range(5):
            active = session.scalar(
                sa.select(models.Execution.id).where(
                    models.Execution.server_name == name, models.Execution.ended_at.is_(None)
                )
            )
            if active is not None:
                return QueuedServer(server=name, is_queued=False, error_message=busy_message(name, active)), None
            execution = models.Execution(
                **self.execution_values(name, server.datacenter, alias, pkg, package, requested_by, now)
            )
            try:
                with session.begin_nested():
                    session.add(execution)
                    session.flush()
                    outbox = notifications.enqueue(session, execution, "start", now, self.redrive)
            except IntegrityError:
                continue  # an id collision or a concurrent request for the same server: look again
            return QueuedServer(server=name, is_queued=True, execution_id=execution.id), (
                outbox.id if outbox else None
            )
        raise ServiceError(f"could not allocate an execution for {name}; try again")

    def execution_values(
        self, name: str, datacenter: str, alias: str, pkg: packages.Package, package: PackageRequest,
        requested_by: str, now: datetime,
    ) -> dict[str, object]:
        """The columns of a new execution of `pkg` on server `name` (a fresh random id)."""
        return {
            "id": naming.new_execution_id(datacenter),
            "server_name": name,
            "account_alias": alias,
            "package_id": pkg.id,
            "parameters": dict(package.parameters),
            "requested_by": requested_by,
            "state": machine.State.REQUESTED.value,
            "version": 0,
            "cycle": 0,
            "attempts": 0,
            "next_run_at": now,
            "dispatched_until": now + self.redrive,
            "kb_failures": {},
            "installed_kbs": [],
            "quarantined": {},
            "installed_count": 0,
            "cancel_requested": False,
            "created_at": now,
            "started_at": now,
            "updated_at": now,
            "begin_message": messages.EXECUTION_BEGIN,
        }

    def cancel(self, alias: str, server: str, execution_id: str, by: str, reason: str | None) -> ExecutionDetail:
        """Ask a running execution to stop after its current step; cleanup takes the server out of
        maintenance mode. Cancelling a finished execution is a conflict."""
        with self.sessions.begin() as session:
            row = self._execution(session, alias, server, execution_id)
            if row.ended_at is not None:
                raise Conflict(f"execution {row.id} has already ended ({row.state})")
            if not row.cancel_requested:
                row.cancel_requested = True
                row.cancelled_by = by[:200]
                row.cancel_reason = (reason or "")[:2000] or None
                row.next_run_at = min(row.next_run_at or self.clock(), self.clock())
        self.dispatcher.advance(row.id, 0.0)
        return self.detail(alias, server, execution_id)

    # --- queries ------------------------------------------------------------------------------
    #
    # The summary and detail reads are the REST API's hot paths (issue 7). They read plain Core rows on an
    # AUTOCOMMIT connection (`_reading`): each is a few SELECTs under READ COMMITTED, where a transaction
    # would add no consistency (every statement takes its own snapshot either way) but would cost the
    # ROLLBACK round trip that ends a read-only session. The JSON of an ended execution is kept in `answers`
    # (`AnswerCache`): once `ended_at` is set nothing changes the execution, its cycles or its patches.

    def history(
        self, alias: str, server: str, limit: int = 50, before: str | None = None
    ) -> list[ExecutionSummary]:
        """A server's executions, newest first; `before` is the last execution id of the previous page."""
        with self._reading() as conn:
            rows, inits, _ = self._history_rows(conn, alias, server, limit, before, None)
        return [_summary(r, inits[r.id]) for r in rows]

    def history_json(
        self, alias: str, server: str, limit: int = 50, before: str | None = None
    ) -> list[tuple[str, bytes]]:
        """`history` as (execution id, JSON of its summary) pairs, the JSON exactly what
        `TypeAdapter(ExecutionSummary).dump_json(summary, by_alias=True)` gives. Ended executions come from
        `answers`; the cycles are read only for the others (no cycle query when the whole page is cached)."""
        with self._reading() as conn:
            rows, inits, cached = self._history_rows(conn, alias, server, limit, before, self.answers)
        page: list[tuple[str, bytes]] = []
        for r in rows:
            body = cached.get(r.id)
            if body is None:
                body = SUMMARY_JSON.dump_json(_summary(r, inits[r.id]), by_alias=True)
                key = _answer_key("summary", r)
                if key is not None:
                    self.answers.put(key, body)
            page.append((r.id, body))
        return page

    def detail(self, alias: str, server: str, execution_id: str) -> ExecutionDetail:
        """One execution with every patch it attempted."""
        with self._reading() as conn:
            row = self._detail_row(conn, alias, server, execution_id)
            patches = conn.execute(_PATCHES, {"execution_id": row.id}).all()
        return _detail(row, list(patches), self.clock())

    def detail_json(self, alias: str, server: str, execution_id: str) -> bytes:
        """`detail` as JSON, exactly what `TypeAdapter(ExecutionDetail).dump_json(detail, by_alias=True)`
        gives; an ended execution's from `answers` after its first read (one statement instead of two)."""
        with self._reading() as conn:
            row = self._detail_row(conn, alias, server, execution_id)
            key = _answer_key("detail", row)
            body = self.answers.get(key) if key is not None else None
            if body is not None:
                return body
            patches = conn.execute(_PATCHES, {"execution_id": row.id}).all()
        body = DETAIL_JSON.dump_json(_detail(row, list(patches), self.clock()), by_alias=True)
        if key is not None:
            self.answers.put(key, body)
        return body

    def _reading(self) -> Any:
        """A pooled connection for plain reads (`read_engine_for`: AUTOCOMMIT, no BEGIN/ROLLBACK)."""
        engine = self._read_engine
        if engine is None:
            bind = self.sessions.kw.get("bind")
            if bind is None:
                raise RuntimeError("PatchService needs sessions bound to an engine")
            engine = self._read_engine = read_engine_for(bind)
        return engine.connect()

    def _history_rows(
        self, conn: Any, alias: str, server: str, limit: int, before: str | None, cache: AnswerCache | None
    ) -> tuple[list[Any], dict[str, list[Any]], dict[str, bytes]]:
        """The page's rows (the columns a summary shows, and `version`), the answers `cache` holds for them,
        and the cycles of the others. One statement (the page and its server's account) when `cache` holds
        every answer of the page, one more for the cycles otherwise; with `before`, two more (the server,
        the cursor); and one more when the page is empty (whether the server exists)."""
        alias = naming.check_alias(alias)
        limit = max(1, min(limit, MAX_PAGE))
        try:
            name = naming.check_server_name(server)
        except naming.NamingError as exc:
            raise NotFound(str(exc)) from None
        if before is None:  # the page with its server's account: one statement
            rows = conn.execute(_PAGE, {"name": name, "limit": limit}).all()
            owner = rows[0].owner if rows else self._owner(conn, name)  # no row: is there such a server?
            if owner != alias:
                raise NotFound(f"server {server} not found")
        else:
            if self._owner(conn, name) != alias:
                raise NotFound(f"server {server} not found")
            cursor = conn.execute(_CURSOR, {"id": naming.check_execution_id(before)}).first()
            if cursor is None or cursor.server_name != name:
                raise NotFound(f"execution {before} not found")
            rows = conn.execute(
                _PAGE_BEFORE, {"name": name, "limit": limit, "created_at": cursor.created_at, "id": cursor.id}
            ).all()
        cached: dict[str, bytes] = {}
        if cache is not None:
            for r in rows:
                key = _answer_key("summary", r)
                body = cache.get(key) if key is not None else None
                if body is not None:
                    cached[r.id] = body
        inits: dict[str, list[Any]] = {r.id: [] for r in rows if r.id not in cached}
        if inits:
            for init in conn.execute(_INITIATIONS, {"ids": list(inits)}):
                inits[init.execution_id].append(init)
        return list(rows), inits, cached

    @staticmethod
    def _owner(conn: Any, name: str) -> str | None:
        """The account of server `name`, None if there is no such server."""
        return conn.execute(_SERVER, {"name": name}).scalar()

    def _detail_row(self, conn: Any, alias: str, server: str, execution_id: str) -> Any:
        """The server and the execution in one statement (servers LEFT JOIN executions), with the same
        404s as `_execution`."""
        try:
            name = naming.check_server_name(server)
        except naming.NamingError as exc:
            raise NotFound(str(exc)) from None
        bad_id: naming.NamingError | None = None
        eid: str | None = None
        try:
            eid = naming.check_execution_id(execution_id)
        except naming.NamingError as exc:
            bad_id = exc
        row = conn.execute(_DETAIL_ROW, {"name": name, "id": eid}).first()
        if row is None or row.account_alias != naming.check_alias(alias):
            raise NotFound(f"server {server} not found")
        if bad_id is not None:
            raise NotFound(str(bad_id))
        if row.id is None:
            raise NotFound(f"execution {execution_id} not found for server {row.name}")
        return row

    def server(self, alias: str, server: str) -> ServerInfo:
        """One server of the account (two queries: the server, its active execution)."""
        with self.sessions() as session:
            row = self._server(session, alias, server)
            active = session.scalar(
                sa.select(models.Execution.id).where(
                    models.Execution.server_name == row.name, models.Execution.ended_at.is_(None)
                )
            )
            return ServerInfo(
                name=row.name,
                account_alias=row.account_alias,
                group_id=row.group_id,
                datacenter=row.datacenter,
                os_type=row.os_type,
                power_state=row.power_state,
                in_maintenance=row.in_maintenance,
                active_execution_id=active,
            )

    def group(self, alias: str, group_id: str) -> GroupInfo:
        """A group of the account with its nested groups and their servers (two queries, any depth)."""
        alias = naming.check_alias(alias)
        try:
            gid = naming.check_group_id(group_id)
        except naming.NamingError as exc:
            raise NotFound(str(exc)) from None
        with self.sessions() as session:
            rows = session.execute(
                sa.select(models.Group.id, models.Group.name, models.Group.datacenter, models.Group.parent_id)
                .where(models.Group.account_alias == alias)
                .order_by(models.Group.id)
            ).all()
            groups = {r.id: r for r in rows}
            if gid not in groups:
                raise NotFound(f"group {group_id} not found")
            children: dict[str, list[str]] = defaultdict(list)
            for r in rows:
                if r.parent_id is not None:
                    children[r.parent_id].append(r.id)
            subtree: set[str] = set()
            frontier = [gid]
            while frontier:
                subtree.update(frontier)
                frontier = [c for g in frontier for c in children[g] if c not in subtree]
            servers: dict[str, list[str]] = defaultdict(list)
            for name, in_group in session.execute(
                sa.select(models.Server.name, models.Server.group_id)
                .where(models.Server.group_id.in_(subtree), models.Server.account_alias == alias)
                .order_by(models.Server.name)
            ):
                if in_group is not None:
                    servers[in_group].append(name)

        def build(node: str, seen: frozenset[str]) -> GroupInfo:
            row = groups[node]
            return GroupInfo(
                id=row.id,
                name=row.name,
                datacenter=row.datacenter,
                parent_id=row.parent_id,
                servers=tuple(servers[node]),
                groups=tuple(build(c, seen | {c}) for c in children[node] if c not in seen),
            )

        return build(gid, frozenset({gid}))

    def execution_state(self, alias: str, execution_id: str) -> machine.State:
        """Where an execution of the account is (one query); the REST queue status is derived from it."""
        alias = naming.check_alias(alias)
        try:
            eid = naming.check_execution_id(execution_id)
        except naming.NamingError as exc:
            raise NotFound(str(exc)) from None
        with self.sessions() as session:
            row = session.execute(
                sa.select(models.Execution.state, models.Execution.account_alias).where(models.Execution.id == eid)
            ).first()
        if row is None or row.account_alias != alias:
            raise NotFound(f"execution {execution_id} not found")
        return machine.State(row.state)

    def _server(self, session: Session, alias: str, server: str) -> models.Server:
        try:
            name = naming.check_server_name(server)
        except naming.NamingError as exc:
            raise NotFound(str(exc)) from None
        row = session.get(models.Server, name)
        if row is None or row.account_alias != naming.check_alias(alias):
            raise NotFound(f"server {server} not found")
        return row

    def _execution(self, session: Session, alias: str, server: str, execution_id: str) -> models.Execution:
        srv = self._server(session, alias, server)
        try:
            eid = naming.check_execution_id(execution_id)
        except naming.NamingError as exc:
            raise NotFound(str(exc)) from None
        row = session.get(models.Execution, eid)
        if row is None or row.server_name != srv.name:
            raise NotFound(f"execution {execution_id} not found for server {srv.name}")
        return row


def _summary(row: Any, inits: list[Any]) -> ExecutionSummary:
    return ExecutionSummary(
        execution_id=row.id,
        status=machine.status_of(machine.State(row.state)),  # type: ignore[arg-type]
        start_time=row.started_at,
        end_time=row.ended_at,
        init_messages=[
            InitMessage(
                start_time=i.started_at,
                end_time=i.ended_at,
                init_begin_message=i.begin_message,
                init_end_message=i.end_message,
                cycle=i.cycle,
                updates_found=i.updates_found,
                reboot_required=i.reboot_required,
            )
            for i in inits
        ],
        state=row.state,
        server=row.server_name,
    )


def _detail(row: Any, patches: list[Any], now: datetime) -> ExecutionDetail:
    failed = sum(1 for p in patches if p.status == "failed")
    return ExecutionDetail(
        execution_id=row.id,
        status=machine.status_of(machine.State(row.state)),  # type: ignore[arg-type]
        start_time=row.started_at,
        end_time=row.ended_at,
        duration=messages.duration((row.ended_at or now) - row.started_at),
        begin_message=row.begin_message,
        end_message=row.end_message,
        patches=[
            PatchDetail(
                start_time=p.started_at,
                end_time=p.ended_at,
                patch_begin_message=p.begin_message,
                patch_end_message=p.end_message,
                status=p.status,  # type: ignore[arg-type]
                kb=p.kb,
                title=p.title,
                url=p.url,
                classification=p.classification,
                cycle=p.cycle,
                result_code=p.result_code,
                hresult=messages.hresult_hex(p.hresult),
                reboot_required=p.reboot_required,
            )
            for p in patches
        ],
        server=row.server_name,
        state=row.state,
        cycles=row.cycle,
        installed_count=row.installed_count,
        failed_count=failed,
        failure_reason=row.failure_reason,
        quarantined=dict(row.quarantined or {}),
        cancelled_by=row.cancelled_by,
        cancel_reason=row.cancel_reason,
    )
