"""The processes of a deployment and their upkeep: `patchaas worker`, `beat`, `api`, `flower`, `status`, and
`patchaas db upgrade` (the migrations). Each needs the shared broker and database of a deployment, and says
so plainly (exit 2) when the settings point at the embedded in-process default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.entrypoints.cli.common import console, database_problem, fail
from orchestrator.settings import Settings

db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def worker(
    concurrency: Annotated[int, typer.Option(help="worker processes")] = 2,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
) -> None:
    """Run a Celery worker of a deployment (needs a shared broker and database)."""
    from workers import observability
    from workers.app import create_app

    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise fail("a worker needs a shared broker: set PATCHAAS_BROKER_URL (e.g. redis://127.0.0.1:6379/0)", 2)
    observability.for_worker(settings)  # logs (PATCHAAS_LOG_FORMAT); metrics exporter (PATCHAAS_METRICS_PORT)
    celery_app = create_app(settings)
    argv = [*(["--quiet"] if settings.log_format == "json" else []),  # no banner between JSON lines
            "worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}", "-E", "--without-gossip",
            "--without-mingle"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery_app.worker_main(argv)


def beat(loglevel: Annotated[str, typer.Option()] = "INFO",
         schedule: Annotated[Path, typer.Option(help="beat's schedule file")] = Path("celerybeat-schedule")) -> None:
    """Run the beat tick of a deployment (run exactly one)."""
    from workers import observability
    from workers.app import create_app

    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise fail("beat needs a shared broker: set PATCHAAS_BROKER_URL", 2)
    observability.for_beat(settings)  # logs; metrics exporter with the fleet-level gauges (PATCHAAS_METRICS_PORT)
    celery_app = create_app(settings)
    celery_app.Beat(loglevel=loglevel, schedule=str(schedule), quiet=settings.log_format == "json").run()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Bring the database (PATCHAAS_DATABASE_URL) to the latest schema."""
    from orchestrator.persistence import migrate

    settings = Settings()
    try:
        migrate.upgrade(settings.database_url, revision)
    except Exception as exc:  # connection refused, bad URL: say it plainly
        raise fail(f"migration failed on {settings.database_url}: {exc}") from None
    console.print(f"database at {settings.database_url} is at {revision}")


def status(as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
           overdue_after: Annotated[float, typer.Option(help="a timer this many seconds late is overdue")] = 60.0,
           ) -> None:
    """Is the service able to work (database migrated, broker up) and is the work flowing (active runs by
    state, overdue timers, retries, stuck emails, servers whose run could not end maintenance mode).
    Exit code 0: ready and healthy; 1: a dependency is down; 3: ready, but work needs attention."""
    import json
    from datetime import timedelta

    from orchestrator.persistence import db
    from orchestrator.services import health

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


def api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8080,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes", min=1, max=64)] = 1,
    log_level: Annotated[str, typer.Option(help=f"uvicorn log level: {', '.join(LOG_LEVELS)}")] = "info",
) -> None:
    """Serve the REST API (CLC v2 contract; OpenAPI at /openapi.json) with uvicorn."""
    import sqlalchemy as sa
    import uvicorn

    from orchestrator.persistence import db

    if log_level.lower() not in LOG_LEVELS:
        raise fail(f"unknown log level {log_level!r}; known: {', '.join(LOG_LEVELS)}", 2)
    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise fail("the API hands work to the workers through a shared broker: set PATCHAAS_BROKER_URL "
                   "(e.g. redis://127.0.0.1:6379/0)", 2)
    sql = db.create_engine_for(settings.database_url)
    try:
        with sql.connect() as conn:
            migrated = sa.inspect(conn).has_table("tokens")
    except sa.exc.SQLAlchemyError as exc:
        raise database_problem(exc, settings.database_url) from None
    finally:
        sql.dispose()
    if not migrated:
        raise fail(f"the database {settings.database_url} has no users and tokens yet: run `patchaas db upgrade`")
    from orchestrator.observability import exporter, logs

    if workers > 1 and settings.metrics_enabled:  # every uvicorn process's numbers in GET /metrics
        exporter.prepare("api")
    uvicorn.run("orchestrator.entrypoints.rest:build_app_from_settings", factory=True, host=host, port=port,
                workers=workers, log_level=log_level.lower(),
                log_config=logs.uvicorn_config(settings.log_format, log_level))  # PATCHAAS_LOG_FORMAT, redacted


def flower(
    address: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 5555,
) -> None:
    """Watch workers and tasks in Flower (tasks are named patchaas.advance / tick / deliver_email and carry the
    execution id; workers send events because they run with -E)."""
    from workers.app import create_app

    settings = Settings()
    if settings.broker_url.startswith("memory://"):
        raise fail("Flower watches a shared broker: set PATCHAAS_BROKER_URL", 2)
    create_app(settings).start(["flower", f"--address={address}", f"--port={port}"])
