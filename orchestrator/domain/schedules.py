"""When a patch window opens: schedules (a cron expression, or a monthly rule such as "second Tuesday + 3 days
at 22:00") read in an IANA time zone, durations, and the occurrences they give. Pure: no database.

- Local times that do not exist (the spring-forward gap) run at the same wall-clock offset before the
  change (02:30 in a 02:00→03:00 gap runs at 03:30 summer time); a repeated local time (fall back) runs once,
  at its first instance.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

MAX_DURATION = timedelta(days=7)
MAX_OCCURRENCES = 2000  # per computation: a "* * * * *" window over a week is 10 080, far more than needed
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
