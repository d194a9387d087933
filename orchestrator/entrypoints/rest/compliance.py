"""`GET /v2/patchaas/{alias}/compliance`: whether each server is at the latest patches, as its most recent
finished run knows it (orchestrator/services/compliance.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from orchestrator.entrypoints.console import csv_export
from orchestrator.entrypoints.rest.bodies import GROUP_PATTERN, MAX_GROUPS, CamelModel
from orchestrator.entrypoints.rest.deps import READ, Alias, Caller, Service, own
from orchestrator.services import compliance

router = APIRouter(prefix="/v2", tags=["compliance"])


class ServerCompliance(CamelModel):
    server: str
    os_type: str
    status: Literal["compliant", "non_compliant", "unknown"]
    reason: str
    execution_id: str | None
    execution_status: str | None
    as_of: datetime | None
    installed: int
    missing: list[str]
    failed: list[str]
    patching_now: bool
    stale: bool


class ComplianceAnswer(CamelModel):
    alias: str
    at: datetime
    counts: dict[str, int]
    servers: list[ServerCompliance]


@router.get("/patchaas/{alias}/compliance", response_model=ComplianceAnswer,
            responses={**READ, 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def get_compliance(
    request: Request, alias: Alias, caller: Caller, service: Service,
    group: Annotated[list[Annotated[str, Query(pattern=GROUP_PATTERN, max_length=32)]] | None,
                     Query(max_length=MAX_GROUPS, description="only these groups (nested included)")] = None,
    stale_after_days: Annotated[int | None, Query(alias="staleAfterDays", ge=1, le=3650,
                                                  description="flag answers older than this")] = None,
) -> ComplianceAnswer | Response:
    """Per server: `compliant` (its last finished run left nothing to install), `non_compliant` (it failed,
    was stopped, or a scan found updates: `missing`, `failed`), or `unknown` (never finished a run), with the
    run it is based on and when that run ended (`asOf`)."""
    scope = own(caller, alias, f"account {alias} not found")
    stale = timedelta(days=stale_after_days) if stale_after_days else None
    found = compliance.for_account(service, scope, group or (), stale)
    if csv_export.wants_csv(request.headers.get("accept")):  # one row per server
        return Response(csv_export.compliance_csv(found), media_type=csv_export.MEDIA_TYPE)
    return ComplianceAnswer(
        alias=found.alias, at=found.at, counts=found.counts(),
        servers=[ServerCompliance(server=s.server, os_type=s.os_type, status=s.status, reason=s.reason,
                                  execution_id=s.execution_id, execution_status=s.execution_status, as_of=s.as_of,
                                  installed=s.installed, missing=list(s.missing), failed=list(s.failed),
                                  patching_now=s.patching_now, stale=s.stale) for s in found.servers],
    )
