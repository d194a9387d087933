"""The reads the web console shows beside the REST answers: an account's runs in flight (with per-server progress),
the servers that need attention, one row per group with its compliance, recent rollouts and their members,
and an execution's steps (the `execution_events` audit trail). Scoped to one account like every read of
`PatchQueries`: another account's execution or rollout is a NotFound, as a missing one.

Cost: the overview is a handful of statements whatever the history's length (active executions use the partial
indexes on `ended_at IS NULL`; recently ended ones are bounded by `recent`), plus the compliance report
(orchestrator/services/compliance.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from orchestrator.domain import machine, naming
from orchestrator.persistence import models
from orchestrator.services import compliance
from orchestrator.services.errors import NotFound
from orchestrator.services.health import LOOKBACK, OVERDUE_AFTER

if TYPE_CHECKING:
    from orchestrator.services.patching import PatchService

RECENT = timedelta(hours=24)  # ended runs the overview still lists beside the running ones
MAX_RUNS = 200


@dataclass(frozen=True)
class RunRow:
    """One execution as the overview's progress table shows it."""

    execution_id: str
    server: str
    state: str
    status: str
    cycle: int
    installed: int
    failed: int
    next_run_at: datetime | None
    deadline_at: datetime | None
    started_at: datetime
    ended_at: datetime | None
    rollout_id: int | None
    held: bool  # waiting for its rollout's gate
    cancel_requested: bool
    note: str


@dataclass(frozen=True)
class Attention:
    """A server an operator should look at, and why."""

    server: str
    kind: str  # failed | quarantined | maintenance | overdue
    detail: str
    execution_id: str | None = None


@dataclass(frozen=True)
class GroupRow:
    """A group with its servers' compliance (the group's own servers and those of its nested groups)."""

    id: str
    name: str
    parent_id: str | None
    depth: int
    direct_servers: int
    servers: int
    running: int
    counts: dict[str, int]


@dataclass(frozen=True)
class RolloutRow:
    id: int
    state: str
    total: int
    requested_by: str
    created_at: datetime
    stop_reason: str | None


@dataclass(frozen=True)
class MemberRow:
    """One execution of a rollout."""

    execution_id: str
    server: str
    wave: int
    position: int
    state: str
    status: str
    held: bool
    note: str


@dataclass(frozen=True)
class EventRow:
    """One saved transition of an execution."""

    at: datetime
    from_state: str
    to_state: str
    cycle: int
    note: str


@dataclass(frozen=True)
class FleetView:
    at: datetime
    active_by_state: dict[str, int]
    runs: tuple[RunRow, ...]
    attention: tuple[Attention, ...]
    groups: tuple[GroupRow, ...]
    compliance: compliance.ComplianceReport
    rollouts: tuple[RolloutRow, ...]


def runs(service: PatchService, alias: str, now: datetime, recent: timedelta = RECENT) -> list[RunRow]:
    """The account's active executions and those ended within `recent`, newest first (two statements)."""
    alias = naming.check_alias(alias)
    e, p = models.Execution, models.Patch
    with service.sessions() as session:
        rows = session.execute(
            sa.select(e.id, e.server_name, e.state, e.cycle, e.installed_count, e.next_run_at, e.deadline_at,
                      e.started_at, e.ended_at, e.rollout_id, e.cancel_requested, e.failure_reason, e.reboot_reason)
            .where(e.account_alias == alias, sa.or_(e.ended_at.is_(None), e.ended_at >= now - recent))
            .order_by(e.created_at.desc(), e.id.desc()).limit(MAX_RUNS)
        ).all()
        ids = [r.id for r in rows]
        failed = dict(session.execute(
            sa.select(p.execution_id, sa.func.count()).where(p.execution_id.in_(ids), p.status == "failed")
            .group_by(p.execution_id)
        ).all()) if ids else {}
    return [
        RunRow(execution_id=r.id, server=r.server_name, state=r.state,
               status=machine.status_of(machine.State(r.state)), cycle=r.cycle, installed=r.installed_count,
               failed=int(failed.get(r.id, 0)), next_run_at=r.next_run_at, deadline_at=r.deadline_at,
               started_at=r.started_at, ended_at=r.ended_at, rollout_id=r.rollout_id,
               held=r.ended_at is None and r.next_run_at is None, cancel_requested=bool(r.cancel_requested),
               note=(r.failure_reason or r.reboot_reason or ""))
        for r in rows
    ]


def fleet(service: PatchService, alias: str, now: datetime) -> FleetView:
    """Everything the overview page shows."""
    alias = naming.check_alias(alias)
    report = compliance.for_account(service, alias, (), None)
    progress = runs(service, alias, now)
    active = [r for r in progress if r.ended_at is None]
    by_state: dict[str, int] = defaultdict(int)
    for r in active:
        by_state[r.state] += 1
    attention: list[Attention] = []
    for s in report.servers:
        if s.execution_status == "failed":
            attention.append(Attention(s.server, "failed", s.reason, s.execution_id))
        if s.failed:
            attention.append(Attention(s.server, "quarantined", "quarantined: " + ", ".join(s.failed), s.execution_id))
    e = models.Execution
    late = now - OVERDUE_AFTER
    with service.sessions() as session:
        later = aliased(e)
        for server, execution_id in session.execute(
            sa.select(e.server_name, e.id).where(
                e.account_alias == alias, e.ended_at >= now - LOOKBACK, e.failure_reason.like("%cleanup stopped%"),
                ~sa.exists().where(later.server_name == e.server_name, later.created_at > e.ended_at))
            .order_by(e.ended_at.desc()).limit(100)
        ):
            attention.append(Attention(server, "maintenance", "may still be in maintenance mode: the run could not "
                                       "turn it off", execution_id))
        free = sa.or_(e.lease_expires_at.is_(None), e.lease_expires_at < now)
        for server, execution_id, due in session.execute(
            sa.select(e.server_name, e.id, e.next_run_at)
            .where(e.account_alias == alias, e.ended_at.is_(None), e.next_run_at < late, free)
            .order_by(e.next_run_at).limit(100)
        ):
            attention.append(Attention(server, "overdue", f"timer {int((now - due).total_seconds())} s late",
                                       execution_id))
        groups = session.execute(
            sa.select(models.Group.id, models.Group.name, models.Group.parent_id)
            .where(models.Group.account_alias == alias).order_by(models.Group.id)
        ).all()
        placement = dict(session.execute(
            sa.select(models.Server.name, models.Server.group_id).where(models.Server.account_alias == alias)
        ).all())
        recent_rollouts = session.execute(
            sa.select(models.Rollout).where(models.Rollout.account_alias == alias)
            .order_by(models.Rollout.id.desc()).limit(10)
        ).scalars().all()
        rollout_rows = tuple(RolloutRow(r.id, r.state, r.total, r.requested_by, r.created_at, r.stop_reason)
                             for r in recent_rollouts)
    return FleetView(at=now, active_by_state=dict(sorted(by_state.items())), runs=tuple(progress),
                     attention=tuple(attention), groups=tuple(_group_rows(groups, placement, report, active)),
                     compliance=report, rollouts=rollout_rows)


def _group_rows(groups: list[sa.Row], placement: dict[str, str | None],  # type: ignore[type-arg]
                report: compliance.ComplianceReport, active: list[RunRow]) -> list[GroupRow]:
    """Groups in tree order (each after its parent), each counting its subtree's servers."""
    children: dict[str | None, list[sa.Row]] = defaultdict(list)  # type: ignore[type-arg]
    known = {g.id for g in groups}
    for g in groups:
        children[g.parent_id if g.parent_id in known else None].append(g)
    direct: dict[str, list[str]] = defaultdict(list)
    for server, gid in placement.items():
        if gid is not None:
            direct[gid].append(server)
    status = {s.server: s.status for s in report.servers}
    running = {r.server for r in active}
    rows: list[GroupRow] = []

    def subtree(gid: str, seen: frozenset[str]) -> list[str]:
        names = list(direct[gid])
        for child in children[gid]:
            if child.id not in seen:
                names += subtree(child.id, seen | {child.id})
        return names

    def walk(parent: str | None, depth: int, seen: frozenset[str]) -> None:
        for g in children[parent]:
            if g.id in seen:
                continue
            names = subtree(g.id, frozenset({g.id}))
            counts = {"compliant": 0, "non_compliant": 0, "unknown": 0}
            for name in names:
                counts[status.get(name, "unknown")] += 1
            rows.append(GroupRow(g.id, g.name, g.parent_id, depth, len(direct[g.id]), len(names),
                                 sum(1 for n in names if n in running), counts))
            walk(g.id, depth + 1, seen | {g.id})

    walk(None, 0, frozenset())
    return rows


def rollout_members(service: PatchService, alias: str, rollout_id: int) -> list[MemberRow]:
    """The executions of a rollout of the account, by wave and position (NotFound for another account's)."""
    alias = naming.check_alias(alias)
    e = models.Execution
    with service.sessions() as session:
        owner = session.scalar(sa.select(models.Rollout.account_alias).where(models.Rollout.id == rollout_id))
        if owner != alias:
            raise NotFound(f"rollout {rollout_id} not found")
        rows = session.execute(
            sa.select(e.id, e.server_name, e.rollout_wave, e.rollout_position, e.state, e.ended_at, e.next_run_at,
                      e.failure_reason, e.cancel_reason)
            .where(e.rollout_id == rollout_id).order_by(e.rollout_wave, e.rollout_position)
        ).all()
    return [MemberRow(r.id, r.server_name, int(r.rollout_wave or 1), int(r.rollout_position or 0), r.state,
                      machine.status_of(machine.State(r.state)), r.ended_at is None and r.next_run_at is None,
                      r.failure_reason or r.cancel_reason or "") for r in rows]


def events(service: PatchService, alias: str, server: str, execution_id: str) -> list[EventRow]:
    """The saved transitions of one execution of the account's server, oldest first (the same 404s as the
    detail: another account's server or execution is not found)."""
    alias = naming.check_alias(alias)
    try:
        name = naming.check_server_name(server)
        eid = naming.check_execution_id(execution_id)
    except naming.NamingError as exc:
        raise NotFound(str(exc)) from None
    e, ev = models.Execution, models.ExecutionEvent
    with service.sessions() as session:
        owner = session.execute(sa.select(e.account_alias, e.server_name).where(e.id == eid)).first()
        if owner is None or owner.account_alias != alias or owner.server_name != name:
            raise NotFound(f"execution {execution_id} not found for server {name}")
        rows = session.execute(
            sa.select(ev.at, ev.from_state, ev.to_state, ev.cycle, ev.note)
            .where(ev.execution_id == eid).order_by(ev.id)
        ).all()
    return [EventRow(r.at, r.from_state, r.to_state, r.cycle, r.note) for r in rows]
