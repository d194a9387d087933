"""`patchaas webhook create|list|show|enable|delete|events`: an account's webhook subscriptions and its event
history, over PATCHAAS_DATABASE_URL (docs/HOOKS.md). Bad input exits 2, refusals (not found, a name taken) 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from orchestrator.entrypoints.cli.common import console, fail, with_keyed_service

if TYPE_CHECKING:
    from orchestrator.services.webhooks import WebhookInfo, WebhookService

T = TypeVar("T")

webhook_app = typer.Typer(help="Webhook subscriptions and the event history.", no_args_is_help=True)


def _call(action: Callable[[WebhookService], T]) -> T:
    """Run `action` on a WebhookService over PATCHAAS_DATABASE_URL; refusals and database trouble exit cleanly."""
    from orchestrator.services.webhooks import WebhookService

    return with_keyed_service(WebhookService, action)


def _print(info: WebhookInfo) -> None:
    state = "enabled" if info.enabled else f"[red]disabled[/]: {info.disabled_reason}"
    counts = ", ".join(f"{n} {k}" for k, n in sorted(info.counts.items())) or "no deliveries"
    console.print(f"webhook {info.id} [bold]{info.name}[/] ({info.format}) → {info.url}; kinds "
                  f"{', '.join(info.kinds)}; {state}; {counts}")
    if info.last_error:
        console.print(f"  last error: {info.last_error}")


@webhook_app.command("create")
def webhook_create(
    alias: Annotated[str, typer.Option(help="account alias")],
    name: Annotated[str, typer.Option(help="the subscription's name (unique in the account)")],
    url: Annotated[str, typer.Option(help="where to POST the events")],
    format: Annotated[str, typer.Option(help="json | slack | teams")] = "json",
    kind: Annotated[list[str] | None, typer.Option(help="an event kind, family.* or * (repeatable)")] = None,
    secret_ref: Annotated[str | None, typer.Option(help="env:NAME or file:/path the workers sign with")] = None,
    secret_stdin: Annotated[bool, typer.Option("--secret-stdin", help="read the signing secret from stdin")] = False,
    by: Annotated[str, typer.Option(help="who creates it (the audit trail)")] = "cli",
) -> None:
    """Subscribe a URL to the account's events. Without --secret-stdin or --secret-ref a secret is generated
    and printed once."""
    from orchestrator.services.webhooks import WebhookSpec

    if secret_stdin and secret_ref:
        raise fail("give --secret-stdin or --secret-ref, not both", 2)
    secret = sys.stdin.read().strip() if secret_stdin else None
    spec = WebhookSpec(name=name, url=url, format=format, kinds=kind or ["*"], secret=secret, secret_ref=secret_ref)
    info = _call(lambda service: service.create(alias, spec, by))
    _print(info)
    if info.secret:
        console.print(f"signing secret (shown once): [bold]{info.secret}[/]")


@webhook_app.command("list")
def webhook_list(alias: Annotated[str, typer.Option(help="account alias")]) -> None:
    """The account's subscriptions: enabled or why not, their deliveries by state."""
    found = _call(lambda service: service.list_webhooks(alias))
    if not found:
        console.print("no webhooks")
    for info in found:
        _print(info)


@webhook_app.command("show")
def webhook_show(alias: Annotated[str, typer.Option(help="account alias")],
                 webhook: Annotated[str, typer.Argument(help="webhook id or name")]) -> None:
    """One subscription."""
    _print(_call(lambda service: service.get(alias, service.find(alias, webhook))))


@webhook_app.command("enable")
def webhook_enable(alias: Annotated[str, typer.Option(help="account alias")],
                   webhook: Annotated[str, typer.Argument(help="webhook id or name")],
                   by: Annotated[str, typer.Option(help="who (the audit trail)")] = "cli") -> None:
    """Enable again a subscription that was disabled for failing; its pending deliveries resume."""
    _print(_call(lambda service: service.enable(alias, service.find(alias, webhook), by)))


@webhook_app.command("delete")
def webhook_delete(alias: Annotated[str, typer.Option(help="account alias")],
                   webhook: Annotated[str, typer.Argument(help="webhook id or name")],
                   by: Annotated[str, typer.Option(help="who (the audit trail)")] = "cli") -> None:
    """Unsubscribe (deliveries not sent yet are dropped)."""
    info = _call(lambda service: service.delete(alias, service.find(alias, webhook), by))
    console.print(f"webhook {info.id} {info.name} deleted")


@webhook_app.command("events")
def webhook_events(
    alias: Annotated[str, typer.Option(help="account alias")],
    after: Annotated[int, typer.Option(help="the sequence of the last event seen")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    kind: Annotated[list[str] | None, typer.Option(help="only these kinds (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document per line")] = False,
) -> None:
    """The account's event history (the audit trail), oldest first."""
    from orchestrator.domain import webhooks

    for event in _call(lambda service: service.events(alias, after, limit, kind or ())):
        if as_json:
            print(json.dumps(webhooks.envelope(event), sort_keys=True))
        else:
            who = f" by {event.actor}" if event.actor else ""
            about = f" {event.execution_id}" if event.execution_id else ""
            console.print(f"{event.sequence:>8} {event.created_at:%Y-%m-%d %H:%M:%S} {event.kind}{about}{who} "
                          f"{json.dumps(dict(event.payload), sort_keys=True)}", markup=False, highlight=False)
