"""Scheduled patch windows: when a window opens, its targets are patched as one rate-controlled rollout.

A window is stored in the database (`patch_windows`): targets (servers and groups, nested groups
included), a schedule — a cron expression (croniter) or a monthly rule such as "second Tuesday + 3 days at
22:00", which Azure Update Manager cannot express — read in an IANA time zone, a duration and a cutoff,
rate-control options (orchestrator/services/rollouts.py) and the package to run.

The beat task `patchaas.windows` calls `WindowService.start_due()` every tick. An occurrence is *open*
from its start until its end minus the cutoff (`not_after`); an open occurrence is started exactly once:
the key (window id, occurrence start) is inserted with ON CONFLICT DO NOTHING in the same transaction that
creates its rollout, so a second task, a repeated task, or a restarted beat finds the key and does nothing.
Every execution of the occurrence carries `not_after`: the state machine starts no new update cycle after
it (the run cleans up and ends cancelled, saying so), and the gate releases no held execution after it
(they end skipped). The next occurrence patches whatever is left.

Decisions:
- An occurrence that began before the window was created is not started (creating a window never
  patches at once); one missed entirely (beat down until after its not_after) is not started late.
- When occurrences overlap (a duration longer than the schedule's period), only the latest open one starts.
- Local times that do not exist (the spring-forward gap) run at the same wall-clock offset before the
  change (02:30 in a 02:00→03:00 gap runs at 03:30 summer time); a repeated local time (fall back) runs once,
  at its first instance.
- Deleting a window stops its future occurrences; a running occurrence goes on until its cutoff.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.domain import naming, rate_control, schedules
from orchestrator.engine import event_log
from orchestrator.persistence import models
from orchestrator.services import rollouts, window_specs
from orchestrator.settings import DEFAULT_PACKAGE_ID

if TYPE_CHECKING:
    from orchestrator.services.patching import PatchService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OccurrenceInfo:
    starts_at: datetime
    ends_at: datetime
    not_after: datetime
    rollout_id: int | None
    note: str | None
    rollout_state: str | None = None


@dataclass(frozen=True)
class WindowInfo:
    """A window as the API, REST and CLI show it."""

    id: int
    name: str
    account_alias: str
    servers: tuple[str, ...]
    groups: tuple[str, ...]
    schedule_kind: str
    schedule: str
    timezone: str
    duration: str
    cutoff: str
    max_concurrency: str | None
    max_errors: str | None
    waves: tuple[tuple[str, ...], ...]
    package_id: str
    parameters: dict[str, Any]
    enabled: bool
    created_by: str
    created_at: datetime
    next_occurrences: tuple[datetime, ...]
    recent_occurrences: tuple[OccurrenceInfo, ...] = ()


@dataclass(frozen=True)
class Started:
    """An occurrence this pass started."""

    window_id: int
    starts_at: datetime
    rollout_id: int | None
    queued: int
    note: str | None


class WindowService:
    """Create, list, read and delete windows; start their due occurrences (the beat task)."""

    def __init__(self, service: PatchService, default_package: str = DEFAULT_PACKAGE_ID) -> None:
        self.service = service
        self.sessions = service.sessions
        self.clock: Callable[[], datetime] = service.clock
        self.default_package = default_package

    # --- management -------------------------------------------------------------------------

    def create(self, alias: str, spec: window_specs.WindowSpec, created_by: str) -> WindowInfo:
        from orchestrator.services.errors import Conflict

        alias = naming.check_alias(alias)
        valid = self._valid(spec)
        now = self.clock()
        with self.sessions.begin() as session:
            self._check_targets(session, alias, valid)
            row = models.PatchWindow(account_alias=alias, enabled=True, created_by=created_by[:200], created_at=now)
            window_specs.apply_spec(row, valid, now)
            try:
                with session.begin_nested():
                    session.add(row)
                    session.flush()
            except IntegrityError:
                raise Conflict(f"account {alias} already has a window named {valid.name!r}") from None
            event_log.record(session, alias, "window.created", now, actor=created_by, payload=_about(row))
            return self._info(session, row, now)

    def update(self, alias: str, window_id: int, changes: Mapping[str, Any], by: str | None = None) -> WindowInfo:
        """Change a window: any WindowSpec field (a new `cron` replaces a `monthly` rule and vice versa) and
        `enabled` (False pauses it: no occurrence starts, a running one goes on until its cutoff). A change
        applies from the next occurrence that starts after it: an occurrence already open is neither
        restarted nor changed (its rollout keeps the rate control it started with), and a resumed window
        does not start late an occurrence that opened while it was paused."""
        from orchestrator.services.errors import Conflict, ServiceError

        unknown = set(changes) - set(window_specs.UPDATABLE)
        if unknown:
            raise ServiceError(f"cannot change {', '.join(sorted(unknown))} of a window; "
                               f"changeable: {', '.join(window_specs.UPDATABLE)}")
        now = self.clock()
        with self.sessions.begin() as session:
            row = self._window(session, alias, window_id, for_update=True)
            definition = {k: v for k, v in changes.items() if k != "enabled"}
            if definition:
                if "cron" in definition and "monthly" not in definition:
                    definition["monthly"] = None
                elif "monthly" in definition and "cron" not in definition:
                    definition["cron"] = None
                valid = self._valid(dataclasses.replace(window_specs.spec_of(row), **definition))
                self._check_targets(session, row.account_alias, valid)
                taken = session.scalar(sa.select(models.PatchWindow.id).where(
                    models.PatchWindow.account_alias == row.account_alias, models.PatchWindow.name == valid.name,
                    models.PatchWindow.id != row.id))
                if taken is not None:
                    raise Conflict(f"account {row.account_alias} already has a window named {valid.name!r}")
                window_specs.apply_spec(row, valid, now)
            if definition:
                event_log.record(session, row.account_alias, "window.updated", now, actor=by,
                                 payload={**_about(row), "changed": sorted(definition)})
            if "enabled" in changes and row.enabled != bool(changes["enabled"]):
                row.enabled, row.updated_at = bool(changes["enabled"]), now
                event_log.record(session, row.account_alias, "window.resumed" if row.enabled else "window.paused",
                                 now, actor=by, payload=_about(row))
            try:
                session.flush()
            except IntegrityError:  # renamed concurrently to the same name: this transaction rolls back
                raise Conflict(f"account {row.account_alias} already has a window named {row.name!r}") from None
            return self._info(session, row, now, recent=10)

    def _valid(self, spec: window_specs.WindowSpec) -> window_specs.ValidWindow:
        from orchestrator.services.errors import ServiceError

        try:
            return window_specs.validate(spec, self.default_package)
        except ValueError as exc:
            raise ServiceError(str(exc)) from None

    @staticmethod
    def _check_targets(session: Session, alias: str, valid: window_specs.ValidWindow) -> None:
        from orchestrator.services.errors import NotFound

        for name in valid.servers:
            server = session.get(models.Server, name)
            if server is None or server.account_alias != alias:
                raise NotFound(f"server {name} not found")
        for gid in valid.groups:
            group = session.get(models.Group, gid)
            if group is None or group.account_alias != alias:
                raise NotFound(f"group {gid} not found")

    def list_windows(self, alias: str) -> list[WindowInfo]:
        alias = naming.check_alias(alias)
        now = self.clock()
        with self.sessions() as session:
            rows = session.scalars(
                sa.select(models.PatchWindow).where(models.PatchWindow.account_alias == alias)
                .order_by(models.PatchWindow.id)
            ).all()
            return [self._info(session, row, now, recent=0) for row in rows]

    def get(self, alias: str, window_id: int) -> WindowInfo:
        with self.sessions() as session:
            return self._info(session, self._window(session, alias, window_id), self.clock(), recent=10)

    def delete(self, alias: str, window_id: int, by: str | None = None) -> WindowInfo:
        """Remove the window: no further occurrence starts; a running one goes on until its cutoff."""
        with self.sessions.begin() as session:
            row = self._window(session, alias, window_id)
            info = self._info(session, row, self.clock(), recent=0)
            event_log.record(session, row.account_alias, "window.deleted", self.clock(), actor=by, payload=_about(row))
            session.delete(row)
        return info

    def find(self, alias: str, ident: str) -> int:
        """A window id from an id or a name."""
        from orchestrator.services.errors import NotFound

        if ident.strip().isdigit():
            return int(ident)
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            found = session.scalar(sa.select(models.PatchWindow.id).where(
                models.PatchWindow.account_alias == alias, models.PatchWindow.name == ident.strip()))
        if found is None:
            raise NotFound(f"window {ident} not found")
        return int(found)

    def _window(self, session: Session, alias: str, window_id: int, for_update: bool = False) -> models.PatchWindow:
        from orchestrator.services.errors import NotFound

        alias = naming.check_alias(alias)
        row = session.get(models.PatchWindow, window_id, with_for_update=for_update)
        if row is None or row.account_alias != alias:
            raise NotFound(f"window {window_id} not found")
        return row

    def _info(self, session: Session, row: models.PatchWindow, now: datetime, recent: int = 0) -> WindowInfo:
        schedule = schedules.schedule_of(row.schedule_kind, row.schedule)
        tz = schedules.zone(row.timezone)
        # a paused window starts nothing; otherwise occurrences from the last change on (see start_due)
        upcoming = schedules.next_occurrences(schedule, tz, max(now, row.updated_at - timedelta(seconds=1))) \
            if row.enabled else []
        occurrences_: list[OccurrenceInfo] = []
        if recent:
            rows = session.execute(
                sa.select(models.WindowOccurrence, models.Rollout.state)
                .outerjoin(models.Rollout, models.Rollout.id == models.WindowOccurrence.rollout_id)
                .where(models.WindowOccurrence.window_id == row.id)
                .order_by(models.WindowOccurrence.starts_at.desc()).limit(recent)
            ).all()
            occurrences_ = [OccurrenceInfo(o.starts_at, o.ends_at, o.not_after, o.rollout_id, o.note, state)
                            for o, state in rows]
        return WindowInfo(
            id=row.id, name=row.name, account_alias=row.account_alias, servers=tuple(row.servers or ()),
            groups=tuple(row.groups or ()), schedule_kind=row.schedule_kind, schedule=row.schedule,
            timezone=row.timezone, duration=schedules.format_duration(timedelta(seconds=row.duration_seconds)),
            cutoff=schedules.format_duration(timedelta(seconds=row.cutoff_seconds)),
            max_concurrency=row.max_concurrency,
            max_errors=row.max_errors, waves=tuple(tuple(w) for w in row.waves or ()), package_id=row.package_id,
            parameters=dict(row.parameters or {}), enabled=row.enabled, created_by=row.created_by,
            created_at=row.created_at, next_occurrences=tuple(upcoming), recent_occurrences=tuple(occurrences_),
        )

    # --- the beat task ----------------------------------------------------------------------

    def start_due(self) -> list[Started]:
        """Start every open occurrence not started yet (each window in its own transaction)."""
        now = self.clock()
        with self.sessions() as session:
            windows = session.execute(
                sa.select(models.PatchWindow.id, models.PatchWindow.schedule_kind, models.PatchWindow.schedule,
                          models.PatchWindow.timezone, models.PatchWindow.duration_seconds,
                          models.PatchWindow.cutoff_seconds, models.PatchWindow.updated_at)
                .where(models.PatchWindow.enabled.is_(True)).order_by(models.PatchWindow.id)
            ).all()
        started: list[Started] = []
        for w in windows:
            try:
                start = schedules.open_occurrence(
                    schedules.schedule_of(w.schedule_kind, w.schedule), schedules.zone(w.timezone),
                    timedelta(seconds=w.duration_seconds), timedelta(seconds=w.cutoff_seconds),
                    now, not_before=w.updated_at)
            except ValueError as exc:  # a definition that no longer parses (e.g. a time zone removed)
                log.error("window %s cannot be scheduled: %s", w.id, exc)
                continue
            if start is None:
                continue
            done = self._start(w.id, start, now)
            if done is not None:
                started.append(done)
        return started

    def _start(self, window_id: int, start: datetime, now: datetime) -> Started | None:
        """Insert the occurrence's key; if it was new, create its rollout in the same transaction."""
        with self.sessions.begin() as session:
            window = session.get(models.PatchWindow, window_id)
            if window is None:
                return None
            ends_at = start + timedelta(seconds=window.duration_seconds)
            not_after = ends_at - timedelta(seconds=window.cutoff_seconds)
            occurrence_id = _insert_once(session, window_id, start, ends_at, not_after, now)
            if occurrence_id is None:
                return None  # started before: by an earlier pass, another beat, or before a restart
            names, notes = self._targets(session, window)
            rate = rate_control.RateControl.parse(window.max_concurrency, window.max_errors, window.waves)
            launch = None
            if names:
                from orchestrator.services.errors import ServiceError
                from schemas.patching import PackageRequest

                request = PackageRequest(packageId=window.package_id, parameters=dict(window.parameters or {}))
                try:
                    with session.begin_nested():  # a refusal leaves nothing half-written; the key stays
                        launch = self.service.start_rollout(
                            session, window.account_alias, names, request, f"window {window.name}", rate, now,
                            not_after=not_after)
                except ServiceError as exc:
                    notes.append(exc.message)
            if launch is not None:
                refused = [a for a in launch.answers if not a.is_queued]
                if refused:
                    notes.append(f"{len(refused)} of {len(names)} servers not queued: "
                                 + "; ".join(f"{a.server}: {a.error_message}" for a in refused[:5]))
            elif not names:
                notes.append("the window's targets hold no servers")
            occurrence = session.get(models.WindowOccurrence, occurrence_id)
            assert occurrence is not None
            occurrence.rollout_id = launch.rollout_id if launch else None
            occurrence.note = "; ".join(notes)[:4000] or None
            queued = sum(a.is_queued for a in launch.answers) if launch else 0
            event_log.record(session, window.account_alias, "window.opened", now, payload={
                **_about(window), "startsAt": start.isoformat(), "endsAt": ends_at.isoformat(),
                "notAfter": not_after.isoformat(), "rolloutId": occurrence.rollout_id, "queued": queued,
                "note": occurrence.note})
            log.info("window %s: occurrence %s started, %d servers queued (rollout %s)", window_id,
                     start.isoformat(), queued, occurrence.rollout_id)
        if launch is not None:
            rollouts.hand_off(self.service.dispatcher, launch.released, launch.outbox_ids)
        return Started(window_id, start, launch.rollout_id if launch else None, queued, occurrence.note)

    def close_due(self) -> int:
        """Record `window.closed` once per occurrence whose end minus cutoff has passed (UPDATE … RETURNING
        on `closed_at`: a repeated or concurrent pass records nothing twice); how many closed."""
        now = self.clock()
        table = models.WindowOccurrence.__table__
        with self.sessions.begin() as session:
            closed = session.execute(sa.update(table).where(table.c.closed_at.is_(None), table.c.not_after <= now)
                                     .values(closed_at=now).returning(table.c.window_id, table.c.starts_at,
                                                                      table.c.not_after, table.c.rollout_id)).all()
            for c in closed:
                window = session.get(models.PatchWindow, c.window_id)
                rollout = session.get(models.Rollout, c.rollout_id) if c.rollout_id else None
                if window is not None:
                    event_log.record(session, window.account_alias, "window.closed", now, payload={
                        **_about(window), "startsAt": c.starts_at.isoformat(), "notAfter": c.not_after.isoformat(),
                        "rolloutId": c.rollout_id, "counts": rollouts.info(session, rollout).counts if rollout else {}})
        return len(closed)

    def _targets(self, session: Session, window: models.PatchWindow) -> tuple[list[str], list[str]]:
        """The window's servers, then those of its groups (nested included), once each; groups that
        have since disappeared are noted, not fatal."""
        from orchestrator.services.errors import ServiceError

        names: list[str] = list(window.servers or ())
        notes: list[str] = []
        for gid in window.groups or ():
            try:
                names += self.service.servers_in_groups(session, window.account_alias, [gid])
            except ServiceError as exc:
                notes.append(exc.message)
        return list(dict.fromkeys(names)), notes


def _about(window: models.PatchWindow) -> dict[str, Any]:
    return {"windowId": window.id, "name": window.name}


def _insert_once(session: Session, window_id: int, start: datetime, ends_at: datetime, not_after: datetime,
                 now: datetime) -> int | None:
    """INSERT … ON CONFLICT (window_id, starts_at) DO NOTHING: the new row's id, or None if it existed."""
    values = {"window_id": window_id, "starts_at": start, "ends_at": ends_at, "not_after": not_after,
              "created_at": now}
    table = models.WindowOccurrence.__table__
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).values(**values).on_conflict_do_nothing(
            index_elements=["window_id", "starts_at"]).returning(table.c.id)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).values(**values).on_conflict_do_nothing(
            index_elements=["window_id", "starts_at"]).returning(table.c.id)
    else:  # pragma: no cover - the two databases we run on are above
        try:
            with session.begin_nested():
                return int(session.execute(sa.insert(table).values(**values).returning(table.c.id)).scalar_one())
        except IntegrityError:
            return None
    found = session.execute(stmt).scalar()
    return int(found) if found is not None else None
