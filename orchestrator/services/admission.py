"""Admission: one requested server checked (name, account, OS, not already being patched) and accepted as a
new execution row with its start email, in the caller's transaction; the CLC answer for it. The bulk path
(bulk.py) accepts many at once with the same rules and falls back here."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.domain import machine, messages, naming, packages
from orchestrator.engine import notifications
from orchestrator.observability import tracing
from orchestrator.persistence import models
from orchestrator.services.errors import CLC_NOT_QUEUED, ServiceError, busy_message, unsupported_message
from schemas.patching import PackageRequest, QueuedServer


class Admission:
    """Accepts servers into new executions (`redrive`: what is dispatched right after commit, the tick leaves
    alone this long)."""

    redrive: timedelta

    def queue_one(
        self,
        session: Session,
        alias: str,
        raw: str,
        pkg: packages.Package,
        package: PackageRequest,
        requested_by: str,
        now: datetime,
    ) -> tuple[QueuedServer, int | None]:
        """The CLC answer for one requested server and the id of its start email (None when not queued)."""
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
            "trace_parent": tracing.current_traceparent(),  # None while traces are off
        }
