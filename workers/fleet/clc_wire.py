"""The clc driver's wire contract: CLC API v2 plus our extensions, shared by the driver (clc.py) and the
CLC simulator: the `patchaas` object of a server (boot id, pending reboot, up), the `patchaas.*` package
parameters, the `Idempotency-Key` header, the package-run report under `/v2/patchaas/...`, and how answers
are read."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.domain import packages
from orchestrator.ports import FleetError, FleetRefused
from schemas import selection
from schemas.fleet import PackageRun, PowerState, ServerStatus, SettleStatus

# --- the wire contract: CLC API v2 plus our extensions -------------------------------------------

EXTENSION = "patchaas"  # the object our control plane adds to a server and to a refused queue entry
IDEMPOTENCY_HEADER = "Idempotency-Key"  # the control plane performs one effect per (operation, server, key)
PARAM_EXECUTION_ID = "patchaas.executionId"
PARAM_CYCLE = "patchaas.cycle"
PARAM_EXCLUDE_KBS = "patchaas.excludeKBs"  # comma-separated KB ids, "" for none
PARAM_IDEMPOTENCY_KEY = "patchaas.idempotencyKey"
PARAM_REPORT_URL = "patchaas.reportUrl"  # the report channel (orchestrator/services/reports.py), when offered
PARAM_REPORT_TOKEN = "patchaas.reportToken"  # the per-execution bearer token of the report channel
PARAM_DEADLINE = "patchaas.deadline"  # ISO-8601 UTC: when the engine stops waiting for the cycle (package timeout)
PARAM_HEARTBEAT_SECONDS = "patchaas.heartbeatSeconds"  # "0" (none) or 30-3600: running reports while it works
PARAM_UPDATE_SERVICE = "patchaas.updateService"  # Default | WSUS | WindowsUpdate | MicrosoftUpdate
SERVICING = "servicing"  # in the `patchaas` object of a server: {"idle", "rebootRequired", "detail"} (issue 14)
PACKAGE_RUN_NOT_FOUND = "packageRunNotFound"  # the `code` of a 404 for a package run never received
PENDING_STATUSES: frozenset[str] = frozenset({"notStarted", "executing", "resumed"})
SELECTION_WIRE_NAMES: dict[str, str] = {"updateService": PARAM_UPDATE_SERVICE}
"""Selection fields (schemas/selection.py) that reach the Windows package under another name; the others are sent
under their own (workers/fleet/packages/windows-update.manifest.json binds each to a script parameter)."""


HOOK_PACKAGE_ID = "patchaas-hook-command"
"""The script package a command hook executes (docs/HOOKS.md): parameters `patchaas.command`,
`patchaas.timeoutSeconds` and `patchaas.idempotencyKey`; our control plane keeps its result under the key."""
HOOK_COMMAND = "patchaas.command"
HOOK_TIMEOUT_SECONDS = "patchaas.timeoutSeconds"
COMMAND_RUN_NOT_FOUND = "commandRunNotFound"  # the `code` of a 404 for a command run never received


def command_run_path(alias: str, server: str, key: str) -> str:
    """Where the control plane keeps the result of the hook command started under `key`."""
    return f"/v2/patchaas/{quote(alias, safe='')}/servers/{quote(server, safe='')}/commandRuns/{quote(key, safe='')}"


def package_run_path(alias: str, server: str, key: str) -> str:
    """Where the control plane keeps the report of the package run started under `key`."""
    return f"/v2/patchaas/{quote(alias, safe='')}/servers/{quote(server, safe='')}/packageRuns/{quote(key, safe='')}"


def wire_value(value: object) -> str:
    """A parameter as CLC passes it to the script, a double-quoted string: lists comma-separated (a JSON list's
    quotes would break CLC's quoting), booleans "true"/"false", None "" (not set), times ISO-8601 UTC."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(wire_value(item) for item in value)
    return str(value)


def package_parameters(run: PackageRun, key: str) -> dict[str, str]:
    """The Execute Package `parameters`, every one a string: the execution's selection (a field the package
    refuses, schemas/selection.py REFUSED, is never sent: it was refused at request time), plus ours — the cycle,
    its key, the quarantined KBs, the deadline, the heartbeat period, the update service — and the report
    channel's URL and token only when the orchestrator offers the channel."""
    try:
        family = packages.get(run.package_id).family
    except packages.UnknownPackage:
        family = "windows"
    refused = selection.REFUSED.get(family, {})
    try:  # the values as validated at request time (KBs upper-case, choices spelled as the script lists them)
        chosen = selection.selection_of(dict(run.parameters)).model_dump(mode="json", by_alias=True)
    except ValueError:
        chosen = {}
    parameters: dict[str, str] = {}
    for name, value in run.parameters.items():
        if name in refused:
            continue
        wired = SELECTION_WIRE_NAMES.get(name, name) if family == "windows" else name
        parameters[wired] = wire_value(chosen.get(name, value))
    parameters.update({
        PARAM_EXECUTION_ID: run.execution_id,
        PARAM_CYCLE: str(run.cycle),
        PARAM_EXCLUDE_KBS: ",".join(run.exclude_kbs),
        PARAM_IDEMPOTENCY_KEY: key,
    })
    if family == "windows":
        parameters.setdefault(PARAM_UPDATE_SERVICE, selection.UpdateService.DEFAULT.value)
        if not parameters[PARAM_UPDATE_SERVICE]:
            parameters[PARAM_UPDATE_SERVICE] = selection.UpdateService.DEFAULT.value
    if run.deadline is not None:
        parameters[PARAM_DEADLINE] = wire_value(run.deadline)
    if run.heartbeat_seconds is not None:
        parameters[PARAM_HEARTBEAT_SECONDS] = str(run.heartbeat_seconds)
    if run.report_url and run.report_token is not None:
        parameters[PARAM_REPORT_URL] = run.report_url
        parameters[PARAM_REPORT_TOKEN] = run.report_token.get_secret_value()
    return parameters


# --- answers -----------------------------------------------------------------------------------


def json_answer(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise FleetError(f"HTTP {response.status_code}: the answer is not JSON") from None


def body_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def message_of(response: httpx.Response) -> str:
    """CLC's `message`, or the start of the body."""
    message = body_of(response).get("message")
    return str(message) if message else (response.text[:200] or response.reason_phrase)


def server_status(server: str, body: Any) -> ServerStatus:
    """A CLC server answer as a ServerStatus; our `patchaas` extension is required."""
    if not isinstance(body, dict):
        raise FleetError(f"CLC get server {server}: the answer is not an object")
    extension = body.get(EXTENSION)
    if not isinstance(extension, dict):
        raise FleetRefused(
            f"CLC get server {server}: no `{EXTENSION}` extension (boot id, pending reboot) in the answer; "
            "this control plane cannot tell when a reboot happened"
        )
    try:
        details = body["details"]
        power = PowerState(details["powerState"])
        return ServerStatus(
            name=str(body["name"]),
            os_type=str(body["osType"]),
            power_state=power,
            in_maintenance=bool(details["inMaintenanceMode"]),
            up=bool(extension.get("up", power is PowerState.STARTED)),
            boot_id=str(extension["bootId"]),
            # optional: a control plane without it leaves the pending reboot to the package (blocked_by)
            pending_reboot=bool(extension.get("rebootPending", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FleetError(f"CLC get server {server}: malformed answer ({exc!r})") from None


def servicing_json(settle: SettleStatus) -> dict[str, Any]:
    """The `servicing` object of our `patchaas` server extension: what the control plane's agent reads of the
    Windows servicing stack (no pending CBS / TrustedInstaller operation; WUA RebootRequired)."""
    return {"idle": settle.idle, "rebootRequired": settle.reboot_required, "detail": settle.detail}


def settle_status(server: str, body: Any) -> SettleStatus:
    """A CLC server answer as a SettleStatus. A control plane without `servicing` in our extension cannot see the
    servicing stack: the server counts as idle once it is up (the boot id alone, as before issue 14)."""
    status = server_status(server, body)
    servicing = body[EXTENSION].get(SERVICING)
    if servicing is None:
        return SettleStatus(up=status.up, boot_id=status.boot_id, idle=status.up)
    if not isinstance(servicing, dict):
        raise FleetError(f"CLC get server {server}: malformed `{EXTENSION}.{SERVICING}` ({servicing!r})")
    try:
        return SettleStatus(up=status.up, boot_id=status.boot_id, idle=status.up and bool(servicing["idle"]),
                            reboot_required=bool(servicing.get("rebootRequired", False)),
                            detail=str(servicing.get("detail") or "")[:500])
    except KeyError as exc:
        raise FleetError(f"CLC get server {server}: malformed `{EXTENSION}.{SERVICING}` ({exc!r})") from None
