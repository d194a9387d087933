"""`patchaas account create` and `patchaas user create|revoke-tokens`: the customer accounts and the users
of the REST API, over PATCHAAS_DATABASE_URL. Bad input exits 2, conflicts 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from orchestrator.entrypoints.cli.common import console, database_problem, fail
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.services.auth import AuthService

T = TypeVar("T")

account_app = typer.Typer(help="Customer accounts.", no_args_is_help=True)
user_app = typer.Typer(help="Users of the REST API.", no_args_is_help=True)


def _auth_call(action: Callable[[AuthService], T]) -> T:
    """Run `action` on an AuthService over PATCHAAS_DATABASE_URL; refusals and database trouble exit cleanly."""
    from datetime import timedelta

    import sqlalchemy as sa

    from orchestrator.persistence import db
    from orchestrator.services.auth import AuthService
    from orchestrator.services.errors import ServiceError

    settings = Settings()
    sql = db.create_engine_for(settings.database_url)
    try:
        service = AuthService(db.session_factory(sql), db.utcnow, timedelta(seconds=settings.token_ttl_seconds))
        return action(service)
    except ServiceError as exc:
        raise fail(exc.message, 1 if exc.status == 409 else 2) from None
    except sa.exc.SQLAlchemyError as exc:
        raise database_problem(exc, settings.database_url) from None
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
    from orchestrator.services.auth import ROLES

    if not role:
        raise fail(f"give at least one --role; known: {', '.join(sorted(ROLES))}", 2)
    if password is not None and password_stdin:
        raise fail("give --password or --password-stdin, not both", 2)
    if password_stdin:
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif password is None:
        if not sys.stdin.isatty():
            raise fail("give --password-stdin (or --password)", 2)
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise fail("the password is empty", 2)
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
