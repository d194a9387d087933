"""The console's pictures as geometry (pure): the compliance donut, an execution's timeline of steps, and a
month calendar of window occurrences. The templates draw them as inline SVG and HTML."""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from orchestrator.domain import messages

DONUT_COLOURS = {"compliant": "#2e7d32", "non_compliant": "#c62828", "unknown": "#9e9e9e"}
DONUT_LABELS = {"compliant": "compliant", "non_compliant": "non-compliant", "unknown": "unknown"}


@dataclass(frozen=True)
class Arc:
    """One slice of the donut, drawn as a dashed circle stroke."""

    key: str
    label: str
    count: int
    colour: str
    dasharray: str
    dashoffset: str
    percent: int


def donut(counts: Mapping[str, int], radius: float = 40.0) -> list[Arc]:
    """Slices in the order compliant, non-compliant, unknown; empty when there are no servers."""
    total = sum(counts.values())
    if total <= 0:
        return []
    circumference = 2 * math.pi * radius
    arcs, offset = [], 0.0
    for key in ("compliant", "non_compliant", "unknown"):
        n = int(counts.get(key, 0))
        if n <= 0:
            continue
        length = circumference * n / total
        arcs.append(Arc(key, DONUT_LABELS[key], n, DONUT_COLOURS[key], f"{length:.3f} {circumference - length:.3f}",
                        f"{-offset:.3f}", round(100 * n / total)))
        offset += length
    return arcs


# --- timeline -----------------------------------------------------------------------------------

LANES = ("power", "maintenance", "update cycles", "reboots", "checks")
LANE_OF = {
    "powering_on": "power", "awaiting_power": "power", "restoring_power": "power",
    "entering_maintenance": "maintenance", "exiting_maintenance": "maintenance",
    "invoking_package": "update cycles", "awaiting_result": "update cycles",
    "rebooting": "reboots", "awaiting_boot": "reboots", "settling": "reboots",
    "requested": "checks", "checking_pending_reboot": "checks",
    "running_hooks": "checks",  # pre/post hooks (docs/HOOKS.md)
}
LANE_COLOURS = {"power": "#6a1b9a", "maintenance": "#ef6c00", "update cycles": "#1565c0", "reboots": "#00838f",
                "checks": "#757575"}


@dataclass(frozen=True)
class Step:
    """A phase of a run: maintenance on, cycle N, reboot N, …, from one saved transition to the next."""

    lane: str
    label: str
    start: datetime
    end: datetime
    running: bool  # the phase the run is in now

    @property
    def duration(self) -> str:
        return messages.duration(self.end - self.start)


@dataclass(frozen=True)
class Bar:
    step: Step
    x: float
    y: float
    width: float
    colour: str


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    left: int
    bars: tuple[Bar, ...]
    lanes: tuple[tuple[str, float], ...]  # (lane, y of its label)
    ticks: tuple[tuple[float, str], ...]  # (x, label)
    start: datetime | None
    end: datetime | None


def _label(state: str, cycle: int) -> str:
    return {
        "entering_maintenance": "maintenance on", "exiting_maintenance": "maintenance off",
        "invoking_package": f"cycle {cycle}", "awaiting_result": f"cycle {cycle}",
        "rebooting": f"reboot after cycle {cycle}" if cycle else "pending reboot",
        "awaiting_boot": f"reboot after cycle {cycle}" if cycle else "pending reboot",
        "settling": f"reboot after cycle {cycle}" if cycle else "pending reboot",  # the reboot's phase, settled
        "powering_on": "power on", "awaiting_power": "power on", "restoring_power": "power off again",
        "requested": "inspect", "checking_pending_reboot": "pending reboot check", "running_hooks": "hooks",
    }.get(state, state.replace("_", " "))


def steps(started: datetime, ended: datetime | None, now: datetime,
          transitions: Sequence[tuple[datetime, str, str, int]]) -> list[Step]:
    """Phases from the saved transitions ((at, from state, to state, cycle), oldest first): each state lasts from
    the transition into it until the next one; consecutive states of one phase (rebooting → awaiting_boot,
    invoking_package → awaiting_result of the same cycle) merge into one step."""
    pieces: list[tuple[str, int, datetime]] = []  # (state, cycle, since)
    if transitions:
        pieces.append((transitions[0][1], 0, started))
    for at, _from, to, cycle in transitions:
        pieces.append((to, cycle, at))
    finish = ended or now
    merged: list[Step] = []
    for index, (state, cycle, since) in enumerate(pieces):
        if state in ("completed", "failed", "cancelled"):
            continue
        until = pieces[index + 1][2] if index + 1 < len(pieces) else finish
        lane, label = LANE_OF.get(state, "checks"), _label(state, cycle)
        running = index + 1 == len(pieces) and ended is None
        if merged and merged[-1].lane == lane and merged[-1].label == label:
            last = merged.pop()
            merged.append(Step(lane, label, last.start, max(until, last.end), running))
        else:
            merged.append(Step(lane, label, since, max(until, since), running))
    return merged


def timeline(found: Sequence[Step], width: int = 920, lane_height: int = 26, left: int = 110) -> Timeline:
    """Bars on a time axis, one lane per kind of step (only the lanes used)."""
    used = [lane for lane in LANES if any(s.lane == lane for s in found)]
    height = 30 + lane_height * max(1, len(used))
    if not found:
        return Timeline(width, height, left, (), (), (), None, None)
    start = min(s.start for s in found)
    end = max(s.end for s in found)
    span = max((end - start).total_seconds(), 1e-3)
    usable = width - left - 10
    y_of = {lane: 8 + i * lane_height for i, lane in enumerate(used)}
    bars = []
    for s in found:
        x = left + usable * (s.start - start).total_seconds() / span
        w = max(2.0, usable * (s.end - s.start).total_seconds() / span)
        bars.append(Bar(s, round(x, 2), y_of[s.lane], round(min(w, width - 10 - x), 2), LANE_COLOURS[s.lane]))
    ticks = []
    for i in range(5):
        at = start + timedelta(seconds=span * i / 4)
        ticks.append((round(left + usable * i / 4, 2), f"{at.astimezone(UTC):%H:%M:%S}"))
    lanes = tuple((lane, y + lane_height / 2 + 1) for lane, y in y_of.items())
    return Timeline(width, height, left, tuple(bars), lanes, tuple(ticks), start, end)


# --- month calendar ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    day: date
    in_month: bool
    today: bool
    entries: tuple[tuple[str, datetime, int], ...]  # (window name, start UTC, window id)


@dataclass(frozen=True)
class Month:
    year: int
    month: int
    title: str
    weeks: tuple[tuple[Day, ...], ...]
    previous: str  # "2026-10"
    following: str


def month_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def parse_month(text: str | None, now: datetime) -> tuple[int, int]:
    """`2026-11` (as the calendar's links write it); anything else is the current month."""
    if text and len(text) == 7 and text[4] == "-" and text[:4].isdigit() and text[5:].isdigit():
        year, month = int(text[:4]), int(text[5:])
        if 1970 <= year <= 9999 and 1 <= month <= 12:
            return year, month
    return now.year, now.month


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    first = datetime(year, month, 1, tzinfo=UTC)
    following = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return first, following


def month(year: int, month_: int, today: date, entries: Sequence[tuple[str, datetime, int]]) -> Month:
    """The weeks (Monday first) of a month with each day's occurrences (UTC days)."""
    by_day: dict[date, list[tuple[str, datetime, int]]] = {}
    for name, at, window_id in sorted(entries, key=lambda e: e[1]):
        by_day.setdefault(at.astimezone(UTC).date(), []).append((name, at, window_id))
    weeks = tuple(
        tuple(Day(d, d.month == month_, d == today, tuple(by_day.get(d, ()))) for d in week)
        for week in calendar.Calendar(firstweekday=0).monthdatescalendar(year, month_)
    )
    prev_y, prev_m = (year - 1, 12) if month_ == 1 else (year, month_ - 1)
    next_y, next_m = (year + 1, 1) if month_ == 12 else (year, month_ + 1)
    return Month(year, month_, f"{calendar.month_name[month_]} {year}", weeks, month_key(prev_y, prev_m),
                 month_key(next_y, next_m))
