"""How the simulated CLC API words and shapes its answers: CLC's messages, the JSON message body every error
has, the server document of GET /v2/servers/{alias}/{serverId}, and a package run's report as a control plane
that cannot see its outcome answers it."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi.responses import JSONResponse

from schemas.fleet import CycleReport, CycleState, ResultCode
from simulation.fleet import SimulatedFleet
from workers.fleet import clc_wire

CLC_BAD_CREDENTIALS = "We didn't recognize the username or password you entered. Please try again."
CLC_NOT_QUEUED = "The operation cannot be queued because the server cannot be found or it is not in a valid state."
UNAUTHORIZED = "Authorization has been denied for this request."  # ASP.NET Web API's default (unconfirmed)
SERVER_ERROR = "An error has occurred."  # ASP.NET Web API's default 500 body
_DATACENTER = re.compile(r"^([A-Za-z]{2}\d)")


def server_json(alias: str, fleet: SimulatedFleet, server: str) -> dict[str, Any]:
    """GET /v2/servers/{alias}/{serverId} in CLC's shape, plus our `patchaas` extension."""
    status = fleet.status(server.upper())
    settle = fleet.settled(server.upper())
    server_id = status.name.lower()
    digest = hashlib.sha256(status.name.encode()).digest()
    alias_lower = alias.lower()
    return {
        "id": server_id,
        "name": status.name,
        "description": "",
        "groupId": None,  # the simulated fleet knows no groups
        "isTemplate": False,
        "locationId": datacenter(status.name),
        "osType": status.os_type,
        "status": "active",
        "details": {
            "ipAddresses": [{"internal": f"10.{digest[0]}.{digest[1]}.{digest[2] % 250 + 2}"}],
            "alertPolicies": [],
            "cpu": 2,
            "diskCount": 1,
            "hostName": server_id,
            "inMaintenanceMode": status.in_maintenance,
            "memoryMB": 4096,
            "powerState": status.power_state.value,
            "storageGB": 60,
            "disks": [],
            "partitions": [],
            "snapshots": [],
            "customFields": [],
        },
        "type": "standard",
        "storageType": "standard",
        "links": [
            {"rel": "self", "href": f"/v2/servers/{alias_lower}/{server_id}", "id": server_id, "verbs": ["GET"]},
            {"rel": "account", "href": f"/v2/accounts/{alias_lower}", "id": alias_lower},
        ],
        clc_wire.EXTENSION: {"bootId": status.boot_id, "rebootPending": status.pending_reboot, "up": status.up,
                             clc_wire.SERVICING: clc_wire.servicing_json(settle)},
    }


def hidden(report: CycleReport) -> CycleReport:
    """A finished report as a control plane that cannot see the outcome answers it: still running."""
    return CycleReport(key=report.key, state=CycleState.RUNNING, started_at=report.started_at,
                       result_code=ResultCode.IN_PROGRESS)


def json_message(status: int, message: str, **extra: Any) -> JSONResponse:
    """An answer of CLC's error shape: `{"message": ..., **extra}` with HTTP `status`."""
    return JSONResponse({"message": message, **extra}, status_code=status)


def datacenter(server: str) -> str:
    """The datacenter a server's name starts with (VA1 when it starts with none)."""
    match = _DATACENTER.match(server)
    return match.group(1).upper() if match else "VA1"
