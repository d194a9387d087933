"""Operating on executions through the Python API: `patchaas execute`, `history`, `detail`, `cancel` and
`compliance`. Refusals exit 1 (or 2 for bad input), with the service's message.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.domain import naming, rate_control
from orchestrator.entrypoints.cli.common import connect_patching, console, fail
from orchestrator.settings import DEFAULT_PACKAGE_ID


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
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    if not server and not group:
        raise fail("give --server or --group", 2)
    try:
        rate_control.RateControl.parse(max_concurrency, max_errors, [w.split(",") for w in wave or []])
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    waves = [w.split(",") for w in wave or []] or None
    patching = connect_patching()
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
        raise fail(getattr(exc, "message", str(exc))) from None
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


def history(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
            limit: int = 20, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A server's patch history, newest first."""
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    patching = connect_patching()
    assert isinstance(patching, Patchaas)
    try:
        items = patching.history(alias, server, limit=limit)
    except (ServiceError, naming.NamingError) as exc:
        raise fail(getattr(exc, "message", str(exc))) from None
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


def detail(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
           execution_id: Annotated[str, typer.Argument()]) -> None:
    """One execution with every patch, as JSON."""
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    patching = connect_patching()
    assert isinstance(patching, Patchaas)
    try:
        item = patching.detail(alias, server, execution_id)
    except (ServiceError, naming.NamingError) as exc:
        raise fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    sys.stdout.write(item.model_dump_json(indent=2) + "\n")


def cancel(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
           execution_id: Annotated[str, typer.Argument()],
           by: Annotated[str, typer.Option(help="who cancels")] = "cli",
           reason: Annotated[str | None, typer.Option(help="why")] = None) -> None:
    """Cancel a running execution: it stops after the current step and leaves maintenance mode."""
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    patching = connect_patching()
    assert isinstance(patching, Patchaas)
    try:
        item = patching.cancel(alias, server, execution_id, by=by, reason=reason)
    except (ServiceError, naming.NamingError) as exc:
        raise fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    console.print(f"{item.execution_id}: cancel requested by {item.cancelled_by} (state {item.state})")


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

    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    if stale_after_days is not None and stale_after_days < 1:
        raise fail("--stale-after-days must be at least 1", 2)
    patching = connect_patching()
    assert isinstance(patching, Patchaas)
    try:
        found = patching.compliance(alias, group or (),
                                    timedelta(days=stale_after_days) if stale_after_days else None)
    except (ServiceError, naming.NamingError) as exc:
        status = getattr(exc, "status", 400)
        raise fail(getattr(exc, "message", str(exc)), 2 if status == 400 else 1) from None
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
