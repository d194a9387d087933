"""The service layer's commands: execute a package on servers or groups (one by one, in bulk, or as a
rate-controlled rollout), cancel. Entry points (Python API, REST, CLI) call these and only translate their
answers; the queries are inherited from history.py."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator.domain import naming, packages, rate_control
from orchestrator.engine import event_log, handoff
from orchestrator.persistence import models
from orchestrator.services import bulk, rollouts
from orchestrator.services.admission import Admission
from orchestrator.services.errors import Conflict, ServiceError
from orchestrator.services.history import PatchQueries
from schemas import selection
from schemas.patching import ExecutionDetail, PackageRequest, QueuedServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutLaunch:
    """A rollout just created (not committed yet): the CLC answers, and what to hand over after commit."""

    answers: list[QueuedServer]
    rollout_id: int
    released: tuple[str, ...]
    outbox_ids: tuple[int, ...]


def is_group_id(raw: str) -> bool:
    """Whether `raw` reads as a group id (va1-0001) rather than a server name."""
    try:
        naming.check_group_id(raw)
    except naming.NamingError:
        return False
    return True


class PatchService(Admission, PatchQueries):
    """Requests and queries on executions."""

    # --- requests -----------------------------------------------------------------------------

    def execute_package(
        self, alias: str, servers: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rate_control.RateControl | None = None,
    ) -> list[QueuedServer]:
        """Queue one execution per server; each server is answered on its own (CLC semantics). With `rate`
        (max concurrency, error threshold, waves) they are queued as one rollout (orchestrator/services/rollouts.py)."""
        alias = naming.check_alias(alias)
        try:
            pkg = packages.get(package.package_id)
        except packages.UnknownPackage as exc:
            raise ServiceError(str(exc)) from None
        try:
            selection.parse_for(pkg.family, package.parameters, pkg.describe())
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
                results = [self.queue_one(session, alias, raw, pkg, package, requested_by, now) for raw in servers]
            for answer, outbox_id in results:
                answers.append(answer)
                if answer.is_queued and answer.execution_id:
                    queued.append((answer.execution_id, outbox_id))
            event_log.record_requests(session, alias, [(a.execution_id or "", a.server) for a in answers
                                                        if a.is_queued and a.execution_id], requested_by, pkg.id, now)
        handoff.hand_off(self.dispatcher, [execution_id for execution_id, _ in queued])  # batches when it can
        handoff.hand_off_emails(self.dispatcher, [outbox_id for _, outbox_id in queued if outbox_id is not None])
        return answers

    def execute_package_on_groups(
        self, alias: str, group_ids: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rate_control.RateControl | None = None,
    ) -> list[QueuedServer]:
        """The group action: every server of the groups and their subgroups, each answered on its own;
        rate-controlled when `rate` is given."""
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            names = self.servers_in_groups(session, alias, group_ids)
        if not names:
            raise ServiceError("the groups hold no servers")
        return self.execute_package(alias, names, package, requested_by, rate)

    # --- rollouts (orchestrator/services/rollouts.py) ---------------------------------------------------

    def _execute_rollout(
        self, alias: str, servers: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rate_control.RateControl,
    ) -> list[QueuedServer]:
        now = self.clock()
        with self.sessions.begin() as session:
            launch = self.start_rollout(session, alias, servers, package, requested_by, rate, now)
        rollouts.hand_off(self.dispatcher, launch.released, launch.outbox_ids)
        return launch.answers

    def start_rollout(
        self, session: Session, alias: str, servers: Sequence[str], package: PackageRequest, requested_by: str,
        rate: rate_control.RateControl, now: datetime, not_after: datetime | None = None,
    ) -> RolloutLaunch:
        """In the caller's transaction: accept the servers exactly as a plain request does (same checks, same
        CLC answers), hold the queued executions (not due, no start email yet) as one rollout, and let the
        gate release the first ones. The caller hands `released` and `outbox_ids` over after commit."""
        try:
            pkg = packages.get(package.package_id)
            selection.parse_for(pkg.family, package.parameters, pkg.describe())
        except (packages.UnknownPackage, ValueError) as exc:
            raise ServiceError(str(exc)) from None
        waves = [self._wave_members(session, alias, index, wave) for index, wave in enumerate(rate.waves, 1)]
        if len(servers) >= self.bulk_from:
            results = bulk.queue_many(self, session, alias, servers, pkg, package, requested_by, now)
        else:
            results = [self.queue_one(session, alias, raw, pkg, package, requested_by, now) for raw in servers]
        answers = [answer for answer, _ in results]
        queued = [a for a in answers if a.is_queued and a.execution_id]
        wave_of = rate_control.assign_waves([a.server for a in queued], waves)
        ordered = sorted(enumerate(queued), key=lambda item: (wave_of[item[1].server], item[0]))
        row = models.Rollout(
            account_alias=alias, requested_by=requested_by[:200],
            max_concurrency=str(rate.max_concurrency) if rate.max_concurrency else None,
            max_errors=str(rate.max_errors) if rate.max_errors is not None else None,
            concurrency_limit=rate_control.concurrency_limit(rate.max_concurrency, len(queued)),
            error_limit=rate_control.error_limit(rate.max_errors, len(queued)),
            waves=len(set(wave_of.values())) or 1, total=len(queued), state=rollouts.RolloutState.RUNNING.value,
            not_after=not_after, created_at=now, updated_at=now,
        )
        session.add(row)
        session.flush()
        event_log.record_requests(session, alias, [(a.execution_id or "", a.server) for a in queued], requested_by,
                                  pkg.id, now, rollout_id=row.id)
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
            if is_group_id(raw):
                members.update(self.servers_in_groups(session, alias, [raw]))
                continue
            try:
                members.add(naming.check_server_name(raw))
            except naming.NamingError:
                raise ServiceError(f"wave {index}: {raw!r} is neither a group id (va1-0001) nor a server name "
                                   "(VA1OSDPATCH01)") from None
        return members

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
                event_log.record(session, row.account_alias, "run.cancel_requested", self.clock(),
                                 execution_id=row.id, actor=row.cancelled_by,
                                 payload={"server": row.server_name, "reason": row.cancel_reason})
        self.dispatcher.advance(row.id, 0.0)
        return self.detail(alias, server, execution_id)
