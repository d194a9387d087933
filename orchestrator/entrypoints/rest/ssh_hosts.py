"""SSH hosts registered by operators: how the `ssh` fleet driver reaches the account's Linux servers.

    PUT    /v2/patchaas/{alias}/ssh-hosts/{serverId}   register or replace (201 created, 200 replaced)
    GET    /v2/patchaas/{alias}/ssh-hosts              the account's registered hosts
    GET    /v2/patchaas/{alias}/ssh-hosts/{serverId}   one
    DELETE /v2/patchaas/{alias}/ssh-hosts/{serverId}   forget it (refused while the server is in maintenance)

Authenticated like every /v2 route (bearer token; writes need an operator). The body carries a key
*reference* (`keyRef`: a path, a file name in PATCHAAS_SSH_KEY_DIR, or `agent:SHA256:…`); a private key
pasted there is refused with 400 and never stored or echoed. See orchestrator/services/ssh_hosts.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.entrypoints.rest.bodies import SERVER_PATTERN
from orchestrator.entrypoints.rest.deps import READ, WRITE, Alias, Caller, Operator, error_response, own
from orchestrator.services import ssh_hosts
from orchestrator.services.errors import Conflict, NotFound, ServiceError

router = APIRouter(prefix="/v2/patchaas/{alias}/ssh-hosts", tags=["ssh hosts"])

ServerId = Annotated[
    str, Path(alias="serverId", pattern=SERVER_PATTERN, max_length=32, description="server name",
              examples=["VA1OSDDEB01"])
]


class SshHostBody(BaseModel):
    """A Linux server's SSH connection details (never a private key)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(max_length=255, description="DNS name or IP address the workers connect to",
                      examples=["10.0.4.21"])
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(default="root", max_length=32, description="root, or a user with passwordless sudo")
    keyRef: str = Field(max_length=500, description="a private key's path on the workers, a file name in "
                        "PATCHAAS_SSH_KEY_DIR, or agent:SHA256:<fingerprint>; never the key itself",
                        examples=["web.key"])
    packageManager: Literal["apt", "dnf", "yum"]
    hostKey: str | None = Field(default=None, max_length=16000, description="the host's public key, known_hosts "
                                "line or SHA256 fingerprint: pinned (optional beside PATCHAAS_SSH_KNOWN_HOSTS)")


class SshHostAnswer(BaseModel):
    server: str
    host: str
    port: int
    username: str
    keyRef: str
    packageManager: str
    hostKeyFingerprint: str | None
    inMaintenance: bool
    updatedAt: datetime


def _answer(info: ssh_hosts.SshHostInfo) -> SshHostAnswer:
    return SshHostAnswer(server=info.server, host=info.host, port=info.port, username=info.username,
                         keyRef=info.key_ref, packageManager=info.package_manager,
                         hostKeyFingerprint=info.host_key_fingerprint, inMaintenance=info.in_maintenance,
                         updatedAt=info.updated_at)


def _sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.container.sessions  # type: ignore[no-any-return]


CONFLICT = {409: error_response("the server is in maintenance: a run is using its SSH details")}


@router.put("/{serverId}", response_model=SshHostAnswer, responses={**WRITE, 201: {"model": SshHostAnswer}})
def put_ssh_host(alias: Alias, server_id: ServerId, body: SshHostBody, caller: Operator, request: Request,
                 response: Response) -> SshHostAnswer:
    """Register (201) or replace (200) how the workers reach a Linux server of the account over SSH."""
    scope = own(caller, alias, f"server {server_id} not found")
    try:
        spec = ssh_hosts.spec_from({"server": server_id, **body.model_dump(exclude_none=True)})
    except ValueError as exc:
        raise ServiceError(str(exc)) from None
    now = request.app.state.container.service.clock()
    try:
        with _sessions(request).begin() as session:
            info, created = ssh_hosts.add(session, scope, spec, now)
    except ssh_hosts.UnknownServer as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        raise ServiceError(str(exc)) from None
    response.status_code = 201 if created else 200
    return _answer(info)


@router.get("", response_model=list[SshHostAnswer], responses=READ)
def list_ssh_hosts(alias: Alias, caller: Caller, request: Request) -> list[SshHostAnswer]:
    """The account's Linux servers with SSH details."""
    scope = own(caller, alias, f"account {alias} not found")
    with _sessions(request)() as session:
        return [_answer(info) for info in ssh_hosts.list_hosts(session, scope)]


@router.get("/{serverId}", response_model=SshHostAnswer, responses=READ)
def get_ssh_host(alias: Alias, server_id: ServerId, caller: Caller, request: Request) -> SshHostAnswer:
    """One server's SSH details."""
    scope = own(caller, alias, f"server {server_id} not found")
    try:
        with _sessions(request)() as session:
            return _answer(ssh_hosts.get(session, scope, server_id))
    except ssh_hosts.UnknownServer as exc:
        raise NotFound(str(exc)) from None


@router.delete("/{serverId}", response_model=SshHostAnswer, responses={**WRITE, **CONFLICT})
def delete_ssh_host(alias: Alias, server_id: ServerId, caller: Operator, request: Request) -> SshHostAnswer:
    """Forget a server's SSH details (the server stays in the inventory)."""
    scope = own(caller, alias, f"server {server_id} not found")
    try:
        with _sessions(request).begin() as session:
            return _answer(ssh_hosts.remove(session, scope, server_id))
    except ssh_hosts.UnknownServer as exc:
        raise NotFound(str(exc)) from None
    except ssh_hosts.InMaintenance as exc:
        raise Conflict(str(exc)) from None
