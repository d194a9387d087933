"""The read side of executions: a server's history (the CLC summary), one execution's detail, servers and
groups of the inventory, rollouts. Plain Core rows on an AUTOCOMMIT connection; ended executions' JSON from
the answer cache (answers.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import ports
from orchestrator.domain import machine, messages, naming
from orchestrator.persistence import health_models, hook_models, models
from orchestrator.services import rollouts
from orchestrator.services.answers import DETAIL_JSON, SUMMARY_JSON, AnswerCache, answer_key, read_engine_for
from orchestrator.services.errors import NotFound
from orchestrator.services.inventory import InventoryQueries
from schemas.patching import (
    ExecutionDetail,
    ExecutionSummary,
    HealthCheckDetail,
    HookRunDetail,
    InitMessage,
    PatchDetail,
)

MAX_PAGE = 500

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
    _executions.c.quarantined, _executions.c.cancelled_by, _executions.c.cancel_reason, _executions.c.health,
    _executions.c.hook_plan.is_not(None).label("has_hooks"),  # a run without hooks: no hook_runs statement
).select_from(
    _servers.outerjoin(_executions, sa.and_(_executions.c.id == sa.bindparam("id"),
                                            _executions.c.server_name == _servers.c.name))
).where(_servers.c.name == sa.bindparam("name"))
_PATCHES = (
    sa.select(models.Patch.__table__)
    .where(models.Patch.__table__.c.execution_id == sa.bindparam("execution_id"))
    .order_by(models.Patch.__table__.c.id)
)
_HOOK_RUNS = (  # the detail's `hooks` (migration 0014)
    sa.select(hook_models.HookRun.__table__)
    .where(hook_models.HookRun.__table__.c.execution_id == sa.bindparam("execution_id"))
    .order_by(hook_models.HookRun.__table__.c.id)
)


_HEALTH_CHECKS = (  # the detail's `health_checks` (migration 0013)
    sa.select(health_models.HealthCheckResult.__table__)
    .where(health_models.HealthCheckResult.__table__.c.execution_id == sa.bindparam("execution_id"))
    .order_by(health_models.HealthCheckResult.__table__.c.id)
)


class PatchQueries(InventoryQueries):
    """Queries on executions, servers, groups and rollouts of an account."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        dispatcher: ports.Dispatcher,
        clock: Callable[[], datetime],
        redrive: timedelta = timedelta(seconds=30),
    ) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.clock = clock
        self.redrive = redrive  # what we dispatch right after commit, the tick leaves alone this long
        self.bulk_from = 2  # requests for at least this many servers are accepted in bulk (bulk.py)
        self.answers = AnswerCache()  # JSON of ended executions' summaries and details (REST hot paths)
        self._read_engine: Any = None

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
                key = answer_key("summary", r)
                if key is not None:
                    self.answers.put(key, body)
            page.append((r.id, body))
        return page

    def detail(self, alias: str, server: str, execution_id: str) -> ExecutionDetail:
        """One execution with every patch it attempted."""
        with self._reading() as conn:
            row = self._detail_row(conn, alias, server, execution_id)
            patches = conn.execute(_PATCHES, {"execution_id": row.id}).all()
            hook_runs = _hook_runs_of(conn, row)
            checks = _checks_of(conn, row)
        return _detail(row, list(patches), self.clock(), hook_runs, checks)

    def detail_json(self, alias: str, server: str, execution_id: str) -> bytes:
        """`detail` as JSON, exactly what `TypeAdapter(ExecutionDetail).dump_json(detail, by_alias=True)`
        gives; an ended execution's from `answers` after its first read (one statement instead of two)."""
        with self._reading() as conn:
            row = self._detail_row(conn, alias, server, execution_id)
            key = answer_key("detail", row)
            body = self.answers.get(key) if key is not None else None
            if body is not None:
                return body
            patches = conn.execute(_PATCHES, {"execution_id": row.id}).all()
            hook_runs = _hook_runs_of(conn, row)
            checks = _checks_of(conn, row)
        body = DETAIL_JSON.dump_json(_detail(row, list(patches), self.clock(), hook_runs, checks), by_alias=True)
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
                key = answer_key("summary", r)
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


def _hook_runs_of(conn: Any, row: Any) -> Sequence[Any]:
    """The execution's hook runs; no statement for a run whose plan has no hook (`hook_plan` unset)."""
    return conn.execute(_HOOK_RUNS, {"execution_id": row.id}).all() if row.has_hooks else ()


def _checks_of(conn: Any, row: Any) -> Sequence[Any]:
    """The execution's health check attempts; no statement for a run that never ran a check (`health` unset)."""
    return conn.execute(_HEALTH_CHECKS, {"execution_id": row.id}).all() if row.health is not None else ()


def _detail(row: Any, patches: list[Any], now: datetime, hook_runs: Sequence[Any] = (),
            checks: Sequence[Any] = ()) -> ExecutionDetail:
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
        hooks=[HookRunDetail(name=h.hook_name, point=h.point, cycle=h.cycle, kind=h.kind, status=h.status,
                             on_failure=h.on_failure, exit_code=h.exit_code, output=h.output, attempts=h.attempts,
                             start_time=h.started_at, end_time=h.ended_at) for h in hook_runs],
        health_checks=[HealthCheckDetail(name=c.check_name, kind=c.kind, target=c.target, phase=c.phase, cycle=c.cycle,
                                         attempt=c.attempt, status=c.status, output=c.output,
                                         start_time=c.started_at, end_time=c.ended_at) for c in checks],
    )
