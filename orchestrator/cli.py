"""`patchaas`: the demo, the worker and beat of a deployment, migrations, and operator commands.

Commands only translate: they parse arguments, call the service, print. Refusals print a message and
exit non-zero (2 for bad input, 1 for refusals), never a stack trace.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import naming
from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings

app = typer.Typer(help="Patching-as-a-Service: durable multi-reboot patching of a server fleet.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
sim_app = typer.Typer(help="The simulated fleet (for demos, tests and benchmarks).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sim_app, name="sim")
console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


@app.command()
def demo(workdir: Annotated[Path, typer.Option(help="where the demo's SQLite file goes")] = Path("var"),
         timeout: Annotated[float, typer.Option(help="seconds to wait for the fleet")] = 90.0) -> None:
    """Patch a simulated fleet end to end on the embedded default (no PostgreSQL, no Redis)."""
    from orchestrator import demo as demo_mod

    raise typer.Exit(demo_mod.run(workdir, timeout, console))


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
def execute(
    alias: Annotated[str, typer.Option(help="account alias")],
    server: Annotated[list[str] | None, typer.Option(help="server name (repeatable)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="group id (repeatable; nested groups included)")] = None,
    package: Annotated[str, typer.Option(help="package id")] = DEFAULT_PACKAGE_ID,
    by: Annotated[str, typer.Option(help="who asks")] = "cli",
) -> None:
    """Execute the update package on servers or groups."""
    from orchestrator.api import Patchaas
    from orchestrator.service import ServiceError

    if not server and not group:
        raise _fail("give --server or --group", 2)
    patching = _patching()
    assert isinstance(patching, Patchaas)
    try:
        answers = (
            patching.execute_package(alias, server or [], package, requested_by=by) if server
            else patching.execute_package_on_groups(alias, group or [], package, requested_by=by)
        )
    except (ServiceError, naming.NamingError) as exc:
        raise _fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    for answer in answers:
        if answer.is_queued:
            console.print(f"{answer.server}: queued as {answer.execution_id}")
        else:
            console.print(f"{answer.server}: [yellow]not queued[/] — {answer.error_message}")
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


def main() -> None:
    """Console-script entry point."""
    app()
