"""`patchaas ssh-host add|list|show|remove`: operators register how the `ssh` fleet driver reaches their Linux
servers (orchestrator/services/ssh_hosts.py). Over PATCHAAS_DATABASE_URL; bad input exits 2, refusals 1, with a
message and never a stack trace. A private key given as --key is refused and never printed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")

ssh_host_app = typer.Typer(help="Linux servers' SSH connection details (the ssh fleet driver).", no_args_is_help=True)
console = Console(width=140)
err = Console(stderr=True)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def _call(action: Callable[[Session], T], write: bool = False) -> T:
    import sqlalchemy as sa

    from orchestrator.persistence import db
    from orchestrator.services import ssh_hosts

    settings = Settings()
    engine = db.create_engine_for(settings.database_url)
    sessions = db.session_factory(engine)
    try:
        with (sessions.begin() if write else sessions()) as session:
            return action(session)
    except ssh_hosts.UnknownServer as exc:
        raise _fail(str(exc.args[0]), 1) from None
    except ssh_hosts.InMaintenance as exc:
        raise _fail(str(exc), 1) from None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    except sa.exc.SQLAlchemyError as exc:
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _fail(f"database {settings.database_url}: {first} (is it up, and migrated with "
                    "`patchaas db upgrade`?)", 1) from None
    finally:
        engine.dispose()


def _describe(info: object) -> str:
    from orchestrator.services.ssh_hosts import SshHostInfo

    assert isinstance(info, SshHostInfo)
    pinned = f", host key {info.host_key_fingerprint}" if info.host_key_fingerprint else ""
    return (f"{info.server}: {info.username}@{info.host}:{info.port} ({info.package_manager}), key "
            f"{info.key_ref}{pinned}")


@ssh_host_app.command("add")
def add(
    server: Annotated[str, typer.Argument(help="the server's name (a Linux server of the account)")],
    alias: Annotated[str, typer.Option(help="account alias")],
    host: Annotated[str, typer.Option(help="DNS name or IP address the workers connect to")],
    key: Annotated[str, typer.Option(help="private key reference: a path on the workers, a file name in "
                                          "PATCHAAS_SSH_KEY_DIR, or agent:SHA256:<fingerprint> (never the key)")],
    package_manager: Annotated[str, typer.Option("--package-manager", "--pm", help="apt, dnf or yum")],
    port: Annotated[int, typer.Option(help="SSH port")] = 22,
    user: Annotated[str, typer.Option(help="root, or a user with passwordless sudo")] = "root",
    host_key: Annotated[str | None, typer.Option(help="pin the host's key: a public key, a known_hosts line or "
                                                      "SHA256:<fingerprint>")] = None,
) -> None:
    """Register (or replace) a Linux server's SSH connection details."""
    from orchestrator.persistence import db
    from orchestrator.services import ssh_hosts

    spec = _call(lambda _: ssh_hosts.spec_from({
        "server": server, "host": host, "port": port, "username": user, "key_ref": key,
        "package_manager": package_manager, "host_key": host_key,
    }))
    info, created = _call(lambda session: ssh_hosts.add(session, alias, spec, db.utcnow()), write=True)
    console.print(f"{'registered' if created else 'replaced'} {_describe(info)}", markup=False, highlight=False)


@ssh_host_app.command("list")
def list_(alias: Annotated[str, typer.Option(help="account alias")]) -> None:
    """The account's registered SSH hosts."""
    from orchestrator.services import ssh_hosts

    hosts = _call(lambda session: ssh_hosts.list_hosts(session, alias))
    table = Table("server", "address", "user", "package manager", "key reference", "host key", "maintenance")
    for h in hosts:
        table.add_row(h.server, f"{h.host}:{h.port}", h.username, h.package_manager, h.key_ref,
                      h.host_key_fingerprint or "(known_hosts)", "yes" if h.in_maintenance else "no")
    console.print(table)


@ssh_host_app.command("show")
def show(server: Annotated[str, typer.Argument()], alias: Annotated[str, typer.Option(help="account alias")]) -> None:
    """One server's SSH details."""
    from orchestrator.services import ssh_hosts

    console.print(_describe(_call(lambda session: ssh_hosts.get(session, alias, server))), markup=False,
                  highlight=False)


@ssh_host_app.command("remove")
def remove(server: Annotated[str, typer.Argument()], alias: Annotated[str, typer.Option(help="account alias")]) -> None:
    """Forget a server's SSH details (refused while it is in maintenance)."""
    from orchestrator.services import ssh_hosts

    info = _call(lambda session: ssh_hosts.remove(session, alias, server), write=True)
    console.print(f"removed {info.server}'s SSH details", markup=False, highlight=False)
