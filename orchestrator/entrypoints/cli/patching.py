"""Operating on executions through the Python API: `patchaas execute`, `history`, `detail`, `cancel` and
`compliance`. Refusals exit 1 (or 2 for bad input), with the service's message. `execute` takes the patch
selection of the REST body's `package.parameters` (schemas/selection.py, the same validation and messages);
`history`, `detail` and `compliance` print a table, JSON or CSV (`--format`).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.domain import naming, rate_control
from orchestrator.entrypoints.cli.common import connect_patching, console, fail
from orchestrator.entrypoints.console import csv_export
from orchestrator.settings import DEFAULT_PACKAGE_ID

FORMATS = ("table", "json", "csv")
Format = Annotated[str, typer.Option("--format", help="table, json or csv")]


def _format(value: str, as_json: bool = False) -> str:
    chosen = "json" if as_json else value.lower()
    if chosen not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {value!r}", 2)
    return chosen


def package_parameters(
    include_kb: list[str] | None, exclude_kb: list[str] | None, classification: list[str] | None,
    severity: list[str] | None, approve_after_days: str | None, reboot_policy: str | None, scan_only: bool,
    package_exclusion: list[str] | None, parameters_json: str | None,
) -> dict[str, object]:
    """The package parameters the options give (`--parameters-json` first, the options over it), validated as
    the REST body's are: a refusal exits 2 with the REST API's message."""
    from schemas import selection

    parameters: dict[str, object] = {}
    if parameters_json:
        try:
            loaded = json.loads(parameters_json)
        except ValueError as exc:
            raise fail(f"--parameters-json is not JSON: {exc}", 2) from None
        if not isinstance(loaded, dict):
            raise fail('--parameters-json must be a JSON object, like \'{"scanOnly": true}\'', 2)
        parameters.update(loaded)
    for key, given in (("includeKbs", include_kb), ("excludeKbs", exclude_kb), ("classifications", classification),
                       ("severities", severity), ("packageExclusions", package_exclusion)):
        if given:  # repeatable, and each may be comma-separated, as CLC's string parameters were
            parameters[key] = ",".join(given)
    if approve_after_days is not None:
        parameters["approveAfterDays"] = approve_after_days
    if reboot_policy is not None:
        parameters["rebootPolicy"] = reboot_policy
    if scan_only:
        parameters["scanOnly"] = True
    try:
        selection.parse(parameters)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    return parameters


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
    include_kb: Annotated[list[str] | None, typer.Option(help="install only these KBs (repeatable or a,b)")] = None,
    exclude_kb: Annotated[list[str] | None, typer.Option(help="never install these KBs (repeatable or a,b)")] = None,
    classification: Annotated[
        list[str] | None, typer.Option(help='only this classification, e.g. "Security Updates" (repeatable)')] = None,
    severity: Annotated[
        list[str] | None, typer.Option(help="only this MSRC severity: Critical, Important, Moderate, Low, "
                                            "Unspecified (repeatable)")] = None,
    approve_after_days: Annotated[
        str | None, typer.Option(help="only updates released at least this many days ago (0 to 365)")] = None,
    reboot_policy: Annotated[str | None, typer.Option(help="if_required (default), never or always")] = None,
    scan_only: Annotated[bool, typer.Option("--scan-only", help="report what would install; change nothing")] = False,
    package_exclusion: Annotated[
        list[str] | None, typer.Option(help="Linux: never install packages matching this glob (repeatable)")] = None,
    parameters_json: Annotated[
        str | None, typer.Option(help='more package parameters as a JSON object, e.g. \'{"scanOnly": true}\'')] = None,
) -> None:
    """Execute the update package on servers or groups (rate-controlled with --max-concurrency, --max-errors,
    --wave), choosing what it installs with the selection options (or --parameters-json)."""
    from orchestrator.domain import packages
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    if not server and not group:
        raise fail("give --server or --group", 2)
    try:
        packages.get(package)
    except packages.UnknownPackage as exc:
        raise fail(str(exc), 2) from None
    parameters = package_parameters(include_kb, exclude_kb, classification, severity, approve_after_days,
                                    reboot_policy, scan_only, package_exclusion, parameters_json)
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
            patching.execute_package(alias, server or [], package, parameters, requested_by=by,
                                     max_concurrency=max_concurrency, max_errors=max_errors, waves=waves) if server
            else patching.execute_package_on_groups(alias, group or [], package, parameters, requested_by=by,
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
    if parameters:
        console.print(f"package parameters: {json.dumps(parameters)}")
    if rollout_id is not None:
        console.print(f"rollout {rollout_id}: max concurrency {max_concurrency or 'unlimited'}, "
                      f"max errors {max_errors if max_errors is not None else 'none'}"
                      + (f", {len(waves)} wave(s) first" if waves else ""))
    if not any(a.is_queued for a in answers):
        raise typer.Exit(1)


def history(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
            limit: int = 20, output: Format = "table",
            as_json: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False) -> None:
    """A server's patch history, newest first."""
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    output = _format(output, as_json)
    patching = connect_patching()
    assert isinstance(patching, Patchaas)
    try:
        items = patching.history(alias, server, limit=limit)
    except (ServiceError, naming.NamingError) as exc:
        raise fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    if output == "json":
        sys.stdout.write(json.dumps([i.model_dump(mode="json") for i in items], indent=2) + "\n")
        return
    if output == "csv":
        sys.stdout.write(csv_export.history_csv(items))
        return
    table = Table(title=f"{server.upper()} patch history")
    for column in ("execution_id", "status", "start_time", "end_time", "cycles"):
        table.add_column(column)
    for item in items:
        table.add_row(item.execution_id, item.status, str(item.start_time), str(item.end_time or ""),
                      str(len(item.init_messages)))
    console.print(table)


def detail(alias: Annotated[str, typer.Argument()], server: Annotated[str, typer.Argument()],
           execution_id: Annotated[str, typer.Argument()], output: Format = "json") -> None:
    """One execution with every patch: JSON (the REST answer; the default), a table, or its patches as CSV."""
    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    output = _format(output)
    patching = connect_patching()
    assert isinstance(patching, Patchaas)
    try:
        item = patching.detail(alias, server, execution_id)
    except (ServiceError, naming.NamingError) as exc:
        raise fail(getattr(exc, "message", str(exc))) from None
    finally:
        patching.close()
    if output == "csv":
        sys.stdout.write(csv_export.patches_csv(item))
    elif output == "table":
        _detail_table(item)
    else:
        sys.stdout.write(item.model_dump_json(indent=2) + "\n")


def _detail_table(item: object) -> None:
    from orchestrator.entrypoints.console import words
    from schemas.patching import ExecutionDetail

    assert isinstance(item, ExecutionDetail)
    console.print(f"{item.execution_id} on {item.server}: {item.status} ({item.state}), {item.cycles} cycles, "
                  f"{item.installed_count} installed, {item.failed_count} failed, duration {item.duration}")
    console.print(f"{item.begin_message} → {item.end_message or 'running'}")
    table = Table("cycle", "KB", "title", "status", "result", "HRESULT", "reboot")
    for p in item.patches:
        result = f"{p.result_code} {words.result_code_words(p.result_code)}"
        table.add_row(str(p.cycle), p.kb, p.title, p.status, result, f"{p.hresult} {words.hresult_words(p.hresult)}",
                      "yes" if p.reboot_required else "no")
    console.print(table)


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
    output: Format = "table",
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object (the same as --format json)")] = False,
) -> None:
    """Is each server at the latest patches, as its most recent finished run knows? Exit code 0 when every
    server is compliant (and none is stale), 3 otherwise."""
    import json
    from datetime import timedelta

    from rich.table import Table

    from orchestrator.entrypoints.api import Patchaas
    from orchestrator.services.errors import ServiceError

    output = _format(output, as_json)
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
    if output == "csv":
        sys.stdout.write(csv_export.compliance_csv(found))
    elif output == "json":
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
