"""Patch compliance: is each server of an account (or of some groups) at the latest vendor patches, as far as
its most recent finished run knows? What AWS Patch Manager and Azure Update Manager show as a fleet's
compliance, from our own records (executions and their patch rows), without asking the servers.

A server is
- `compliant`     its last finished run completed with nothing left to install (or a scan-only run found
                  nothing missing);
- `non_compliant` its last finished run failed (the KBs it quarantined are `failed`), was cancelled (e.g. a
                  window's cutoff stopped it: updates may remain), or was a scan that found updates
                  (`missing`);
- `unknown`       it has never finished a run.
`as_of` is when that run ended: a compliant answer from months ago is only as good as its date, and the
caller decides what is too old (`stale_after`). A run in progress does not change the answer until it ends
(`patching_now` says it is running).

Cost: one query for the servers, one for their latest finished runs (a window function over the
`(server_name, created_at)` index), one for running ones, one for the missing updates of scan-only runs;
batched by CHUNK servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.domain import naming
from orchestrator.persistence import models
from schemas import selection

if TYPE_CHECKING:
    from orchestrator.services.patching import PatchService

Status = Literal["compliant", "non_compliant", "unknown"]
CHUNK = 500


@dataclass(frozen=True)
class ServerCompliance:
    server: str
    os_type: str
    status: Status
    reason: str
    execution_id: str | None = None
    execution_status: str | None = None
    as_of: datetime | None = None
    installed: int = 0
    missing: tuple[str, ...] = ()  # offered by a scan-only run, not installed
    failed: tuple[str, ...] = ()  # quarantined by the run (failed twice, or an update loop)
    patching_now: bool = False
    stale: bool = False


@dataclass(frozen=True)
class ComplianceReport:
    alias: str
    at: datetime
    servers: tuple[ServerCompliance, ...]

    def counts(self) -> dict[str, int]:
        counts = {"compliant": 0, "non_compliant": 0, "unknown": 0}
        for server in self.servers:
            counts[server.status] += 1
        return counts


def report(session: Session, alias: str, servers: Sequence[tuple[str, str]], now: datetime,
           stale_after: timedelta | None = None) -> ComplianceReport:
    """Compliance of `servers` ((name, os type) pairs of account `alias`) as of `now`."""
    alias = naming.check_alias(alias)
    answers: list[ServerCompliance] = []
    for start in range(0, len(servers), CHUNK):
        chunk = servers[start:start + CHUNK]
        answers += _chunk(session, chunk, now, stale_after)
    return ComplianceReport(alias, now, tuple(answers))


def _chunk(session: Session, servers: Sequence[tuple[str, str]], now: datetime,
           stale_after: timedelta | None) -> list[ServerCompliance]:
    e = models.Execution
    names = [name for name, _ in servers]
    ranked = (
        sa.select(e.id, e.server_name, e.state, e.ended_at, e.failure_reason, e.parameters, e.quarantined,
                  e.installed_count,
                  sa.func.row_number().over(partition_by=e.server_name, order_by=e.created_at.desc()).label("n"))
        .where(e.server_name.in_(names), e.ended_at.is_not(None))
        .subquery()
    )
    latest = {row.server_name: row for row in session.execute(sa.select(ranked).where(ranked.c.n == 1)).all()}
    running = set(session.scalars(sa.select(e.server_name).where(e.server_name.in_(names), e.ended_at.is_(None))))
    scans = [row.id for row in latest.values() if _scan_only(row.parameters)]
    missing: dict[str, list[str]] = {}
    if scans:
        p = models.Patch
        for execution_id, kb in session.execute(
            sa.select(p.execution_id, p.kb).where(p.execution_id.in_(scans), p.status == "pending").order_by(p.id)
        ):
            missing.setdefault(execution_id, []).append(kb)
    return [_judge(name, os_type, latest.get(name), name in running, missing, now, stale_after)
            for name, os_type in servers]


def _scan_only(parameters: dict[str, object] | None) -> bool:
    try:
        return selection.parse(dict(parameters or {})).scan_only
    except ValueError:
        return False


def _judge(name: str, os_type: str, run: sa.Row | None, patching_now: bool,  # type: ignore[type-arg]
           missing: dict[str, list[str]], now: datetime, stale_after: timedelta | None) -> ServerCompliance:
    if run is None:
        why = "never finished a patch run" + (" (the first one is running)" if patching_now else "")
        return ServerCompliance(name, os_type, "unknown", why, patching_now=patching_now)
    failed = tuple(sorted((run.quarantined or {}).keys()))
    lacking = tuple(dict.fromkeys(missing.get(run.id, ())))
    ended = f"{run.ended_at:%Y-%m-%d %H:%M} UTC"
    status: Status
    if run.state == "completed" and _scan_only(run.parameters):
        status = "non_compliant" if lacking else "compliant"
        reason = (f"scan {run.id} of {ended} found {len(lacking)} updates to install" if lacking
                  else f"scan {run.id} of {ended} found nothing to install")
    elif run.state == "completed":
        status, reason = "compliant", f"run {run.id} completed {ended}: nothing left to install"
    elif run.state == "cancelled":
        status, reason = "non_compliant", f"run {run.id} was stopped {ended}: {run.failure_reason or 'cancelled'}"
    else:
        status, reason = "non_compliant", f"run {run.id} failed {ended}: {run.failure_reason or 'failed'}"
    stale = stale_after is not None and run.ended_at is not None and now - run.ended_at > stale_after
    return ServerCompliance(name, os_type, status, reason, run.id, run.state, run.ended_at,
                            int(run.installed_count or 0), lacking, failed, patching_now, stale)


def for_account(service: PatchService, alias: str, groups: Sequence[str] = (),
                stale_after: timedelta | None = None) -> ComplianceReport:
    """The compliance of an account's servers, or of those in `groups` (nested groups included)."""
    from orchestrator.services.errors import NotFound

    alias = naming.check_alias(alias)
    with service.sessions() as session:
        if session.get(models.Account, alias) is None:
            raise NotFound(f"account {alias} not found")
        s = models.Server
        query = sa.select(s.name, s.os_type).where(s.account_alias == alias).order_by(s.name)
        if groups:
            query = query.where(s.name.in_(service.servers_in_groups(session, alias, groups)))
        servers = [(str(n), str(o)) for n, o in session.execute(query).all()]
        return report(session, alias, servers, service.clock(), stale_after)
