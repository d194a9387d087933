"""What every `patchaas` command module shares: the consoles, the clean refusal (`fail`), the plain
database-trouble message, and the connection to the Python API.

Nothing here imports another CLI module, so every command module may import this one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console

T = TypeVar("T")
S = TypeVar("S")

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


def with_keyed_service(build: Callable[..., S], action: Callable[[S], T]) -> T:
    """Run `action` on the service `build(sessions, clock, keys)` makes over PATCHAAS_DATABASE_URL (keys: the
    PATCHAAS_WEBHOOK_KEY that seals secrets); refusals, bad names and database trouble exit cleanly."""
    import sqlalchemy as sa

    from orchestrator.domain import naming
    from orchestrator.persistence import db
    from orchestrator.services.errors import ServiceError
    from orchestrator.settings import Settings

    settings = Settings()
    sql = db.create_engine_for(settings.database_url)
    keys = settings.webhook_key.get_secret_value() if settings.webhook_key else None
    try:
        return action(build(db.session_factory(sql), db.utcnow, keys))
    except ServiceError as exc:
        raise fail(exc.message, 2 if exc.status == 400 else 1) from None
    except naming.NamingError as exc:
        raise fail(str(exc), 2) from None
    except sa.exc.SQLAlchemyError as exc:
        raise database_problem(exc, settings.database_url) from None
    finally:
        sql.dispose()
