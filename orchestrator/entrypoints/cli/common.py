"""What every `patchaas` command module shares: the consoles, the clean refusal (`fail`), the plain
database-trouble message, and the connection to the Python API.

Nothing here imports another CLI module, so every command module may import this one.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; return the exit to raise (2 for bad input, 1 for refusals)."""
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def database_problem(exc: Exception, url: str) -> typer.Exit:
    """The exit for a database that is down, unreachable or not migrated: its first line, and what to try."""
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0:1] or [type(exc).__name__]
    return fail(f"database {url}: {first[0]} (is it up, and migrated with `patchaas db upgrade`?)")


def connect_patching() -> object:
    """The Python API over the settings' database and broker (typed `object` to keep its import lazy)."""
    from orchestrator.entrypoints.api import Patchaas

    return Patchaas.connect()
