"""`patchaas`: the demo, the worker and beat of a deployment, migrations, and operator commands.

Commands only translate: they parse arguments, call the service, print. Refusals print a message and
exit non-zero (2 for bad input, 1 for refusals), never a stack trace.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import naming
from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings
from orchestrator.ssh_cli import ssh_host_app

if TYPE_CHECKING:
    from orchestrator.auth import AuthService

T = TypeVar("T")

app = typer.Typer(help="Patching-as-a-Service: durable multi-reboot patching of a server fleet.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
sim_app = typer.Typer(help="The simulated fleet (for demos, tests and benchmarks).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sim_app, name="sim")
app.add_typer(ssh_host_app, name="ssh-host")  # orchestrator/ssh_cli.py
console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


@app.command()
def demo(workdir: Annotated[Path, typer.Option(help="where the demo's SQLite file goes")] = Path("var"),
         timeout: Annotated[float, typer.Option(help="seconds to wait for the fleet")] = 90.0,
         transport: Annotated[str | None, typer.Option(
             help="inprocess | http: the fleet over HTTP (simulator + clc driver + report channel) "
                  "(default PATCHAAS_DEMO_TRANSPORT, inprocess)")] = None,
         linux: Annotated[bool, typer.Option("--linux", help="also patch real Linux test hosts (2 Debian, 2 dnf) "
                                             "over SSH, built by scripts/linux-test-hosts (root)")] = False) -> None:
    """Patch a simulated fleet end to end on the embedded default (no PostgreSQL, no Redis)."""
    from orchestrator import demo as demo_mod

    raise typer.Exit(demo_mod.run(workdir, timeout, console, transport, linux=linux))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="worker processes")] = 2,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
) -> None:
    """Run a Celery worker of a deployment (needs a shared broker and database)."""
    from workers.app import create_app

    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise _fail("a worker needs a shared broker: set PATCHAAS_BROKER_URL (e.g. redis://127.0.0.1:6379/0)", 2)
    celery_app = create_app(settings)
    argv = ["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}", "-E", "--without-gossip",
            "--without-mingle"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery_app.worker_main(argv)


@app.command()
def beat(loglevel: Annotated[str, typer.Option()] = "INFO",
         schedule: Annotated[Path, typer.Option(help="beat's schedule file")] = Path("celerybeat-schedule")) -> None:
    """Run the beat tick of a deployment (run exactly one)."""
    from workers.app import create_app

    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise _fail("beat needs a shared broker: set PATCHAAS_BROKER_URL", 2)
    celery_app = create_app(settings)
    celery_app.Beat(loglevel=loglevel, schedule=str(schedule)).run()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Bring the database (PATCHAAS_DATABASE_URL) to the latest schema."""
    from orchestrator import migrate

    settings = Settings()
    try:
        migrate.upgrade(settings.database_url, revision)
    except Exception as exc:  # connection refused, bad URL: say it plainly
        raise _fail(f"migration failed on {settings.database_url}: {exc}") from None
    console.print(f"database at {settings.database_url} is at {revision}")


@sim_app.command("init")
def sim_init(
    count: Annotated[int, typer.Option(help="servers to simulate")] = 20,
    seed: Annotated[int, typer.Option()] = 7,
    alias: Annotated[str, typer.Option()] = "OSD",
    email: Annotated[str, typer.Option()] = "ops@osd.example",
) -> None:
    """Create a simulated fleet in PATCHAAS_SIM_STATE_URL and register it in the inventory."""
    from orchestrator import db, inventory, migrate
    from orchestrator.bootstrap import build_fleet
    from workers.fleet import simulated

    settings = Settings()
    if not settings.sim_state_url:
        raise _fail("set PATCHAAS_SIM_STATE_URL to the database the simulated fleet lives in", 2)
    try:
        alias = naming.check_alias(alias)
    except naming.NamingError as exc:
        raise _fail(str(exc), 2) from None
    specs = simulated.build_fleet_specs(seed, count, alias=alias)
    simulated.SimulatedFleet.create(specs, simulated.SqlStore(settings.sim_state_url),
                                    simulated.SimTimings.instant(), seed=seed, reset=True)
    build_fleet(settings)  # attaches: proves the settings are usable by workers
    migrate.upgrade(settings.database_url)
    sql = db.create_engine_for(settings.database_url)
    with db.session_factory(sql).begin() as session:
        now = db.utcnow()
        inventory.ensure_account(session, alias, f"{alias} account", "VA1", email, now)
        gid = inventory.ensure_group(session, alias, "va1-0001", f"{alias} servers")
        added = inventory.register_servers(
            session, alias, (inventory.ServerSpec(s.name, s.os_type, s.power_state.value, gid) for s in specs)
        )
    sql.dispose()
    console.print(f"simulated fleet of {count} servers (seed {seed}); {added} registered in group {gid}")


def _patching() -> object:
    from orchestrator.api import Patchaas

    return Patchaas.connect()


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
           overdue_after: Annotated[float, typer.Option(help="a timer this many seconds late is overdue")] = 60.0,
           ) -> None:
    """Is the service able to work (database migrated, broker up) and is the work flowing (active runs by
    state, overdue timers, retries, stuck emails, servers whose run could not end maintenance mode).
    Exit code 0: ready and healthy; 1: a dependency is down; 3: ready, but work needs attention."""
    import json
    from datetime import timedelta

    from orchestrator import db, health

    settings = Settings()
    sql = db.create_engine_for(settings.database_url)
    sessions = db.session_factory(sql)
    try:
        checks = health.readiness(sessions, settings.broker_url)
        ready = all(c.ok for c in checks)
        view = health.overview(sessions, db.utcnow(), timedelta(seconds=overdue_after)) if checks[0].ok else None
    finally:
        sql.dispose()
    if as_json:
        print(json.dumps({"ready": ready, "checks": [c.__dict__ for c in checks],
                          "overview": view.as_dict() if view else None}))
    else:
        for check in checks:
            mark = "[green]ok[/]" if check.ok else "[red]DOWN[/]"
            console.print(f"{check.name:9} {mark}  {check.detail} ({check.seconds * 1000:.0f} ms)")
        if view is not None:
            states = ", ".join(f"{k} {v}" for k, v in view.active.items()) or "none"
            console.print(f"active    {sum(view.active.values())} ({states}); held by rollouts {view.held}")
            late = f", oldest {view.oldest_overdue_seconds:.0f} s late" if view.overdue else ""
            console.print(f"timers    {view.overdue} overdue{late}; {view.expired_leases} expired leases; "
                          f"{view.retrying} retrying")
            age = f", oldest {view.oldest_unsent_seconds:.0f} s" if view.unsent_emails else ""
            console.print(f"emails    {view.unsent_emails} unsent{age}")
            for server, execution_id in view.left_in_maintenance:
                console.print(f"[yellow]attention[/] {server} may still be in maintenance mode: run {execution_id} "
                              "could not turn it off")
    if not ready:
        raise typer.Exit(1)
    if view is not None and not view.healthy:
        raise typer.Exit(3)


@app.command()
def execute(
    alias: Annotated[str, typer.Option(help="account alias")],
    server: Annotated[list[str] | None, typer.Option(help="server name (repeatable)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="group id (repeatable; nested groups included)")] = None,
    package: Annotated[str, typer.Option(help="package id")] = DEFAULT_PACKAGE_ID,
    by: Annotated[str, typer.Option(help="who asks")] = "cli",
    max_concurrency: Annotated[
        str | None, typer.Option(help="servers patched at once: a count (5) or a percentage (10%)")] = None,
    max_errors: Annotated[
        str | None, typer.Option(help="failures tolerated (count or %); one more stops the rollout")] = None,
    wave: Annotated[
        list[str] | None,
        typer.Option(help="an ordered wave: comma-separated group ids or server names (repeatable; canary first)"),
    ] = None,
) -> None:
    """Execute the update package on servers or groups (rate-controlled with --max-concurrency, --max-errors,
    --wave)."""
    from orchestrator import rollouts
    from orchestrator.api import Patchaas
    from orchestrator.service import ServiceError

    if not server and not group:
        raise _fail("give --server or --group", 2)
    try:
        rollouts.RateControl.parse(max_concurrency, max_errors, [w.split(",") for w in wave or []])
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    waves = [w.split(",") for w in wave or []] or None
    patching = _patching()
    assert isinstance(patching, Patchaas)
    rollout_id = None
    try:
        answers = (
            patching.execute_package(alias, server or [], package, requested_by=by, max_concurrency=max_concurrency,
                                     max_errors=max_errors, waves=waves) if server
            else patching.execute_package_on_groups(alias, group or [], package, requested_by=by,
                                                    max_concurrency=max_concurrency, max_errors=max_errors,
                                                    waves=waves)
        )
        first = next((a.execution_id for a in answers if a.is_queued and a.execution_id), None)
        if first is not None and (max_concurrency or max_errors or waves):
            rollout_id = patching.service.rollout_of(alias, first)
    except (ServiceError, naming.NamingError) as exc:
        raise _fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    for answer in answers:
        if answer.is_queued:
            console.print(f"{answer.server}: queued as {answer.execution_id}")
        else:
            console.print(f"{answer.server}: [yellow]not queued[/] — {answer.error_message}")
    if rollout_id is not None:
        console.print(f"rollout {rollout_id}: max concurrency {max_concurrency or 'unlimited'}, "
                      f"max errors {max_errors if max_errors is not None else 'none'}"
                      + (f", {len(waves)} wave(s) first" if waves else ""))
    if not any(a.is_queued for a in answers):
        raise typer.Exit(1)


@app.command()
def history(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
            limit: int = 20, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A server's patch history, newest first."""
    from orchestrator.api import Patchaas
    from orchestrator.service import ServiceError

    patching = _patching()
    assert isinstance(patching, Patchaas)
    try:
        items = patching.history(alias, server, limit=limit)
    except (ServiceError, naming.NamingError) as exc:
        raise _fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    if as_json:
        sys.stdout.write(json.dumps([i.model_dump(mode="json") for i in items], indent=2) + "\n")
        return
    table = Table(title=f"{server.upper()} patch history")
    for column in ("execution_id", "status", "start_time", "end_time", "cycles"):
        table.add_column(column)
    for item in items:
        table.add_row(item.execution_id, item.status, str(item.start_time), str(item.end_time or ""),
                      str(len(item.init_messages)))
    console.print(table)


@app.command()
def detail(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
           execution_id: Annotated[str, typer.Argument()]) -> None:
    """One execution with every patch, as JSON."""
    from orchestrator.api import Patchaas
    from orchestrator.service import ServiceError

    patching = _patching()
    assert isinstance(patching, Patchaas)
    try:
        item = patching.detail(alias, server, execution_id)
    except (ServiceError, naming.NamingError) as exc:
        raise _fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    sys.stdout.write(item.model_dump_json(indent=2) + "\n")


@app.command()
def cancel(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
           execution_id: Annotated[str, typer.Argument()],
           by: Annotated[str, typer.Option(help="who cancels")] = "cli",
           reason: Annotated[str | None, typer.Option(help="why")] = None) -> None:
    """Cancel a running execution: it stops after the current step and leaves maintenance mode."""
    from orchestrator.api import Patchaas
    from orchestrator.service import ServiceError

    patching = _patching()
    assert isinstance(patching, Patchaas)
    try:
        item = patching.cancel(alias, server, execution_id, by=by, reason=reason)
    except (ServiceError, naming.NamingError) as exc:
        raise _fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    console.print(f"{item.execution_id}: cancel requested by {item.cancelled_by} (state {item.state})")


@app.command("compliance")
def compliance_cmd(
    alias: Annotated[str, typer.Option(help="account alias")],
    group: Annotated[list[str] | None, typer.Option(help="only this group (repeatable; nested included)")] = None,
    stale_after_days: Annotated[int | None, typer.Option(help="flag answers older than this many days")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Is each server at the latest patches, as its most recent finished run knows? Exit code 0 when every
    server is compliant (and none is stale), 3 otherwise."""
    import json
    from datetime import timedelta

    from rich.table import Table

    from orchestrator.api import Patchaas
    from orchestrator.service import ServiceError

    if stale_after_days is not None and stale_after_days < 1:
        raise _fail("--stale-after-days must be at least 1", 2)
    patching = _patching()
    assert isinstance(patching, Patchaas)
    try:
        found = patching.compliance(alias, group or (),
                                    timedelta(days=stale_after_days) if stale_after_days else None)
    except (ServiceError, naming.NamingError) as exc:
        status = getattr(exc, "status", 400)
        raise _fail(getattr(exc, "message", str(exc)), 2 if status == 400 else 1) from None
    finally:
        patching.close()
    if as_json:
        print(json.dumps({"alias": found.alias, "at": found.at.isoformat(), "counts": found.counts(),
                          "servers": [s.__dict__ | {"as_of": s.as_of.isoformat() if s.as_of else None,
                                                    "missing": list(s.missing), "failed": list(s.failed)}
                                      for s in found.servers]}))
    else:
        table = Table("server", "status", "as of", "missing", "failed", "why")
        colour = {"compliant": "green", "non_compliant": "red", "unknown": "yellow"}
        for s in found.servers:
            state = f"[{colour[s.status]}]{s.status}[/]" + (" (stale)" if s.stale else "") \
                + (" (patching now)" if s.patching_now else "")
            table.add_row(s.server, state, f"{s.as_of:%Y-%m-%d %H:%M}" if s.as_of else "-",
                          ", ".join(s.missing) or "-", ", ".join(s.failed) or "-", s.reason)
        console.print(table)
        counts = found.counts()
        console.print(f"{counts['compliant']} compliant, {counts['non_compliant']} non-compliant, "
                      f"{counts['unknown']} unknown")
    if any(s.status != "compliant" or s.stale for s in found.servers):
        raise typer.Exit(3)


# --- patch windows ----------------------------------------------------------------------------

window_app = typer.Typer(help="Scheduled patch windows.", no_args_is_help=True)
app.add_typer(window_app, name="window")


def _window_call(action: Callable[[object], T]) -> T:
    from orchestrator.api import Patchaas
    from orchestrator.service import ServiceError

    patching = _patching()
    assert isinstance(patching, Patchaas)
    try:
        return action(patching)
    except (ServiceError, naming.NamingError) as exc:
        status = getattr(exc, "status", 400)
        raise _fail(getattr(exc, "message", str(exc)), 2 if status == 400 else 1) from None
    finally:
        patching.close()


def _print_window(info: object) -> None:
    from orchestrator.windows import WindowInfo

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
    from orchestrator import windows

    spec = windows.WindowSpec(name=name, servers=server or [], groups=group or [], cron=cron, monthly=monthly,
                              timezone=timezone, duration=duration, cutoff=cutoff, max_concurrency=max_concurrency,
                              max_errors=max_errors, waves=[w.split(",") for w in wave or []], package_id=package)
    try:
        windows.validate(spec, DEFAULT_PACKAGE_ID)  # bad input exits 2 before anything connects
    except ValueError as exc:
        raise _fail(str(exc), 2) from None

    def create(patching: object) -> object:
        from orchestrator.api import Patchaas

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
        raise _fail("nothing to change: give at least one option (see --help)", 2)
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


# --- the REST API, its accounts and users ---------------------------------------------------

account_app = typer.Typer(help="Customer accounts.", no_args_is_help=True)
user_app = typer.Typer(help="Users of the REST API.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(user_app, name="user")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _database_problem(exc: Exception, url: str) -> typer.Exit:
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0:1] or [type(exc).__name__]
    return _fail(f"database {url}: {first[0]} (is it up, and migrated with `patchaas db upgrade`?)")


@app.command()
def api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8080,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes", min=1, max=64)] = 1,
    log_level: Annotated[str, typer.Option(help=f"uvicorn log level: {', '.join(LOG_LEVELS)}")] = "info",
) -> None:
    """Serve the REST API (CLC v2 contract; OpenAPI at /openapi.json) with uvicorn."""
    import sqlalchemy as sa
    import uvicorn

    from orchestrator import db

    if log_level.lower() not in LOG_LEVELS:
        raise _fail(f"unknown log level {log_level!r}; known: {', '.join(LOG_LEVELS)}", 2)
    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise _fail("the API hands work to the workers through a shared broker: set PATCHAAS_BROKER_URL "
                    "(e.g. redis://127.0.0.1:6379/0)", 2)
    sql = db.create_engine_for(settings.database_url)
    try:
        with sql.connect() as conn:
            migrated = sa.inspect(conn).has_table("tokens")
    except sa.exc.SQLAlchemyError as exc:
        raise _database_problem(exc, settings.database_url) from None
    finally:
        sql.dispose()
    if not migrated:
        raise _fail(f"the database {settings.database_url} has no users and tokens yet: run `patchaas db upgrade`")
    uvicorn.run("orchestrator.rest:build_app_from_settings", factory=True, host=host, port=port, workers=workers,
                log_level=log_level.lower())


def _auth_call(action: Callable[[AuthService], T]) -> T:
    """Run `action` on an AuthService over PATCHAAS_DATABASE_URL; refusals and database trouble exit cleanly."""
    from datetime import timedelta

    import sqlalchemy as sa

    from orchestrator import db
    from orchestrator.auth import AuthService
    from orchestrator.service import ServiceError

    settings = Settings()
    sql = db.create_engine_for(settings.database_url)
    try:
        service = AuthService(db.session_factory(sql), db.utcnow, timedelta(seconds=settings.token_ttl_seconds))
        return action(service)
    except ServiceError as exc:
        raise _fail(exc.message, 1 if exc.status == 409 else 2) from None
    except sa.exc.SQLAlchemyError as exc:
        raise _database_problem(exc, settings.database_url) from None
    finally:
        sql.dispose()


@account_app.command("create")
def account_create(
    alias: Annotated[str, typer.Argument(help="account alias: 2 to 4 letters or digits")],
    name: Annotated[str, typer.Option(help="the customer's name")],
    datacenter: Annotated[str, typer.Option(help="home datacenter, e.g. VA1")],
    email: Annotated[str, typer.Option(help="who gets the patching emails")],
) -> None:
    """Create a customer account."""
    created = _auth_call(lambda auth: auth.create_account(alias, name, datacenter, email))
    console.print(f"account {created} created")


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Argument(help="login name (case-insensitive)")],
    alias: Annotated[str, typer.Option(help="the user's account alias")],
    role: Annotated[list[str] | None, typer.Option(help="a CLC role, repeatable (ServerAdmin, AccountViewer…)")] = None,
    password: Annotated[str | None, typer.Option(help="the password (shows in the process list: prefer stdin)")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Create a user of the REST API; the password is stored as an argon2 hash."""
    from orchestrator.auth import ROLES

    if not role:
        raise _fail(f"give at least one --role; known: {', '.join(sorted(ROLES))}", 2)
    if password is not None and password_stdin:
        raise _fail("give --password or --password-stdin, not both", 2)
    if password_stdin:
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif password is None:
        if not sys.stdin.isatty():
            raise _fail("give --password-stdin (or --password)", 2)
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise _fail("the password is empty", 2)
    secret = password
    created = _auth_call(lambda auth: auth.create_user(username, alias, role, secret))
    console.print(f"user {created.username} of account {created.account_alias} created "
                  f"(roles: {', '.join(created.roles)})")


@user_app.command("revoke-tokens")
def user_revoke_tokens(username: Annotated[str, typer.Argument(help="login name")]) -> None:
    """Revoke every bearer token of a user (a leaked token, someone leaving); they must log in again.
    API processes stop accepting them within their token cache's few seconds."""
    count = _auth_call(lambda auth: auth.revoke_tokens(username))
    console.print(f"{count} token{'s' if count != 1 else ''} of {username.lower()} revoked")


@app.command()
def simulator(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8777,
    seed: Annotated[int, typer.Option(help="seeds the fleet it creates and the fault rolls")] = 7,
    servers: Annotated[
        int | None,
        typer.Option(help="create a new fleet of N servers (replacing a shared one); default: attach to "
                          "PATCHAAS_SIM_STATE_URL's fleet, or 20 servers in memory"),
    ] = None,
    alias: Annotated[str, typer.Option(help="account alias of the fleet and of the user")] = "OSD",
    username: Annotated[str | None, typer.Option(help="login user (default: PATCHAAS_CLC_USERNAME, patchaas)")] = None,
    password: Annotated[str | None, typer.Option(help="password (default: PATCHAAS_CLC_PASSWORD, patchaas)")] = None,
    timings: Annotated[str | None, typer.Option(help="instant | demo (default PATCHAAS_SIM_TIMINGS)")] = None,
    fault_5xx_rate: Annotated[float, typer.Option(help="share of requests answered 500/502/503")] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="added to every CLC request")] = 0.0,
    drop_rate: Annotated[float, typer.Option(help="share of connections closed without an answer")] = 0.0,
    token_ttl: Annotated[float, typer.Option(help="seconds a bearer token lives (CLC: 2 weeks)")] = 14 * 24 * 3600.0,
    after_effect_share: Annotated[float, typer.Option(help="share of 5xx/drops that strike after the effect")] = 0.5,
    report_drop_rate: Annotated[float, typer.Option(help="share of cycle reports servers never post")] = 0.0,
    report_duplicate_rate: Annotated[float, typer.Option(help="share of cycle reports posted twice")] = 0.0,
    hide_package_results: Annotated[
        bool, typer.Option(help="packageRuns never says a run finished: results only via the report channel")
    ] = False,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Serve a CLC API v2 subset over the simulated fleet, with fault injection (see docs/CLC_SIMULATOR.md)."""
    from workers.fleet import clc_simulator, factory

    settings = Settings()
    try:
        alias = naming.check_alias(alias)
        faults = clc_simulator.Faults(error_rate=fault_5xx_rate, latency_ms=latency_ms, drop_rate=drop_rate,
                                      token_ttl_seconds=token_ttl, after_effect_share=after_effect_share, seed=seed,
                                      report_drop_rate=report_drop_rate, report_duplicate_rate=report_duplicate_rate,
                                      hide_package_results=hide_package_results)
        sim_timings = factory.timings_for(settings.model_copy(update={"sim_timings": timings or settings.sim_timings}))
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    fleet = clc_simulator.fleet_for(settings.sim_state_url, seed, servers, alias, sim_timings)
    user = username or settings.clc_username or "patchaas"
    secret = password or (settings.clc_password.get_secret_value() if settings.clc_password else "patchaas")
    users = clc_simulator.users_from({user: secret}, alias)
    where = settings.sim_state_url or "memory"
    err.print(f"CLC simulator on http://{host}:{port}: {len(fleet.specs())} servers ({where}), user {user}, "
              f"5xx {fault_5xx_rate:g}, latency {latency_ms:g} ms, drops {drop_rate:g}, token ttl {token_ttl:g}s")
    clc_simulator.serve(clc_simulator.create_app(fleet, users, faults), host, port, log_level)


@app.command()
def flower(
    address: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 5555,
) -> None:
    """Watch workers and tasks in Flower (tasks are named patchaas.advance / tick / deliver_email and carry the
    execution id; workers send events because they run with -E)."""
    from workers.app import create_app

    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise _fail("Flower watches a shared broker: set PATCHAAS_BROKER_URL", 2)
    create_app(settings).start(["flower", f"--address={address}", f"--port={port}"])


def main() -> None:
    """Console-script entry point."""
    app()
