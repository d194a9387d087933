"""CLC naming rules: datacenters, account aliases, server names, group ids, execution ids."""

from __future__ import annotations

import re
import secrets

DATACENTERS: frozenset[str] = frozenset(
    {"WA1", "UC1", "UT1", "IL1", "NY1", "VA1", "VA2", "GB1", "GB3", "CA1", "CA2", "CA3", "DE1", "SG1"}
)

ALIAS_RE = re.compile(r"^[A-Za-z0-9]{2,4}$")
DATACENTER_RE = re.compile(r"^[A-Za-z]{2}\d$")
CUSTOM_NAME_RE = re.compile(r"^[A-Za-z0-9]{1,6}$")
SERVER_NAME_RE = re.compile(r"^[A-Za-z]{2}\d[A-Za-z0-9]{3,10}\d{2,}$")
GROUP_ID_RE = re.compile(r"^[a-z]{2}\d-\d{4,}$")
EXECUTION_ID_RE = re.compile(r"^[A-Z]{2}\d-\d{6}$")
STATUS_ID_RE = re.compile(r"^[a-z]{2}\d-\d{1,12}$")


class NamingError(ValueError):
    """A name or id that does not follow the CLC rules; the message says which rule."""


def check_alias(alias: str) -> str:
    """An account alias: 2–4 letters or digits, stored upper-case."""
    if not ALIAS_RE.match(alias):
        raise NamingError(f"account alias {alias!r} must be 2 to 4 letters or digits")
    return alias.upper()


def check_datacenter(code: str) -> str:
    """A known CLC datacenter code, upper-case."""
    upper = code.upper()
    if upper not in DATACENTERS:
        raise NamingError(f"unknown datacenter {code!r}; known: {', '.join(sorted(DATACENTERS))}")
    return upper


def server_name(datacenter: str, alias: str, custom: str, number: int) -> str:
    """datacenter + alias + custom name + incrementor: VA1 + OSD + PATCH + 33 → VA1OSDPATCH33."""
    if not CUSTOM_NAME_RE.match(custom):
        raise NamingError(f"custom name {custom!r} must be 1 to 6 letters or digits")
    if number < 1:
        raise NamingError("the incrementor starts at 01")
    return f"{check_datacenter(datacenter)}{check_alias(alias)}{custom.upper()}{number:02d}"


def check_server_name(name: str, alias: str | None = None) -> str:
    """A server name following the CLC rule (and, given an alias, belonging to that account)."""
    upper = name.upper()
    if not SERVER_NAME_RE.match(upper) or upper[:3] not in DATACENTERS:
        raise NamingError(
            f"server name {name!r} must be a datacenter code, the account alias, a custom name and a "
            "two-digit number, like VA1OSDPATCH33"
        )
    if alias is not None and not upper[3:].startswith(alias.upper()):
        raise NamingError(f"server name {name!r} does not carry the account alias {alias.upper()}")
    return upper


def datacenter_of(server: str) -> str:
    """The datacenter code a server name starts with."""
    return server[:3].upper()


def check_group_id(group_id: str) -> str:
    """A group id: lower-case datacenter code, dash, number (va1-0001)."""
    lower = group_id.lower()
    if not GROUP_ID_RE.match(lower):
        raise NamingError(f"group id {group_id!r} must look like va1-0001")
    return lower


def group_id(datacenter: str, number: int) -> str:
    """The id of the `number`th group of a datacenter."""
    return f"{check_datacenter(datacenter).lower()}-{number:04d}"


def check_execution_id(execution_id: str) -> str:
    """An execution id: datacenter code, dash, six digits (VA1-132457)."""
    upper = execution_id.upper()
    if not EXECUTION_ID_RE.match(upper):
        raise NamingError(f"execution id {execution_id!r} must look like VA1-132457 (aa#-######)")
    return upper


def new_execution_id(datacenter: str) -> str:
    """A fresh random execution id for a server of `datacenter`; uniqueness is the database's job."""
    return f"{check_datacenter(datacenter)}-{secrets.randbelow(900000) + 100000:06d}"
