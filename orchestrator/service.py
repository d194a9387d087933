"""The service layer: execute a package on servers or groups, read history and detail, cancel.

Entry points (Python API, REST, CLI) call these and only translate their answers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import batch, machine, messages, models, naming, notifications, packages
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

    # --- requests -----------------------------------------------------------------------------

    def execute_package(
        self, alias: str, servers: Sequence[str], package: PackageRequest, requested_by: str
    ) -> list[QueuedServer]:
        """Queue one execution per server; each server is answered on its own (CLC semantics)."""
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
        answers: list[QueuedServer] = []
        queued: list[tuple[str, int | None]] = []
        now = self.clock()
        with self.sessions.begin() as session:
            for raw in servers:
                answer, outbox_id = self._queue_one(session, alias, raw, pkg, package, requested_by, now)
                answers.append(answer)
                if answer.is_queued and answer.execution_id:
                    queued.append((answer.execution_id, outbox_id))
        batch.hand_off(self.dispatcher, [execution_id for execution_id, _ in queued])  # batches when it can
        for _, outbox_id in queued:
            if outbox_id is not None:
                self.dispatcher.deliver(outbox_id)
        return answers

    def execute_package_on_groups(
        self, alias: str, group_ids: Sequence[str], package: PackageRequest, requested_by: str
    ) -> list[QueuedServer]:
        """The group action: every server of the groups and their subgroups, each answered on its own."""
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            names = self.servers_in_groups(session, alias, group_ids)
        if not names:
            raise ServiceError("the groups hold no servers")
        return self.execute_package(alias, names, package, requested_by)

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
            supported = ", ".join(sorted(pkg.os_types))
            message = (
                f"{CLC_NOT_QUEUED} The package {pkg.name} does not support {server.os_type} "
                f"(supported: {supported})."
            )
            return QueuedServer(server=name, is_queued=False, error_message=message), None
        for _ in range(5):
            active = session.scalar(
                sa.select(models.Execution.id).where(
                    models.Execution.server_name == name, models.Execution.ended_at.is_(None)
                )
            )
            if active is not None:
                message = f"{CLC_NOT_QUEUED} Server {name} is already being patched by execution {active}."
                return QueuedServer(server=name, is_queued=False, error_message=message), None
            execution = models.Execution(
                id=naming.new_execution_id(server.datacenter),
                server_name=name,
                account_alias=alias,
                package_id=pkg.id,
                parameters=dict(package.parameters),
                requested_by=requested_by,
                state=machine.State.REQUESTED.value,
                version=0,
                cycle=0,
                attempts=0,
                next_run_at=now,
                dispatched_until=now + self.redrive,
                kb_failures={},
                installed_kbs=[],
                quarantined={},
                installed_count=0,
                cancel_requested=False,
                created_at=now,
                started_at=now,
                updated_at=now,
                begin_message=messages.EXECUTION_BEGIN,
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

    def history(
        self, alias: str, server: str, limit: int = 50, before: str | None = None
    ) -> list[ExecutionSummary]:
        """A server's executions, newest first; `before` is the last execution id of the previous page."""
        alias = naming.check_alias(alias)
        limit = max(1, min(limit, MAX_PAGE))
        with self.sessions() as session:
            name = self._server(session, alias, server).name
            query = sa.select(models.Execution).where(models.Execution.server_name == name)
            if before is not None:
                cursor = session.get(models.Execution, naming.check_execution_id(before))
                if cursor is None or cursor.server_name != name:
                    raise NotFound(f"execution {before} not found")
                query = query.where(
                    sa.tuple_(models.Execution.created_at, models.Execution.id)
                    < sa.tuple_(sa.literal(cursor.created_at, models.Execution.created_at.type), cursor.id)
                )
            rows = session.scalars(
                query.order_by(models.Execution.created_at.desc(), models.Execution.id.desc()).limit(limit)
            ).all()
            ids = [r.id for r in rows]
            inits: dict[str, list[models.Initiation]] = {i: [] for i in ids}
            if ids:
                for init in session.scalars(
                    sa.select(models.Initiation)
                    .where(models.Initiation.execution_id.in_(ids))
                    .order_by(models.Initiation.cycle)
                ):
                    inits[init.execution_id].append(init)
            return [_summary(r, inits[r.id]) for r in rows]

    def detail(self, alias: str, server: str, execution_id: str) -> ExecutionDetail:
        """One execution with every patch it attempted."""
        with self.sessions() as session:
            row = self._execution(session, alias, server, execution_id)
            patches = session.scalars(
                sa.select(models.Patch).where(models.Patch.execution_id == row.id).order_by(models.Patch.id)
            ).all()
            return _detail(row, list(patches), self.clock())

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


def _summary(row: models.Execution, inits: list[models.Initiation]) -> ExecutionSummary:
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


def _detail(row: models.Execution, patches: list[models.Patch], now: datetime) -> ExecutionDetail:
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
