"""Accounts, groups and servers: the inventory the orchestrator patches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import models, naming


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
