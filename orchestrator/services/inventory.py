"""Accounts, groups and servers: the inventory the orchestrator patches (registered here, read by
`InventoryQueries`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain import naming
from orchestrator.persistence import models
from orchestrator.services.errors import NotFound, ServiceError


@dataclass(frozen=True)
class ServerSpec:
    """A server to register: name, OS, power state and the group it sits in."""

    name: str
    os_type: str
    power_state: str
    group_id: str | None


def ensure_account(session: Session, alias: str, name: str, datacenter: str, email: str, now: datetime) -> str:
    """Create the account if it does not exist; returns its alias."""
    alias = naming.check_alias(alias)
    if session.get(models.Account, alias) is None:
        session.add(
            models.Account(
                alias=alias, name=name, datacenter=naming.check_datacenter(datacenter), email=email,
                created_at=now,
            )
        )
        session.flush()
    return alias


def ensure_group(
    session: Session, alias: str, group_id: str, name: str, parent_id: str | None = None
) -> str:
    """Create the group (nested under `parent_id`) if it does not exist."""
    gid = naming.check_group_id(group_id)
    if session.get(models.Group, gid) is None:
        session.add(
            models.Group(
                id=gid, account_alias=naming.check_alias(alias), name=name,
                datacenter=gid[:3].upper(), parent_id=parent_id,
            )
        )
        session.flush()
    return gid


def register_servers(session: Session, alias: str, specs: Iterable[ServerSpec]) -> int:
    """Add servers that are not registered yet; returns how many were added."""
    alias = naming.check_alias(alias)
    existing = set(
        session.scalars(sa.select(models.Server.name).where(models.Server.account_alias == alias)).all()
    )
    added = 0
    for spec in specs:
        name = naming.check_server_name(spec.name, alias)
        if name in existing:
            continue
        session.add(
            models.Server(
                name=name,
                account_alias=alias,
                group_id=spec.group_id,
                datacenter=naming.datacenter_of(name),
                os_type=spec.os_type,
                power_state=spec.power_state,
                in_maintenance=False,
            )
        )
        existing.add(name)
        added += 1
    session.flush()
    return added


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
    registered_at: datetime | None = None  # when patchaas first knew its account (no per-server record)
    last_run_at: datetime | None = None  # the last time a run of patchaas changed anything on it
    last_run_by: str | None = None  # who asked for that run


@dataclass(frozen=True)
class GroupInfo:
    """A group, the servers directly in it and its nested groups (recursively)."""

    id: str
    name: str
    datacenter: str
    parent_id: str | None
    servers: tuple[str, ...]
    groups: tuple[GroupInfo, ...]
    registered_at: datetime | None = None  # when patchaas first knew its account (no per-group record)


class InventoryQueries:
    """Reads of an account's servers and groups (`sessions`: set by the service that inherits this)."""

    sessions: sessionmaker[Session]

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

    # --- queries ------------------------------------------------------------------------------
    #
    # The summary and detail reads are the REST API's hot paths (issue 7). They read plain Core rows on an
    # AUTOCOMMIT connection (`_reading`): each is a few SELECTs under READ COMMITTED, where a transaction
    # would add no consistency (every statement takes its own snapshot either way) but would cost the
    # ROLLBACK round trip that ends a read-only session. The JSON of an ended execution is kept in `answers`
    # (`AnswerCache`): once `ended_at` is set nothing changes the execution, its cycles or its patches.

    def server(self, alias: str, server: str) -> ServerInfo:
        """One server of the account (two queries: the server with its account, its newest execution, which
        is the active one if any is: one execution per server at a time)."""
        with self.sessions() as session:
            row = self._server(session, alias, server)
            e = models.Execution
            latest = session.execute(
                sa.select(e.id, e.ended_at, e.updated_at, e.requested_by)
                .where(e.server_name == row.name).order_by(e.created_at.desc(), e.id.desc()).limit(1)
            ).first()
            active = latest.id if latest is not None and latest.ended_at is None else None
            account = session.get(models.Account, row.account_alias)  # in the identity map after _server's join
            return ServerInfo(
                name=row.name,
                account_alias=row.account_alias,
                group_id=row.group_id,
                datacenter=row.datacenter,
                os_type=row.os_type,
                power_state=row.power_state,
                in_maintenance=row.in_maintenance,
                active_execution_id=active,
                registered_at=account.created_at if account is not None else None,
                last_run_at=latest.updated_at if latest is not None else None,
                last_run_by=latest.requested_by if latest is not None else None,
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
                sa.select(models.Group.id, models.Group.name, models.Group.datacenter, models.Group.parent_id,
                          models.Account.created_at)
                .join(models.Account, models.Account.alias == models.Group.account_alias)
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
                registered_at=row.created_at,
            )

        return build(gid, frozenset({gid}))

    def _server(self, session: Session, alias: str, server: str) -> models.Server:
        try:
            name = naming.check_server_name(server)
        except naming.NamingError as exc:
            raise NotFound(str(exc)) from None
        found = session.execute(
            sa.select(models.Server, models.Account)
            .join(models.Account, models.Account.alias == models.Server.account_alias)
            .where(models.Server.name == name)
        ).first()
        if found is None or found[0].account_alias != naming.check_alias(alias):
            raise NotFound(f"server {server} not found")
        return found[0]
