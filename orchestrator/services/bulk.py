"""Accepting many executions in one request (a group action on thousands of servers) with a constant number
of statements per thousand servers, instead of seven round trips per server.

The per-server path (`Admission.queue_one` (admission.py)) reads the server, looks for an execution already patching
it, and inserts the execution and its start email inside a savepoint, retrying a new id on a collision.
Here the same checks are made for all servers at once: the servers and their active executions are read
with `IN` lists, the new executions are inserted with `ON CONFLICT DO NOTHING … RETURNING` (the unique
index on a server's active execution still decides, even against a concurrent request), and their start
emails in one more statement, `INSERT_CHUNK` servers at a time. What the bulk insert did not take is looked
at again in bulk: a server a concurrent request just took is answered busy, an id collision (execution ids
are 6 random digits: a group action of 100,000 servers draws thousands of ids already taken) is inserted
again with a new id. What is left after that (still colliding after `ID_ATTEMPTS`, a server named twice, a
malformed name) goes through the per-server path in the same transaction, which answers it exactly as
before.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from orchestrator.domain import naming, packages
from orchestrator.engine import notifications
from orchestrator.persistence import models
from orchestrator.services.admission import Admission
from orchestrator.services.errors import CLC_NOT_QUEUED, busy_message, unsupported_message
from schemas.patching import PackageRequest, QueuedServer

CHUNK = 1000  # names per IN list
INSERT_CHUNK = 5000  # executions built and inserted at a time (their columns are not all held at once)
ID_ATTEMPTS = 5  # bulk inserts of the executions an id collision refused, before the per-server path

Answer = tuple[QueuedServer, int | None]


def queue_many(
    service: Admission,
    session: Session,
    alias: str,
    raws: Sequence[str],
    pkg: packages.Package,
    package: PackageRequest,
    requested_by: str,
    now: datetime,
) -> list[Answer]:
    """One answer per requested server, in order, as `Admission.queue_one` (admission.py) would give them."""
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        return [service.queue_one(session, alias, raw, pkg, package, requested_by, now) for raw in raws]
    answers: list[Answer | None] = [None] * len(raws)
    first: dict[str, int] = {}
    later: list[int] = []  # answered one by one, after the bulk insert
    for index, raw in enumerate(raws):
        try:
            name = naming.check_server_name(raw)
        except naming.NamingError:
            later.append(index)
            continue
        if name in first:
            later.append(index)  # named twice: the second finds the first's execution
        else:
            first[name] = index
    names = list(first)
    servers = _servers(session, names)
    active = _active(session, names)

    accepted: list[tuple[int, str, str]] = []  # (index, server, datacenter): to insert
    for name, index in first.items():
        server = servers.get(name)
        if server is None or server.account_alias != alias:
            answers[index] = QueuedServer(server=raws[index], is_queued=False, error_message=CLC_NOT_QUEUED), None
        elif not pkg.supports(server.os_type):
            message = unsupported_message(pkg, server.os_type)
            answers[index] = QueuedServer(server=name, is_queued=False, error_message=message), None
        elif name in active:
            message = busy_message(name, active[name])
            answers[index] = QueuedServer(server=name, is_queued=False, error_message=message), None
        else:
            accepted.append((index, name, server.datacenter))
    del servers, active
    used: set[str] = set()  # the ids this request gave: never twice (the id space is 900,000 per datacenter)
    for start in range(0, len(accepted), INSERT_CHUNK):  # the rows of one chunk at a time in memory
        chunk = accepted[start:start + INSERT_CHUNK]
        taken, left = _insert_with_retries(service, session, dialect, chunk, answers, used,
                                           (alias, pkg, package, requested_by, now))
        later += left
        outbox = _insert_start_emails(session, alias, [(name, eid) for _, name, eid in taken], now, service.redrive)
        for index, name, eid in taken:
            answers[index] = QueuedServer(server=name, is_queued=True, execution_id=eid), outbox.get(eid)
    for index in sorted(later):
        answers[index] = service.queue_one(session, alias, raws[index], pkg, package, requested_by, now)
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def _insert_with_retries(
    service: Admission, session: Session, dialect: str, chunk: list[tuple[int, str, str]],
    answers: list[Answer | None], used: set[str], request: tuple[Any, ...],
) -> tuple[list[tuple[int, str, str]], list[int]]:
    """Insert the executions of `chunk` (index, server, datacenter) with fresh ids; what the unique keys
    refused is looked at again in bulk: a server taken meanwhile by another request is answered busy (as
    the per-server path would), an id collision gets a new id, up to `ID_ATTEMPTS` times. (inserted as
    (index, server, execution id), the indexes left for the per-server path)."""
    alias, pkg, package, requested_by, now = request
    pending: list[tuple[int, str, str, dict[str, Any]]] = []
    for index, name, datacenter in chunk:
        values = service.execution_values(name, datacenter, alias, pkg, package, requested_by, now)
        pending.append((index, name, datacenter, values))
    taken: list[tuple[int, str, str]] = []
    for attempt in range(ID_ATTEMPTS):
        for _, _, datacenter, values in pending:
            while values["id"] in used:
                values["id"] = naming.new_execution_id(datacenter)
            used.add(values["id"])
        inserted = _insert_executions(session, dialect, [values for *_, values in pending])
        refused = []
        for item in pending:
            index, name, _, values = item
            if inserted.get(name) == values["id"]:
                taken.append((index, name, values["id"]))
            else:
                refused.append(item)
        if not refused or attempt == ID_ATTEMPTS - 1:
            return taken, [index for index, *_ in refused]
        busy = _active(session, [name for _, name, _, _ in refused])  # a concurrent request took the server
        pending = []
        for index, name, datacenter, values in refused:
            if name in busy:
                message = busy_message(name, busy[name])
                answers[index] = QueuedServer(server=name, is_queued=False, error_message=message), None
            else:
                values["id"] = naming.new_execution_id(datacenter)  # an id collision: another id
                pending.append((index, name, datacenter, values))
        if not pending:
            break
    return taken, []


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def _servers(session: Session, names: Sequence[str]) -> dict[str, sa.Row[Any]]:
    table = models.Server.__table__
    found: dict[str, sa.Row[Any]] = {}
    for chunk in _chunks(names):
        query = sa.select(table.c.name, table.c.account_alias, table.c.os_type, table.c.datacenter)
        for row in session.execute(query.where(table.c.name.in_(chunk))):
            found[row.name] = row
    return found


def _active(session: Session, names: Sequence[str]) -> dict[str, str]:
    table = models.Execution.__table__
    active: dict[str, str] = {}
    for chunk in _chunks(names):
        query = sa.select(table.c.server_name, table.c.id).where(table.c.server_name.in_(chunk),
                                                                  table.c.ended_at.is_(None))
        active.update({row.server_name: row.id for row in session.execute(query)})
    return active


def _insert_executions(session: Session, dialect: str, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Insert what no unique key refuses; {server: execution id} of the rows inserted."""
    if not rows:
        return {}
    table = models.Execution.__table__
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    statement = insert.on_conflict_do_nothing().returning(table.c.server_name, table.c.id)
    return {row.server_name: row.id for row in session.execute(statement, rows)}


def _insert_start_emails(
    session: Session, alias: str, executions: list[tuple[str, str]], now: datetime, redrive: Any
) -> dict[str, int]:
    """The start email of each new execution, as `notifications.enqueue` writes it; {execution: outbox id}."""
    if not executions:
        return {}
    account = session.get(models.Account, alias)
    recipient = account.email if account else "unknown@invalid"
    rows = []
    for name, eid in executions:
        subject, body = notifications.compose(session, models.Execution(id=eid, server_name=name,
                                                                        account_alias=alias), "start")
        rows.append({
            "execution_id": eid, "kind": "start", "recipient": recipient, "subject": subject, "body": body,
            "message_id": notifications.message_id(eid, "start"), "created_at": now,
            "dispatched_until": now + redrive, "attempts": 0,
        })
    table = models.Outbox.__table__
    result = session.execute(sa.insert(table).returning(table.c.execution_id, table.c.id), rows)
    return {row.execution_id: row.id for row in result}
