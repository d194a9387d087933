"""`patchaas`: the demo, the worker and beat of a deployment, migrations, and operator commands.

Commands only translate: they parse arguments, call the service, print. Refusals print a message and
exit non-zero (2 for bad input, 1 for refusals), never a stack trace.

This module is the root app and its table of contents: the commands live in one module per group
(runtime, patching, windows, users, simulator, ssh_hosts, webhooks, hooks; what they share is in common) and are
registered here, in the order `patchaas --help` lists them.
"""

from __future__ import annotations

import typer

from orchestrator.entrypoints.cli import hooks, patching, runtime, simulator, webhooks
from orchestrator.entrypoints.cli.ssh_hosts import ssh_host_app
from orchestrator.entrypoints.cli.users import account_app, user_app
from orchestrator.entrypoints.cli.windows import window_app

app = typer.Typer(help="Patching-as-a-Service: durable multi-reboot patching of a server fleet.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

app.command("demo")(simulator.demo)
app.command("worker")(runtime.worker)
app.command("beat")(runtime.beat)
app.command("status")(runtime.status)
app.command("execute")(patching.execute)
app.command("history")(patching.history)
app.command("detail")(patching.detail)
app.command("cancel")(patching.cancel)
app.command("compliance")(patching.compliance_cmd)
app.command("api")(runtime.api)
app.command("simulator")(simulator.simulator)
app.command("flower")(runtime.flower)

app.add_typer(runtime.db_app, name="db")
app.add_typer(simulator.sim_app, name="sim")
app.add_typer(ssh_host_app, name="ssh-host")
app.add_typer(window_app, name="window")
app.add_typer(account_app, name="account")
app.add_typer(user_app, name="user")
app.add_typer(webhooks.webhook_app, name="webhook")
app.add_typer(hooks.hook_app, name="hook")


def main() -> None:
    """Console-script entry point."""
    app()
