"""The Get Server and Get Group answers with every field CLC API v2 documents (docs/API.md §5 and §6 list them
against the CLC documentation), so that CLC clients and scripts read them unchanged: the python SDK
(`clc.v2.Group`, `clc.v2.Server`) parses `changeInfo.createdDate` with `%Y-%m-%dT%H:%M:%SZ` and reads
`details.memoryMB`; other clients walk `links` by `rel`.

Values are honest or documented as empty: what patchaas does not know about a server (its vCPUs, memory, disks,
IP addresses, alert policies, snapshots, custom fields) is 0 or an empty list, never invented. Links to the
control plane's own resources (billing, statistics, scheduled activities, credentials, …) carry CLC's hrefs so
clients find them where they look, but patchaas does not serve them (404); `verbs` is given only on the links
patchaas serves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from orchestrator.entrypoints.rest.bodies import CamelModel, Link, group_href, server_href, summary_href
from orchestrator.services import inventory

PATCHAAS = "patchaas"  # changeInfo.createdBy/modifiedBy when no person is known


def zulu(value: datetime | None) -> str:
    """CLC's time format, to the second (what CLC's python SDK parses): 2014-05-16T23:49:25Z."""
    if value is None:
        value = datetime(1970, 1, 1, tzinfo=UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return f"{value.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


class ClcLink(Link):
    """A CLC link; `verbs` only where patchaas serves the resource."""

    verbs: list[str] | None = Field(default=None, exclude_if=lambda value: value is None)


class ChangeInfo(CamelModel):
    """Who created and last changed the resource, and when."""

    created_date: str = Field(description="when patchaas first knew the account (a lower bound), CLC's format")
    created_by: str
    modified_date: str = Field(description="servers: the last time a patch run changed it; groups: createdDate")
    modified_by: str


class CustomField(CamelModel):
    id: str
    name: str
    value: str
    display_value: str


class ServerDetails(CamelModel):
    """The `details` of a CLC server: the inventory's view of maintenance mode and power; what patchaas does not
    know (sizes, disks, addresses, policies, snapshots) is 0 or empty."""

    ip_addresses: list[dict[str, str]] = Field(default_factory=list)
    alert_policies: list[dict[str, Any]] = Field(default_factory=list)
    cpu: int = 0
    disk_count: int = 0
    host_name: str
    in_maintenance_mode: bool
    memory_mb: int = Field(default=0, alias="memoryMB")
    power_state: str
    storage_gb: int = Field(default=0, alias="storageGB")
    disks: list[dict[str, Any]] = Field(default_factory=list)
    partitions: list[dict[str, Any]] = Field(default_factory=list)
    snapshots: list[dict[str, Any]] = Field(default_factory=list)
    custom_fields: list[CustomField] = Field(default_factory=list)


class ServerAnswer(CamelModel):
    """CLC's `GET /v2/servers/{alias}/{serverId}` answer."""

    id: str
    name: str
    description: str = ""
    group_id: str | None
    is_template: bool = False
    location_id: str
    os_type: str
    status: Literal["active"] = "active"
    details: ServerDetails
    type: Literal["standard"] = "standard"
    storage_type: Literal["standard"] = "standard"
    change_info: ChangeInfo
    links: list[ClcLink]


class GroupAnswer(CamelModel):
    """CLC's `GET /v2/groups/{alias}/{groupId}` answer: nested groups in full, a `server` link per server."""

    id: str
    name: str
    description: str = ""
    location_id: str
    type: Literal["default"] = "default"
    status: Literal["active"] = "active"
    servers_count: int = Field(description="servers directly in the group, as CLC counted them")
    groups: list[GroupAnswer]
    links: list[ClcLink]
    change_info: ChangeInfo
    custom_fields: list[CustomField] = Field(default_factory=list)


def server_answer(info: inventory.ServerInfo) -> ServerAnswer:
    """The CLC server shape; links to its group, its patch summary and the execution patching it now, and
    CLC's links to the control plane's resources of the server."""
    alias = info.account_alias
    self_href = server_href(alias, info.name)
    links = [ClcLink(rel="self", href=self_href, id=info.name, verbs=["GET"])]
    if info.group_id is not None:
        links.append(ClcLink(rel="group", href=group_href(alias, info.group_id), id=info.group_id))
    links.append(ClcLink(rel="account", href=f"/v2/accounts/{alias.lower()}", id=alias.lower()))
    links.append(ClcLink(rel="billing", href=f"/v2/billing/{alias.lower()}/estimate-server/{info.name}"))
    links += [ClcLink(rel=rel, href=f"{self_href}/{path}") for rel, path in (
        ("statistics", "statistics"), ("scheduledActivities", "scheduledActivities"),
        ("publicIPAddresses", "publicIPAddresses"), ("alertPolicyMappings", "alertPolicies"),
        ("antiAffinityPolicyMapping", "antiAffinityPolicy"), ("cpuAutoscalePolicyMapping", "cpuAutoscalePolicy"),
        ("capabilities", "capabilities"), ("credentials", "credentials"))]
    links.append(ClcLink(rel="patchSummary", href=summary_href(alias, info.name), verbs=["GET"]))
    if info.active_execution_id is not None:
        links.append(ClcLink(rel="patchExecution", href=f"{summary_href(alias, info.name)}/{info.active_execution_id}",
                             id=info.active_execution_id, verbs=["GET"]))
    created = zulu(info.registered_at)
    return ServerAnswer(
        id=info.name, name=info.name, group_id=info.group_id, location_id=info.datacenter, os_type=info.os_type,
        details=ServerDetails(host_name=info.name, in_maintenance_mode=info.in_maintenance,
                              power_state=info.power_state),
        change_info=ChangeInfo(created_date=created, created_by=PATCHAAS,
                               modified_date=zulu(info.last_run_at) if info.last_run_at else created,
                               modified_by=info.last_run_by or PATCHAAS),
        links=links,
    )


def group_answer(alias: str, info: inventory.GroupInfo) -> GroupAnswer:
    """The CLC group shape, nested groups in full."""
    self_href = group_href(alias, info.id)
    links = [
        ClcLink(rel="createGroup", href=f"/v2/groups/{alias.lower()}"),
        ClcLink(rel="createServer", href=f"/v2/servers/{alias.lower()}"),
        ClcLink(rel="self", href=self_href, id=info.id, verbs=["GET"]),
    ]
    if info.parent_id is not None:
        links.append(ClcLink(rel="parentGroup", href=group_href(alias, info.parent_id), id=info.parent_id))
    links += [ClcLink(rel=rel, href=f"{self_href}/{path}") for rel, path in (
        ("defaults", "defaults"), ("billing", "billing"), ("archiveGroupAction", "archive"),
        ("statistics", "statistics"), ("upcomingScheduledActivities", "upcomingScheduledActivities"),
        ("horizontalAutoscalePolicyMapping", "horizontalAutoscalePolicy"),
        ("scheduledActivities", "scheduledActivities"))]
    links.extend(ClcLink(rel="server", href=server_href(alias, name), id=name) for name in info.servers)
    created = zulu(info.registered_at)
    return GroupAnswer(
        id=info.id, name=info.name, location_id=info.datacenter, servers_count=len(info.servers),
        groups=[group_answer(alias, child) for child in info.groups], links=links,
        change_info=ChangeInfo(created_date=created, created_by=PATCHAAS, modified_date=created,
                               modified_by=PATCHAAS),
    )
