"""A patch window's definition: what a caller asks for (`WindowSpec`), checked without the database
(`validate`: names, schedule, time zone, duration and cutoff, rate control, package and selection), and how a
definition is read from and written onto its row."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from orchestrator.domain import naming, packages, rate_control
from orchestrator.domain.schedules import (
    MAX_DURATION,
    Schedule,
    ScheduleError,
    format_duration,
    kind_of,
    parse_duration,
    parse_schedule,
    zone,
)
from orchestrator.persistence import models
from schemas import selection

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


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
    rate: rate_control.RateControl
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
        rate = rate_control.RateControl.parse(spec.max_concurrency, spec.max_errors, spec.waves)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None
    for index, wave in enumerate(rate.waves, start=1):
        for entry in wave:
            if not (_valid(naming.check_group_id, entry) or _valid(naming.check_server_name, entry)):
                raise ScheduleError(f"wave {index}: {entry!r} is neither a group id (va1-0001) nor a server name "
                                    "(VA1OSDPATCH01)")
    package_id = spec.package_id or default_package
    try:
        pkg = packages.get(package_id)
        package_id = pkg.id
        selection.parse_for(pkg.family, dict(spec.parameters or {}), pkg.describe())
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


UPDATABLE = ("name", "servers", "groups", "cron", "monthly", "timezone", "duration", "cutoff", "max_concurrency",
             "max_errors", "waves", "package_id", "parameters", "enabled")


def spec_of(row: models.PatchWindow) -> WindowSpec:
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


def apply_spec(row: models.PatchWindow, valid: ValidWindow, now: datetime) -> None:
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
