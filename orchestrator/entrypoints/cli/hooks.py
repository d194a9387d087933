"""`patchaas hook put|list|show|delete`: an account's pre/post hooks, over PATCHAAS_DATABASE_URL (docs/HOOKS.md).
A hook's definition is the JSON body of `PUT /v2/patchaas/{alias}/hooks/{name}`, read from a file or stdin.
Bad input exits 2, refusals (not found) 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from orchestrator.entrypoints.cli.common import console, fail, with_keyed_service

if TYPE_CHECKING:
    from orchestrator.services.hooks import HookInfo, HookService

T = TypeVar("T")

hook_app = typer.Typer(help="Pre/post hooks of an account: commands on the server or HTTP calls, run at fixed "
                            "points of every run.", no_args_is_help=True)


def _call(action: Callable[[HookService], T]) -> T:
    """Run `action` on a HookService over PATCHAAS_DATABASE_URL; refusals and database trouble exit cleanly."""
    from orchestrator.services.hooks import HookService

    return with_keyed_service(HookService, action)


def _shown(info: HookInfo) -> dict[str, Any]:
    return {"name": info.name, **info.definition, "secretHeaderNames": list(info.secret_header_names),
            "updatedBy": info.updated_by, "updatedAt": info.updated_at.isoformat()}


def _line(info: HookInfo) -> str:
    d = info.definition
    what = d.get("command") if d.get("kind") == "command" else f"{d.get('method', 'POST')} {d.get('url')}"
    return (f"hook [bold]{info.name}[/] ({d.get('kind')}) at {', '.join(d.get('points') or [])}: {what}; "
            f"on failure {d.get('onFailure', 'fail')}")


def _definition(file: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}", 2) from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise fail(f"{file} is not JSON: {exc}", 2) from None
    if not isinstance(body, dict):
        raise fail(f"{file} must hold a JSON object (the hook's definition)", 2)
    return body


@hook_app.command("put")
def hook_put(
    alias: Annotated[str, typer.Option(help="account alias")],
    name: Annotated[str, typer.Option(help="the hook's name (lower-case letters, digits, - and _)")],
    file: Annotated[str, typer.Option(help="the definition as JSON (the REST body), or - for stdin")],
    by: Annotated[str, typer.Option(help="who changes it (the audit trail)")] = "cli",
) -> None:
    """Create or replace a hook, e.g. {"kind": "command", "points": ["pre_maintenance"], "command": "..."}."""
    from orchestrator.services.hooks import parse_spec

    body = _definition(file)
    info, created = _call(lambda service: service.put(alias, name, parse_spec(body), by))
    console.print(f"{'created' if created else 'replaced'} {_line(info)}")


@hook_app.command("list")
def hook_list(
    alias: Annotated[str, typer.Option(help="account alias")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The account's hooks, by name."""
    infos = _call(lambda service: service.list_hooks(alias))
    if as_json:
        print(json.dumps([_shown(i) for i in infos], indent=2))
        return
    if not infos:
        console.print("no hooks")
    for info in infos:
        console.print(_line(info))


@hook_app.command("show")
def hook_show(
    alias: Annotated[str, typer.Option(help="account alias")],
    name: Annotated[str, typer.Option(help="the hook's name")],
) -> None:
    """One hook's definition as JSON (secret headers by name only)."""
    info = _call(lambda service: service.get(alias, name))
    print(json.dumps(_shown(info), indent=2))


@hook_app.command("delete")
def hook_delete(
    alias: Annotated[str, typer.Option(help="account alias")],
    name: Annotated[str, typer.Option(help="the hook's name")],
    by: Annotated[str, typer.Option(help="who deletes it (the audit trail)")] = "cli",
) -> None:
    """Delete a hook (runs already going keep their copy)."""
    info = _call(lambda service: service.delete(alias, name, by))
    console.print(f"deleted {_line(info)}")
