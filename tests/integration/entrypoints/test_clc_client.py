"""CenturyLink's own python SDK (clc-sdk, `clc.v2`), pointed at `patchaas api` over real HTTP, reads the
answers the CLC contract defines exactly as it read CLC's: it logs in, loads a group (its `changeInfo` dates
parsed with CLC's format, its subgroups, its servers through the `server` links), loads each server (details,
changeInfo, memory) and executes the package through `ExecutePackage`, whose answer it turns into queue requests
with their status ids. Then every documented field of Get Group and Get Server is there."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from simulation import clc_server
from tests.integration.entrypoints.test_rest_api import PASSWORD, World, server, world  # noqa: F401

GROUP_FIELDS = {"id", "name", "description", "locationId", "type", "status", "serversCount", "groups", "links",
                "changeInfo", "customFields"}
SERVER_FIELDS = {"id", "name", "description", "groupId", "isTemplate", "locationId", "osType", "status", "details",
                 "type", "storageType", "changeInfo", "links"}
DETAILS_FIELDS = {"ipAddresses", "alertPolicies", "cpu", "diskCount", "hostName", "inMaintenanceMode", "memoryMB",
                  "powerState", "storageGB", "disks", "partitions", "snapshots", "customFields"}
CHANGE_FIELDS = {"createdDate", "createdBy", "modifiedDate", "modifiedBy"}
GROUP_RELS = {"createGroup", "createServer", "self", "parentGroup", "defaults", "billing", "archiveGroupAction",
              "statistics", "upcomingScheduledActivities", "horizontalAutoscalePolicyMapping", "scheduledActivities",
              "server"}


@pytest.fixture
def sdk(world: World) -> Iterator[Any]:  # noqa: F811
    import clc

    saved = (clc.defaults.ENDPOINT_URL_V2, clc._LOGIN_TOKEN_V2, clc.ALIAS, clc.LOCATION)
    with clc_server.running(world.client.app) as url:
        clc.defaults.ENDPOINT_URL_V2 = url
        clc._LOGIN_TOKEN_V2 = None
        clc.v2.SetCredentials("jane", PASSWORD)
        try:
            yield clc
        finally:
            clc.defaults.ENDPOINT_URL_V2, clc._LOGIN_TOKEN_V2, clc.ALIAS, clc.LOCATION = saved
            clc.v2.SetCredentials(None, None)


def test_the_clc_python_sdk_loads_groups_and_servers(world: World, sdk: Any) -> None:  # noqa: F811
    group = sdk.v2.Group(id="va1-0001")  # logs in first: alias and location from the login answer
    assert sdk.ALIAS == "OSD" and sdk.LOCATION == "VA1"
    assert group.name == "group va1-0001" and group.servers_count == 2 and group.description == ""
    assert isinstance(group.created_date, int) and group.created_by == "patchaas"  # changeInfo, parsed by the SDK
    assert [g.id for g in group.Subgroups().groups] == ["va1-0002"]
    servers = group.Servers().Servers()
    assert [s.id for s in servers] == [server(1), server(2)]
    first = servers[0]
    assert first.power_state == "started" and first.in_maintenance_mode is False and first.memory == 0
    assert first.group_id == "va1-0001" and first.os_type.startswith("Windows") and first.location_id == "VA1"
    assert isinstance(first.modified_date, int) and first.Group().name == "group va1-0001"
    requests = first.ExecutePackage(package_id="94bd395f-9b54-4693-94ae-4f3aa93fc239", parameters={})
    (queued,) = requests.requests
    assert queued.id.startswith("va1-")
    detail = world.container.service.detail("OSD", server(1), queued.id.upper())
    assert detail.status == "pending"
    again = sdk.v2.Server(server(1))  # a run changed the server: modifiedBy says who asked for it
    assert again.modified_by == "jane" and again.modified_date == int(world.clock.now.timestamp())


def test_get_group_and_get_server_carry_every_documented_field(world: World) -> None:  # noqa: F811
    headers = world.login()
    group = world.client.get("/v2/groups/osd/va1-0001", headers=headers).json()
    assert set(group) == GROUP_FIELDS and set(group["changeInfo"]) == CHANGE_FIELDS
    child = group["groups"][0]
    assert set(child) == GROUP_FIELDS and child["groups"][0]["id"] == "va1-0003"  # recursively
    assert GROUP_RELS == {link["rel"] for link in child["links"]}
    assert GROUP_RELS - {"parentGroup"} == {link["rel"] for link in group["links"]}  # a root group has no parent
    assert group["changeInfo"]["createdDate"].endswith("Z") and len(group["changeInfo"]["createdDate"]) == 20
    body = world.client.get(f"/v2/servers/osd/{server(1)}", headers=headers).json()
    assert set(body) == SERVER_FIELDS and set(body["details"]) == DETAILS_FIELDS
    assert set(body["changeInfo"]) == CHANGE_FIELDS and body["isTemplate"] is False
    assert body["type"] == body["storageType"] == "standard" and body["details"]["hostName"] == server(1)
    assert {"self", "group", "account", "billing", "statistics", "scheduledActivities", "publicIPAddresses",
            "alertPolicyMappings", "antiAffinityPolicyMapping", "cpuAutoscalePolicyMapping", "capabilities",
            "credentials", "patchSummary"} == {link["rel"] for link in body["links"]}
    served = {link["rel"] for link in body["links"] if "verbs" in link}
    assert served == {"self", "patchSummary"}  # verbs only where patchaas serves the resource (and patchExecution)
