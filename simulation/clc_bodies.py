"""The request bodies of the simulated CLC API, and how Execute Package's parameters become a package run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from schemas.fleet import PackageRun
from workers.fleet import clc_wire


class LoginBody(BaseModel):
    """POST /v2/authentication/login."""

    username: str
    password: str


class MaintenanceEntry(BaseModel):
    """One server of Set Maintenance."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(min_length=1)
    in_maintenance_mode: bool = Field(alias="inMaintenanceMode")


class SetMaintenanceBody(BaseModel):
    """POST .../servers/setMaintenance."""

    servers: list[MaintenanceEntry]


class PackageBody(BaseModel):
    """The `package` of Execute Package."""

    model_config = ConfigDict(populate_by_name=True)

    package_id: str = Field(alias="packageId", min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ExecutePackageBody(BaseModel):
    """POST .../servers/executePackage."""

    servers: list[str]
    package: PackageBody


def package_invocation(package: PackageBody, header_key: str | None) -> tuple[PackageRun, str, tuple[str, str] | None]:
    """The run, its idempotency key and its report channel, from the package parameters (ours are
    `patchaas.*`; the rest are the execution's own and are passed through)."""
    params = dict(package.parameters)
    key = str(params.pop(clc_wire.PARAM_IDEMPOTENCY_KEY, "") or header_key or f"sim-{uuid.uuid4().hex}")
    execution_id = str(params.pop(clc_wire.PARAM_EXECUTION_ID, "") or key)
    exclude = str(params.pop(clc_wire.PARAM_EXCLUDE_KBS, "") or "")
    report_url = params.pop(clc_wire.PARAM_REPORT_URL, None)
    report_token = params.pop(clc_wire.PARAM_REPORT_TOKEN, None)
    deadline = str(params.pop(clc_wire.PARAM_DEADLINE, "") or "").strip()
    heartbeat = str(params.pop(clc_wire.PARAM_HEARTBEAT_SECONDS, "") or "").strip()
    service = str(params.pop(clc_wire.PARAM_UPDATE_SERVICE, "") or "").strip()
    if service and service != "null":
        params["updateService"] = service  # the selection field it came from (schemas/selection.py)
    try:
        cycle = int(params.pop(clc_wire.PARAM_CYCLE, 1) or 1)
        run = PackageRun(
            package_id=package.package_id,
            execution_id=execution_id,
            cycle=cycle,
            exclude_kbs=tuple(kb.strip().upper() for kb in exclude.split(",") if kb.strip()),
            parameters=params,
            deadline=_deadline(deadline),
            heartbeat_seconds=int(heartbeat) if heartbeat not in ("", "null") else None,
        )
    except (ValueError, ValidationError) as exc:
        raise HTTPException(400, f"The package parameters are invalid: {exc}") from None
    report_to = (str(report_url), str(report_token)) if report_url and report_token else None
    return run, key, report_to


def _deadline(text: str) -> datetime | None:
    """patchaas.deadline as the package reads it: ISO-8601 (UTC without an offset) or epoch seconds; "" unset."""
    if text in ("", "null"):
        return None
    if text.isdigit():
        return datetime.fromtimestamp(int(text), tz=UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def hook_command(package: PackageBody, header_key: str | None) -> tuple[str, float, str]:
    """A hook's command, its timeout and its idempotency key, from the hook script package's parameters."""
    params = dict(package.parameters)
    command = str(params.get(clc_wire.HOOK_COMMAND) or "")
    key = str(params.get(clc_wire.PARAM_IDEMPOTENCY_KEY) or header_key or f"sim-{uuid.uuid4().hex}")
    try:
        timeout = float(params.get(clc_wire.HOOK_TIMEOUT_SECONDS) or 60)
    except ValueError:
        raise HTTPException(400, "The package parameters are invalid: patchaas.timeoutSeconds") from None
    if not command:
        raise HTTPException(400, "The package parameters are invalid: patchaas.command is missing")
    return command, timeout, key
