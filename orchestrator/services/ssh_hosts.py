"""Operators' registration of SSH hosts: how the `ssh` fleet driver reaches a Linux server (the `ssh_hosts`
table). Shared by the CLI (`patchaas ssh-host …`, orchestrator/entrypoints/cli/ssh_hosts.py) and the REST API
(`/v2/patchaas/{alias}/ssh-hosts`, orchestrator/entrypoints/rest/ssh_hosts.py).

What is stored is a *reference* to a private key, never the key:
- an absolute path on the worker machines (`/etc/patchaas/keys/web.key`),
- a file name resolved in PATCHAAS_SSH_KEY_DIR (`web.key`, `prod/web.key`; never leaving that directory), or
- an ssh-agent reference, `agent:SHA256:<fingerprint>`: the key with that fingerprint in the worker's agent
  (SSH_AUTH_SOCK).
Anything that looks like key material (a PEM/OpenSSH block, a public key line, a long base64 blob) is refused
with a message that says so, and the value is not echoed back.

The host's key is pinned per host, optionally: `host_key` takes a public key (`ssh-ed25519 AAAA…`), a
known_hosts line (`[10.0.0.5]:22 ssh-ed25519 AAAA…`) or a fingerprint (`SHA256:…`); the SHA256 fingerprint is
stored (migration 0007) and the driver refuses a server presenting any other key. PATCHAAS_SSH_KNOWN_HOSTS
keeps working beside it: a host is pinned by either, and must agree with both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session

from orchestrator.domain import packages
from orchestrator.persistence import models

SERVER_RE = re.compile(r"^[A-Za-z0-9-]{1,32}$")
HOST_RE = re.compile(r"^(?!-)[A-Za-z0-9.:_-]{1,255}$")  # a DNS name, IPv4 or IPv6; never an ssh option
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
AGENT_PREFIX = "agent:"
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
_PATH_RE = re.compile(r"^[A-Za-z0-9._@+/-]{1,500}$")
# base64 as key material is written: a run of 40 characters without a dot, dash or slash is no file name
_BLOB_RE = re.compile(r"[A-Za-z0-9+=]{40,}|^/?(b3BlbnNzaC1rZXktdjE|MII|AAAA[BCE])")
PACKAGE_MANAGERS = ("apt", "dnf", "yum")


class KeyMaterialRefused(ValueError):
    """A key reference that is (or contains) key material: never stored, never echoed."""


def check_key_ref(value: str) -> str:
    """A key reference as stored, or ValueError saying what is wrong with it (without echoing a key)."""
    ref = value.strip()
    if ref.startswith(AGENT_PREFIX):  # first: a fingerprint is 43 base64 characters, no key
        if not FINGERPRINT_RE.match(ref[len(AGENT_PREFIX):]):
            raise ValueError("an agent key reference is agent:SHA256:<43 base64 characters> "
                             "(ssh-add -l -E sha256 shows them)")
        return ref
    if ("PRIVATE KEY" in ref or "-----BEGIN" in ref or "\n" in ref or "\r" in ref
            or any(ref.startswith(t + " ") for t in _KEY_TYPES) or _BLOB_RE.search(ref)):
        raise KeyMaterialRefused(
            "key_ref must name a key (a path on the workers, a file name in PATCHAAS_SSH_KEY_DIR, or "
            "agent:SHA256:<fingerprint>), never contain one: refused, and not stored"
        )
    if not ref or not _PATH_RE.match(ref):
        raise ValueError("key_ref must be an absolute path or a file name in PATCHAAS_SSH_KEY_DIR "
                         "(letters, digits and ._@+/- only)")
    parts = ref.split("/")
    if ".." in parts or "." in parts or "" in parts[1:]:
        raise ValueError("key_ref must not contain '.' or '..' segments or empty ones")
    if not ref.startswith("/") and ref.startswith("."):
        raise ValueError("a relative key_ref is a file name in PATCHAAS_SSH_KEY_DIR and cannot start with '.'")
    return ref


def fingerprint_of(value: str) -> str:
    """The SHA256 fingerprint of a host key given as a fingerprint, a public key or a known_hosts line."""
    text = value.strip()
    if FINGERPRINT_RE.match(text):
        return text
    if "PRIVATE KEY" in text or "-----BEGIN" in text:
        raise KeyMaterialRefused("host_key takes the host's public key or its fingerprint, never a private key")
    tokens = text.split()
    for i, token in enumerate(tokens[:-1]):
        if token in _KEY_TYPES:
            try:
                blob = base64.b64decode(tokens[i + 1], validate=True)
            except (binascii.Error, ValueError):
                break
            if len(blob) < 20 or not blob[4:].startswith(token.encode()):
                break
            return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    raise ValueError("host_key must be SHA256:<fingerprint>, a public key (ssh-ed25519 AAAA…) or a known_hosts "
                     "line ([host]:port ssh-ed25519 AAAA…)")


class SshHostSpec(BaseModel):
    """One server's SSH connection details, as an operator gives them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    server: str = Field(description="the server's name (in the account's inventory, a Linux OS type)")
    host: str = Field(description="DNS name or IP address the workers connect to")
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(default="root", description="root, or a user with passwordless sudo")
    key_ref: str = Field(alias="keyRef", description="a path, a file name in PATCHAAS_SSH_KEY_DIR, or "
                                                     "agent:SHA256:<fingerprint>; never the key")
    package_manager: Literal["apt", "dnf", "yum"] = Field(alias="packageManager")
    host_key: str | None = Field(default=None, alias="hostKey",
                                 description="the host's public key, known_hosts line or SHA256 fingerprint")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        if not SERVER_RE.match(value):
            raise ValueError("a server name is 1 to 32 letters, digits and dashes")
        return value.upper()

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not HOST_RE.match(value):
            raise ValueError("host must be a DNS name or an IP address")
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not USER_RE.match(value):
            raise ValueError("username must be a POSIX user name")
        return value

    @field_validator("key_ref")
    @classmethod
    def _key_ref(cls, value: str) -> str:
        return check_key_ref(value)

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else fingerprint_of(value)


def spec_from(data: dict[str, object]) -> SshHostSpec:
    """A validated spec, or ValueError with a readable message (a refused key is never quoted back)."""
    try:
        return SshHostSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors(include_input=False)
        )
        raise ValueError(f"invalid SSH host: {problems}") from None


class UnknownServer(LookupError):
    """No such server in the account's inventory."""


class InMaintenance(ValueError):
    """The server is in maintenance: a run is using its SSH details."""


@dataclass(frozen=True)
class SshHostInfo:
    """A registered host, as listed (the key reference is shown: it is a name, not a secret)."""

    server: str
    account_alias: str
    os_type: str
    host: str
    port: int
    username: str
    key_ref: str
    package_manager: str
    host_key_fingerprint: str | None
    in_maintenance: bool
    updated_at: datetime


def _info(row: models.SshHost, server: models.Server) -> SshHostInfo:
    return SshHostInfo(row.server_name, server.account_alias, server.os_type, row.host, row.port, row.username,
                       row.key_ref, row.package_manager, row.host_key_fingerprint, row.in_maintenance,
                       row.updated_at)


def _server(session: Session, alias: str, name: str) -> models.Server:
    server = session.get(models.Server, name.upper())
    if server is None or server.account_alias != alias.upper():
        raise UnknownServer(f"server {name.upper()} not found in account {alias.upper()}")
    return server


def add(session: Session, alias: str, spec: SshHostSpec, now: datetime) -> tuple[SshHostInfo, bool]:
    """Register (or replace) the server's SSH details; (the host, whether it is new). The server must be a
    Linux server of the account."""
    server = _server(session, alias, spec.server)
    if packages.os_family(server.os_type) != "linux":
        raise ValueError(f"{server.name} runs {server.os_type!r}, not Linux: it is not reached over SSH")
    row = session.get(models.SshHost, server.name)
    created = row is None
    if row is None:
        row = models.SshHost(server_name=server.name, in_maintenance=False, created_at=now)
        session.add(row)
    row.host, row.port, row.username, row.key_ref = spec.host, spec.port, spec.username, spec.key_ref
    row.package_manager, row.host_key_fingerprint, row.updated_at = spec.package_manager, spec.host_key, now
    session.flush()
    return _info(row, server), created


def list_hosts(session: Session, alias: str) -> list[SshHostInfo]:
    rows = session.execute(
        sa.select(models.SshHost, models.Server)
        .join(models.Server, models.Server.name == models.SshHost.server_name)
        .where(models.Server.account_alias == alias.upper())
        .order_by(models.SshHost.server_name)
    ).all()
    return [_info(row, server) for row, server in rows]


def get(session: Session, alias: str, name: str) -> SshHostInfo:
    server = _server(session, alias, name)
    row = session.get(models.SshHost, server.name)
    if row is None:
        raise UnknownServer(f"server {server.name} has no SSH host registered")
    return _info(row, server)


def remove(session: Session, alias: str, name: str) -> SshHostInfo:
    """Forget the server's SSH details (refused while the server is in maintenance: a run is using them)."""
    info = get(session, alias, name)
    if info.in_maintenance:
        raise InMaintenance(f"{info.server} is in maintenance (a run is using its SSH details); remove it afterwards")
    session.execute(sa.delete(models.SshHost).where(models.SshHost.server_name == info.server))
    return info
