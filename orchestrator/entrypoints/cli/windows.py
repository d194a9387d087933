"""`patchaas window create|list|show|edit|pause|resume|delete`: scheduled patch windows, each occurrence
patching its targets as one rate-controlled rollout. Bad input exits 2, refusals 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from orchestrator.domain import naming
from orchestrator.entrypoints.cli.common import connect_patching, console, fail
from orchestrator.settings import DEFAULT_PACKAGE_ID

T = TypeVar("T")

window_app = typer.Typer(help="Scheduled patch windows.", no_args_is_help=True)


def _window_call(action: Callable[[object], T]) -> T:
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    patching = connect_patching()
    assert isinstance(patching, Patchaas)
    try:
        return action(patching)
    except (ServiceError, naming.NamingError) as exc:
        status = getattr(exc, "status", 400)
        raise fail(getattr(exc, "message", str(exc)), 2 if status == 400 else 1) from None
    finally:
        patching.close()


def _print_window(info: object) -> None:
    from orchestrator.services.windows import WindowInfo

    assert isinstance(info, WindowInfo)
    targets = ", ".join([*info.groups, *info.servers])
    rate = f"max concurrency {info.max_concurrency or 'unlimited'}, max errors {info.max_errors or 'none'}"
    paused = "" if info.enabled else " [yellow](paused)[/]"
    console.print(f"window {info.id} [bold]{info.name}[/]{paused}: {info.schedule_kind} \"{info.schedule}\" "
                  f"({info.timezone}), {info.duration} long, cutoff {info.cutoff}; targets {targets}; {rate}")
    for start in info.next_occurrences:
        console.print(f"  next: {start:%Y-%m-%d %H:%M} UTC")
    for occurrence in info.recent_occurrences:
        console.print(f"  started {occurrence.starts_at:%Y-%m-%d %H:%M} UTC: rollout {occurrence.rollout_id} "
                      f"({occurrence.rollout_state or '-'}){' — ' + occurrence.note if occurrence.note else ''}")


@window_app.command("create")
def window_create(
    alias: Annotated[str, typer.Option(help="account alias")],
    name: Annotated[str, typer.Option(help="the window's name (unique in the account)")],
    server: Annotated[list[str] | None, typer.Option(help="server name (repeatable)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="group id (repeatable; nested groups included)")] = None,
    cron: Annotated[str | None, typer.Option(help='a cron expression, e.g. "0 22 * * 5"')] = None,
    monthly: Annotated[str | None, typer.Option(help='a monthly rule, e.g. "second Tuesday + 3 days at 22:00"')] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone the schedule is read in")] = "UTC",
    duration: Annotated[str, typer.Option(help="how long the window is open: 4h, 90m, 1h30m")] = "4h",
    cutoff: Annotated[str, typer.Option(help="no new update cycle starts in the window's last …")] = "30m",
    max_concurrency: Annotated[str | None, typer.Option(help="a count (5) or a percentage (10%)")] = None,
    max_errors: Annotated[str | None, typer.Option(help="a count or a percentage")] = None,
    wave: Annotated[list[str] | None, typer.Option(help="an ordered wave: comma-separated groups/servers")] = None,
    package: Annotated[str, typer.Option(help="package id")] = DEFAULT_PACKAGE_ID,
    by: Annotated[str, typer.Option(help="who creates it")] = "cli",
) -> None:
    """Schedule a patch window (each occurrence patches its targets as one rate-controlled rollout)."""
    from orchestrator.services import window_specs, windows

    spec = window_specs.WindowSpec(name=name, servers=server or [], groups=group or [], cron=cron, monthly=monthly,
                              timezone=timezone, duration=duration, cutoff=cutoff, max_concurrency=max_concurrency,
                              max_errors=max_errors, waves=[w.split(",") for w in wave or []], package_id=package)
    try:
        window_specs.validate(spec, DEFAULT_PACKAGE_ID)  # bad input exits 2 before anything connects
    except ValueError as exc:
        raise fail(str(exc), 2) from None

    def create(patching: object) -> object:
        from orchestrator.entrypoints.api import Patchaas

        assert isinstance(patching, Patchaas)
        return windows.WindowService(patching.service).create(alias, spec, by)

    _print_window(_window_call(create))


@window_app.command("list")
def window_list(alias: Annotated[str, typer.Option(help="account alias")],
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The account's windows and their next occurrences."""
    import dataclasses

    items = _window_call(lambda patching: patching.list_windows(alias))  # type: ignore[attr-defined]
    if as_json:
        sys.stdout.write(json.dumps([dataclasses.asdict(i) for i in items], indent=2, default=str) + "\n")
        return
    if not items:
        console.print(f"account {alias.upper()} has no patch windows")
    for info in items:
        _print_window(info)


@window_app.command("show")
def window_show(alias: Annotated[str, typer.Option(help="account alias")],
                window: Annotated[str, typer.Argument(help="window id or name")]) -> None:
    """One window with its next and recent occurrences."""
    _print_window(_window_call(lambda patching: patching.window(alias, window)))  # type: ignore[attr-defined]


@window_app.command("edit")
def window_edit(
    alias: Annotated[str, typer.Option(help="account alias")],
    window: Annotated[str, typer.Argument(help="window id or name")],
    name: Annotated[str | None, typer.Option(help="a new name")] = None,
    server: Annotated[list[str] | None, typer.Option(help="server name (repeatable; replaces the servers)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="group id (repeatable; replaces the groups)")] = None,
    cron: Annotated[str | None, typer.Option(help="a cron expression (replaces the schedule)")] = None,
    monthly: Annotated[str | None, typer.Option(help="a monthly rule (replaces the schedule)")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA time zone")] = None,
    duration: Annotated[str | None, typer.Option(help="how long the window is open")] = None,
    cutoff: Annotated[str | None, typer.Option(help="no new update cycle starts in the window's last …")] = None,
    max_concurrency: Annotated[str | None, typer.Option(help="a count or a percentage; 'none' for unlimited")] = None,
    max_errors: Annotated[str | None, typer.Option(help="a count or a percentage; 'none' for no threshold")] = None,
    wave: Annotated[list[str] | None, typer.Option(help="an ordered wave (repeatable; replaces the waves)")] = None,
    package: Annotated[str | None, typer.Option(help="package id")] = None,
) -> None:
    """Change a window: only the options given change. Applies from the next occurrence that starts after
    the change (an open one is neither restarted nor changed)."""
    given = {"name": name, "servers": server, "groups": group, "cron": cron, "monthly": monthly,
             "timezone": timezone, "duration": duration, "cutoff": cutoff, "max_concurrency": max_concurrency,
             "max_errors": max_errors, "waves": [w.split(",") for w in wave] if wave else None, "package_id": package}
    changes: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    for limit in ("max_concurrency", "max_errors"):
        if str(changes.get(limit, "")).lower() == "none":
            changes[limit] = None
    if not changes:
        raise fail("nothing to change: give at least one option (see --help)", 2)
    info = _window_call(lambda patching: patching.update_window(alias, window, **changes))  # type: ignore[attr-defined]
    _print_window(info)


@window_app.command("pause")
def window_pause(alias: Annotated[str, typer.Option(help="account alias")],
                 window: Annotated[str, typer.Argument(help="window id or name")]) -> None:
    """Pause a window: no occurrence starts until it is resumed (a running one goes on until its cutoff)."""
    info = _window_call(lambda patching: patching.pause_window(alias, window))  # type: ignore[attr-defined]
    console.print(f"window {info.id} {info.name} paused")


@window_app.command("resume")
def window_resume(alias: Annotated[str, typer.Option(help="account alias")],
                  window: Annotated[str, typer.Argument(help="window id or name")]) -> None:
    """Resume a paused window from its next occurrence (one that opened while paused is not started late)."""
    _print_window(_window_call(lambda patching: patching.resume_window(alias, window)))  # type: ignore[attr-defined]


@window_app.command("delete")
def window_delete(alias: Annotated[str, typer.Option(help="account alias")],
                  window: Annotated[str, typer.Argument(help="window id or name")]) -> None:
    """Delete a window: no further occurrence starts (a running one goes on until its cutoff)."""
    info = _window_call(lambda patching: patching.delete_window(alias, window))  # type: ignore[attr-defined]
    console.print(f"window {info.id} {info.name} deleted")
