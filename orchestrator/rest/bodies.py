"""Request bodies and answers of the REST API in the CLC v2 shapes (camelCase on /v2, as CLC spelled them),
and the functions that translate service values into them. The patch summary and detail answers are
`schemas.patching` models, as the original patching service spelled them (snake_case)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from orchestrator import auth, service
from orchestrator.rest import statuses
from schemas.patching import PackageRequest, QueuedServer

ALIAS_PATTERN = r"^[A-Za-z0-9]{2,4}$"
SERVER_PATTERN = r"^[A-Za-z]{2}[0-9][A-Za-z0-9]{3,10}[0-9]{2,}$"
GROUP_PATTERN = r"^[A-Za-z]{2}[0-9]-[0-9]{4,}$"
EXECUTION_PATTERN = r"^[A-Za-z]{2}[0-9]-[0-9]{6}$"
STATUS_PATTERN = r"^[A-Za-z]{2}[0-9]-[0-9]{1,12}$"

MAX_SERVERS = 1000
MAX_GROUPS = 100


def _plain_text(value: str) -> str:
    """Refuse what no database column or JSON answer should carry: NUL and unpaired surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


PlainText = Annotated[str, AfterValidator(_plain_text)]
ServerName = Annotated[PlainText, StringConstraints(min_length=1, max_length=64)]
GroupId = Annotated[str, StringConstraints(pattern=GROUP_PATTERN, max_length=32)]


class CamelModel(BaseModel):
    """CLC v2 field names: camelCase in JSON, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


class ErrorMessage(BaseModel):
    """Every error answer: a message for people (CLC's shape)."""

    message: str


# --- requests --------------------------------------------------------------------------------


class LoginRequest(BaseModel):
    """`POST /v2/authentication/login`."""

    username: str = Field(min_length=1, max_length=200, examples=["jane"])
    password: str = Field(min_length=1, max_length=auth.MAX_PASSWORD, examples=["correct horse battery"])


class ExecutePackageRequest(BaseModel):
    """`POST /v2/operations/{alias}/servers/executePackage`: the seed article's body."""

    servers: list[ServerName] = Field(min_length=1, max_length=MAX_SERVERS, examples=[["VA1OSDPATCH33"]])
    package: PackageRequest


class GroupExecuteRequest(BaseModel):
    """`POST /v2/operations/{alias}/groups/executePackage`: groups (nested ones included) and the package."""

    groups: list[GroupId] = Field(min_length=1, max_length=MAX_GROUPS, examples=[["va1-0001"]])
    package: PackageRequest


class CancelRequest(BaseModel):
    """`POST …/patch/{execution_id}/cancel`: why (optional); who is the token's user."""

    reason: PlainText | None = Field(default=None, max_length=2000, examples=["change freeze"])


# --- answers ---------------------------------------------------------------------------------


class LoginAnswer(CamelModel):
    """CLC's login answer."""

    user_name: str
    account_alias: str
    location_alias: str
    roles: list[str]
    bearer_token: str


class Link(BaseModel):
    """A CLC link: relation, address and (for resources) id."""

    rel: str
    href: str
    id: str | None = Field(default=None, exclude_if=lambda value: value is None)


class QueuedAnswer(CamelModel):
    """One server of an executePackage answer: queued with a status link (and our execution id), or why not."""

    server: str
    is_queued: bool
    links: list[Link] | None = None
    execution_id: str | None = Field(default=None, description="the patch execution (summary and detail calls)")
    error_message: str | None = None


class OperationStatus(BaseModel):
    """CLC's queue status answer."""

    status: statuses.QueueStatus


class ServerDetails(CamelModel):
    """The `details` of a CLC server, as far as patching knows them (the inventory's last view)."""

    in_maintenance_mode: bool
    power_state: str
    ip_addresses: list[dict[str, str]] = Field(default_factory=list)


class ServerAnswer(CamelModel):
    """CLC's `GET /v2/servers/{alias}/{serverId}` answer, enough to discover what to patch."""

    id: str
    name: str
    group_id: str | None
    location_id: str
    os_type: str
    status: Literal["active"] = "active"
    details: ServerDetails
    links: list[Link]


class GroupAnswer(CamelModel):
    """CLC's `GET /v2/groups/{alias}/{groupId}` answer: nested groups in full, a `server` link per server."""

    id: str
    name: str
    location_id: str
    type: Literal["default"] = "default"
    status: Literal["active"] = "active"
    servers_count: int
    groups: list[GroupAnswer]
    links: list[Link]


# --- translations ----------------------------------------------------------------------------


def status_href(alias: str, status_id: str) -> str:
    """Where the CLC status of a queued operation is read."""
    return f"/v2/operations/{alias.lower()}/status/{status_id}"


def server_href(alias: str, name: str) -> str:
    return f"/v2/servers/{alias.lower()}/{name}"


def group_href(alias: str, group_id: str) -> str:
    return f"/v2/groups/{alias.lower()}/{group_id}"


def summary_href(alias: str, name: str) -> str:
    return f"/rest/servers/{alias.lower()}/server/{name}/patch"


def queued_answer(alias: str, answer: QueuedServer) -> QueuedAnswer:
    """The CLC entry for one server of an executePackage call."""
    if not answer.is_queued or answer.execution_id is None:
        return QueuedAnswer(server=answer.server, is_queued=False, error_message=answer.error_message)
    status_id = statuses.status_id_of(answer.execution_id)
    return QueuedAnswer(
        server=answer.server,
        is_queued=True,
        links=[Link(rel="status", href=status_href(alias, status_id), id=status_id)],
        execution_id=answer.execution_id,
    )


def server_answer(info: service.ServerInfo) -> ServerAnswer:
    """The CLC server shape; links to its group, its patch summary and the execution patching it now."""
    alias = info.account_alias
    links = [Link(rel="self", href=server_href(alias, info.name), id=info.name)]
    if info.group_id is not None:
        links.append(Link(rel="group", href=group_href(alias, info.group_id), id=info.group_id))
    links.append(Link(rel="patchSummary", href=summary_href(alias, info.name)))
    if info.active_execution_id is not None:
        links.append(
            Link(rel="patchExecution", href=f"{summary_href(alias, info.name)}/{info.active_execution_id}",
                 id=info.active_execution_id)
        )
    return ServerAnswer(
        id=info.name,
        name=info.name,
        group_id=info.group_id,
        location_id=info.datacenter,
        os_type=info.os_type,
        details=ServerDetails(in_maintenance_mode=info.in_maintenance, power_state=info.power_state),
        links=links,
    )


def group_answer(alias: str, info: service.GroupInfo) -> GroupAnswer:
    """The CLC group shape, nested groups in full."""
    links = [Link(rel="self", href=group_href(alias, info.id), id=info.id)]
    if info.parent_id is not None:
        links.append(Link(rel="parentGroup", href=group_href(alias, info.parent_id), id=info.parent_id))
    links.extend(Link(rel="server", href=server_href(alias, name), id=name) for name in info.servers)
    return GroupAnswer(
        id=info.id,
        name=info.name,
        location_id=info.datacenter,
        servers_count=len(info.servers),
        groups=[group_answer(alias, child) for child in info.groups],
        links=links,
    )
