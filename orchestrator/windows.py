"""Scheduled patch windows: when a window opens, its targets are patched as one rate-controlled rollout.

A window is stored in the database (`patch_windows`): targets (servers and groups, nested groups
included), a schedule — a cron expression (croniter) or a monthly rule such as "second Tuesday + 3 days at
22:00", which Azure Update Manager cannot express — read in an IANA time zone, a duration and a cutoff,
rate-control options (orchestrator/rollouts.py) and the package to run.

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

import calendar
import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from croniter import croniter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator import models, naming, packages, rollouts
from orchestrator.settings import DEFAULT_PACKAGE_ID
from schemas import selection

if TYPE_CHECKING:
    from orchestrator.service import PatchService

log = logging.getLogger(__name__)

MAX_DURATION = timedelta(days=7)
MAX_OCCURRENCES = 2000  # per computation: a "* * * * *" window over a week is 10 080, far more than needed
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")

# --- schedules (pure) ------------------------------------------------------------------------------

ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
            "fifth": 5, "5th": 5, "last": -1}
ORDINAL_NAMES = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", -1: "last"}
WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)} | {
    name.lower(): i for i, name in enumerate(calendar.day_abbr)}
_MONTHLY = re.compile(
    r"^\s*(?P<nth>\w+)\s+(?P<day>[A-Za-z]+)"
    r"(?:\s*(?P<sign>[+-])\s*(?P<offset>\d{1,2})\s*days?)?"
    r"(?:\s+(?:at\s+)?(?P<hour>\d{1,2}):(?P<minute>\d{2}))?\s*$",
    re.IGNORECASE,
)
_DURATION = re.compile(r"^\s*(?:(?P<d>\d+)\s*d)?\s*(?:(?P<h>\d+)\s*h)?\s*(?:(?P<m>\d+)\s*m(?:in)?)?\s*$", re.I)


class ScheduleError(ValueError):
    """A schedule, time zone, duration or window option that cannot be used; the message says why."""


@dataclass(frozen=True)
class MonthlyRule:
    """The `nth` weekday of every month (1..5, or -1 for the last), plus `offset_days`, at `at` local time:
    "second Tuesday + 3 days at 22:00" is Patch Tuesday's Friday evening."""

    nth: int
    weekday: int  # Monday = 0
    offset_days: int = 0
    at: time = time(0, 0)

    def __str__(self) -> str:
        offset = ""
        if self.offset_days:
            unit = "day" if abs(self.offset_days) == 1 else "days"
            offset = f" {'+' if self.offset_days > 0 else '-'} {abs(self.offset_days)} {unit}"
        return f"{ORDINAL_NAMES[self.nth]} {calendar.day_name[self.weekday]}{offset} at {self.at:%H:%M}"

    def day_in(self, year: int, month: int) -> date | None:
        """The rule's date for (year, month) — the offset may carry it into the next or previous month —
        or None when the month has no such weekday (a fifth Monday)."""
        weeks = calendar.Calendar().monthdatescalendar(year, month)
        days = [d for week in weeks for d in week if d.month == month and d.weekday() == self.weekday]
        if self.nth == -1:
            base = days[-1]
        elif self.nth <= len(days):
            base = days[self.nth - 1]
        else:
            return None
        return base + timedelta(days=self.offset_days)


@dataclass(frozen=True)
class CronRule:
    """A five-field cron expression (minute hour day-of-month month day-of-week), in the window's zone."""

    expr: str

    def __str__(self) -> str:
        return self.expr


Schedule = MonthlyRule | CronRule


def parse_monthly(text: str) -> MonthlyRule:
    """ "second Tuesday + 3 days at 22:00", "last fri - 2 days 06:30", "first Monday" (at 00:00)."""
    match = _MONTHLY.match(text or "")
    if match is None:
        raise ScheduleError(
            f"bad monthly rule {text!r}: write it like \"second Tuesday + 3 days at 22:00\" "
            "(first…fifth or last, a weekday, an optional ± N days, an optional time)")
    nth = ORDINALS.get(match.group("nth").lower())
    if nth is None:
        raise ScheduleError(f"bad monthly rule {text!r}: {match.group('nth')!r} is not one of "
                            f"{', '.join(ORDINAL_NAMES.values())}")
    weekday = WEEKDAYS.get(match.group("day").lower())
    if weekday is None:
        raise ScheduleError(f"bad monthly rule {text!r}: {match.group('day')!r} is not a weekday")
    offset = int(match.group("offset") or 0) * (-1 if match.group("sign") == "-" else 1)
    if abs(offset) > 27:
        raise ScheduleError(f"bad monthly rule {text!r}: the offset must be within 27 days")
    hour, minute = int(match.group("hour") or 0), int(match.group("minute") or 0)
    if hour > 23 or minute > 59:
        raise ScheduleError(f"bad monthly rule {text!r}: {hour:02d}:{minute:02d} is not a time of day")
    return MonthlyRule(nth, weekday, offset, time(hour, minute))


def parse_cron(text: str) -> CronRule:
    expr = " ".join((text or "").split())
    if len(expr.split()) != 5:
        raise ScheduleError(f"bad cron expression {text!r}: it needs 5 fields (minute hour day month weekday), "
                            f"like \"0 22 * * 2\"")
    try:
        croniter(expr, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
    except Exception as exc:  # croniter raises several error types for bad fields
        raise ScheduleError(f"bad cron expression {text!r}: {exc}") from None
    return CronRule(expr)


def parse_schedule(cron: str | None, monthly: str | None) -> Schedule:
    """Exactly one of a cron expression and a monthly rule."""
    if bool(cron and cron.strip()) == bool(monthly and monthly.strip()):
        raise ScheduleError("give exactly one schedule: a cron expression or a monthly rule "
                            "(\"second Tuesday + 3 days at 22:00\")")
    return parse_cron(cron) if cron and cron.strip() else parse_monthly(monthly or "")


def schedule_of(kind: str, text: str) -> Schedule:
    return parse_cron(text) if kind == "cron" else parse_monthly(text)


def kind_of(schedule: Schedule) -> str:
    return "cron" if isinstance(schedule, CronRule) else "monthly"


def zone(name: str) -> ZoneInfo:
    """An IANA time zone."""
    try:
        if not name or name != name.strip() or ".." in name or name.startswith("/"):
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC") from None


def parse_duration(raw: str | int | timedelta, what: str = "duration") -> timedelta:
    """ "4h", "90m", "1h30m", "2d", or minutes as a number."""
    if isinstance(raw, timedelta):
        return raw
    text = str(raw).strip()
    match = _DURATION.match(text)
    spelled = match is not None and any(match.groupdict().values())
    if isinstance(raw, bool) or not (text.isdigit() or spelled):
        raise ScheduleError(f"bad {what} {raw!r}: write it like 4h, 90m or 1h30m")
    try:
        if text.isdigit():
            return timedelta(minutes=int(text))
        assert match is not None
        return timedelta(days=int(match.group("d") or 0), hours=int(match.group("h") or 0),
                         minutes=int(match.group("m") or 0))
    except OverflowError:
        raise ScheduleError(f"bad {what} {raw!r}: far too long") from None


def format_duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


def _local(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time (fold 0: a gap time keeps the offset before the change,
    a repeated time is its first instance)."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def occurrences(schedule: Schedule, tz: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """Occurrence starts (UTC) with after < start <= until, ascending (at most MAX_OCCURRENCES)."""
    if until <= after:
        return []
    found: list[datetime] = []
    if isinstance(schedule, MonthlyRule):
        first, last = after.astimezone(tz), until.astimezone(tz)
        # the offset carries a month's date into the month before or after: look one month further each way
        for index in range(first.year * 12 + first.month - 2, last.year * 12 + last.month + 1):
            year, month = divmod(index, 12)
            day = schedule.day_in(year, month + 1)
            if day is not None:
                start = _local(day, schedule.at, tz)
                if after < start <= until:
                    found.append(start)
        return sorted(set(found))[:MAX_OCCURRENCES]
    it = croniter(schedule.expr, after.astimezone(tz))
    previous_wall: datetime | None = None
    while len(found) < MAX_OCCURRENCES:
        local = it.get_next(datetime)
        start = local.astimezone(UTC)
        if start > until:
            break
        wall = local.replace(tzinfo=None)
        if wall == previous_wall:  # the repeated hour at the fall-back change: once only
            continue
        previous_wall = wall
        if start > after:
            found.append(start)
    return found


def next_occurrences(schedule: Schedule, tz: ZoneInfo, now: datetime, count: int = 3) -> list[datetime]:
    """The next `count` starts after `now` (looking up to two years ahead)."""
    horizon = now + timedelta(days=62)
    found: list[datetime] = []
    start = now
    while len(found) < count and start < now + timedelta(days=731):
        found += occurrences(schedule, tz, start, horizon)
        start, horizon = horizon, horizon + timedelta(days=62)
    return found[:count]


def open_occurrence(schedule: Schedule, tz: ZoneInfo, duration: timedelta, cutoff: timedelta, now: datetime,
                    not_before: datetime | None = None) -> datetime | None:
    """The latest occurrence start such that start <= now < start + duration - cutoff (and start >=
    `not_before`), or None."""
    span = duration - cutoff
    # search back a little first (an every-minute cron over a week is more than MAX_OCCURRENCES), and always
    # from two hours earlier, so a repeated fall-back hour is recognised as the repeat it is
    for reach in (timedelta(hours=1), timedelta(days=1), span):
        reach = min(reach, span)
        starts = occurrences(schedule, tz, now - reach - timedelta(hours=2), now)
        starts = [s for s in starts if now - span < s and (not_before is None or s >= not_before)]
        if starts:
            return starts[-1]
        if reach >= span:
            break
    return None


# --- window definitions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpec:
    """What a caller asks for; `validate` checks everything that needs no database."""

    name: str
    servers: Sequence[str] = ()
    groups: Sequence[str] = ()
    cron: str | None = None
    monthly: str | None = None
    timezone: str = "UTC"
    duration: str | int | timedelta = "4h"
    cutoff: str | int | timedelta = "30m"
    max_concurrency: str | int | None = None
    max_errors: str | int | None = None
    waves: Sequence[Sequence[str]] = ()
    package_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidWindow:
    name: str
    servers: tuple[str, ...]
    groups: tuple[str, ...]
    schedule: Schedule
    tz: ZoneInfo
    duration: timedelta
    cutoff: timedelta
    rate: rollouts.RateControl
    package_id: str
    parameters: dict[str, Any]


def validate(spec: WindowSpec, default_package: str) -> ValidWindow:
    """ScheduleError (a ValueError) with a message for people when anything is wrong."""
    name = (spec.name or "").strip()
    if not NAME.match(name):
        raise ScheduleError(f"bad window name {spec.name!r}: 1 to 100 letters, digits, spaces, '.', '_' or '-', "
                            "starting with a letter or digit")
    servers, groups = [], []
    for raw in spec.servers or ():
        try:
            servers.append(naming.check_server_name(raw))
        except naming.NamingError as exc:
            raise ScheduleError(str(exc)) from None
    for raw in spec.groups or ():
        try:
            groups.append(naming.check_group_id(raw))
        except naming.NamingError as exc:
            raise ScheduleError(str(exc)) from None
    if not servers and not groups:
        raise ScheduleError("a window needs targets: servers, groups, or both")
    schedule = parse_schedule(spec.cron, spec.monthly)
    tz = zone(spec.timezone)
    duration = parse_duration(spec.duration, "duration")
    cutoff = parse_duration(spec.cutoff, "cutoff")
    if not timedelta(minutes=1) <= duration <= MAX_DURATION:
        raise ScheduleError(f"the duration ({format_duration(duration)}) must be between 1m and "
                            f"{format_duration(MAX_DURATION)}")
    if cutoff >= duration:
        raise ScheduleError(f"the cutoff ({format_duration(cutoff)}) must be shorter than the duration "
                            f"({format_duration(duration)}): no update cycle could ever start")
    try:
        rate = rollouts.RateControl.parse(spec.max_concurrency, spec.max_errors, spec.waves)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None
    for index, wave in enumerate(rate.waves, start=1):
        for entry in wave:
            if not (_valid(naming.check_group_id, entry) or _valid(naming.check_server_name, entry)):
                raise ScheduleError(f"wave {index}: {entry!r} is neither a group id (va1-0001) nor a server name "
                                    "(VA1OSDPATCH01)")
    package_id = spec.package_id or default_package
    try:
        package_id = packages.get(package_id).id
        selection.parse(dict(spec.parameters or {}))
    except (packages.UnknownPackage, ValueError) as exc:
        raise ScheduleError(str(exc)) from None
    return ValidWindow(name, tuple(dict.fromkeys(servers)), tuple(dict.fromkeys(groups)), schedule, tz, duration,
                       cutoff, rate, package_id, dict(spec.parameters or {}))


def _valid(check: Callable[[str], str], value: str) -> bool:
    try:
        check(value)
    except naming.NamingError:
        return False
    return True


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

    def create(self, alias: str, spec: WindowSpec, created_by: str) -> WindowInfo:
        from orchestrator.service import Conflict

        alias = naming.check_alias(alias)
        valid = self._valid(spec)
        now = self.clock()
        with self.sessions.begin() as session:
            self._check_targets(session, alias, valid)
            row = models.PatchWindow(account_alias=alias, enabled=True, created_by=created_by[:200], created_at=now)
            _apply(row, valid, now)
            try:
                with session.begin_nested():
                    session.add(row)
                    session.flush()
            except IntegrityError:
                raise Conflict(f"account {alias} already has a window named {valid.name!r}") from None
            return self._info(session, row, now)

    def update(self, alias: str, window_id: int, changes: Mapping[str, Any]) -> WindowInfo:
        """Change a window: any WindowSpec field (a new `cron` replaces a `monthly` rule and vice versa) and
        `enabled` (False pauses it: no occurrence starts, a running one goes on until its cutoff). A change
        applies from the next occurrence that starts after it: an occurrence already open is neither
        restarted nor changed (its rollout keeps the rate control it started with), and a resumed window
        does not start late an occurrence that opened while it was paused."""
        from orchestrator.service import Conflict, ServiceError

        unknown = set(changes) - set(UPDATABLE)
        if unknown:
            raise ServiceError(f"cannot change {', '.join(sorted(unknown))} of a window; "
                               f"changeable: {', '.join(UPDATABLE)}")
        now = self.clock()
        with self.sessions.begin() as session:
            row = self._window(session, alias, window_id, for_update=True)
            definition = {k: v for k, v in changes.items() if k != "enabled"}
            if definition:
                if "cron" in definition and "monthly" not in definition:
                    definition["monthly"] = None
                elif "monthly" in definition and "cron" not in definition:
                    definition["cron"] = None
                valid = self._valid(dataclasses.replace(_spec_of(row), **definition))
                self._check_targets(session, row.account_alias, valid)
                taken = session.scalar(sa.select(models.PatchWindow.id).where(
                    models.PatchWindow.account_alias == row.account_alias, models.PatchWindow.name == valid.name,
                    models.PatchWindow.id != row.id))
                if taken is not None:
                    raise Conflict(f"account {row.account_alias} already has a window named {valid.name!r}")
                _apply(row, valid, now)
            if "enabled" in changes and row.enabled != bool(changes["enabled"]):
                row.enabled, row.updated_at = bool(changes["enabled"]), now
            try:
                session.flush()
            except IntegrityError:  # renamed concurrently to the same name: this transaction rolls back
                raise Conflict(f"account {row.account_alias} already has a window named {row.name!r}") from None
            return self._info(session, row, now, recent=10)

    def _valid(self, spec: WindowSpec) -> ValidWindow:
        from orchestrator.service import ServiceError

        try:
            return validate(spec, self.default_package)
        except ValueError as exc:
            raise ServiceError(str(exc)) from None

    @staticmethod
    def _check_targets(session: Session, alias: str, valid: ValidWindow) -> None:
        from orchestrator.service import NotFound

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

    def delete(self, alias: str, window_id: int) -> WindowInfo:
        """Remove the window: no further occurrence starts; a running one goes on until its cutoff."""
        with self.sessions.begin() as session:
            row = self._window(session, alias, window_id)
            info = self._info(session, row, self.clock(), recent=0)
            session.delete(row)
        return info

    def find(self, alias: str, ident: str) -> int:
        """A window id from an id or a name."""
        from orchestrator.service import NotFound

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
        from orchestrator.service import NotFound

        alias = naming.check_alias(alias)
        row = session.get(models.PatchWindow, window_id, with_for_update=for_update)
        if row is None or row.account_alias != alias:
            raise NotFound(f"window {window_id} not found")
        return row

    def _info(self, session: Session, row: models.PatchWindow, now: datetime, recent: int = 0) -> WindowInfo:
        schedule = schedule_of(row.schedule_kind, row.schedule)
        tz = zone(row.timezone)
        # a paused window starts nothing; otherwise occurrences from the last change on (see start_due)
        upcoming = next_occurrences(schedule, tz, max(now, row.updated_at - timedelta(seconds=1))) \
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
            timezone=row.timezone, duration=format_duration(timedelta(seconds=row.duration_seconds)),
            cutoff=format_duration(timedelta(seconds=row.cutoff_seconds)), max_concurrency=row.max_concurrency,
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
                start = open_occurrence(schedule_of(w.schedule_kind, w.schedule), zone(w.timezone),
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
            rate = rollouts.RateControl.parse(window.max_concurrency, window.max_errors, window.waves)
            launch = None
            if names:
                from orchestrator.service import ServiceError
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
            log.info("window %s: occurrence %s started, %d servers queued (rollout %s)", window_id,
                     start.isoformat(), queued, occurrence.rollout_id)
        if launch is not None:
            rollouts.hand_off(self.service.dispatcher, launch.released, launch.outbox_ids)
        return Started(window_id, start, launch.rollout_id if launch else None, queued, occurrence.note)

    def _targets(self, session: Session, window: models.PatchWindow) -> tuple[list[str], list[str]]:
        """The window's servers, then those of its groups (nested included), once each; groups that
        have since disappeared are noted, not fatal."""
        from orchestrator.service import ServiceError

        names: list[str] = list(window.servers or ())
        notes: list[str] = []
        for gid in window.groups or ():
            try:
                names += self.service.servers_in_groups(session, window.account_alias, [gid])
            except ServiceError as exc:
                notes.append(exc.message)
        return list(dict.fromkeys(names)), notes


UPDATABLE = ("name", "servers", "groups", "cron", "monthly", "timezone", "duration", "cutoff", "max_concurrency",
             "max_errors", "waves", "package_id", "parameters", "enabled")


def _spec_of(row: models.PatchWindow) -> WindowSpec:
    """A window's stored definition as the WindowSpec that would create it again."""
    return WindowSpec(
        name=row.name, servers=tuple(row.servers or ()), groups=tuple(row.groups or ()),
        cron=row.schedule if row.schedule_kind == "cron" else None,
        monthly=row.schedule if row.schedule_kind == "monthly" else None, timezone=row.timezone,
        duration=timedelta(seconds=row.duration_seconds), cutoff=timedelta(seconds=row.cutoff_seconds),
        max_concurrency=row.max_concurrency, max_errors=row.max_errors,
        waves=tuple(tuple(w) for w in row.waves or ()), package_id=row.package_id,
        parameters=dict(row.parameters or {}),
    )


def _apply(row: models.PatchWindow, valid: ValidWindow, now: datetime) -> None:
    """Write a validated definition onto a window row; `updated_at` is the time the definition (or pause
    state) last changed: occurrences starting before it are never started (see `start_due`)."""
    row.name, row.servers, row.groups = valid.name, list(valid.servers), list(valid.groups)
    row.schedule_kind, row.schedule, row.timezone = kind_of(valid.schedule), str(valid.schedule), valid.tz.key
    row.duration_seconds = int(valid.duration.total_seconds())
    row.cutoff_seconds = int(valid.cutoff.total_seconds())
    row.max_concurrency = str(valid.rate.max_concurrency) if valid.rate.max_concurrency else None
    row.max_errors = str(valid.rate.max_errors) if valid.rate.max_errors is not None else None
    row.waves = [list(w) for w in valid.rate.waves]
    row.package_id, row.parameters, row.updated_at = valid.package_id, valid.parameters, now


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
