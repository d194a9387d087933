"""The report channel's pure rules (unit-tested without I/O): where a package posts, the bearer token, which cycle
a report key names, and how a posted body is validated (a final report, or a heartbeat). orchestrator/services/
reports.py, the channel itself, re-exports them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from orchestrator.domain.machine import TERMINAL
from orchestrator.services.errors import ServiceError
from schemas.fleet import WIRE_CONTEXT, CycleReport, CycleState

REPORTS_PATH = "/v2/patchaas/executions/{execution_id}/reports"
KEY_RE = re.compile(r"^(?P<execution>[A-Z]{2}[0-9]-[0-9]{6}):package:(?P<cycle>[0-9]{1,4})$")
MAX_REPORT_BYTES = 512 * 1024  # a report of 500 updates with long titles is ~150 KB
TERMINAL_STATES: frozenset[str] = frozenset(state.value for state in TERMINAL)


class InvalidReport(ServiceError):
    """The body is not a valid cycle report (400, with the rule it broke)."""

    status = 400


# --- pure rules (unit-tested without I/O) ------------------------------------------------------


def report_url(base_url: str, execution_id: str) -> str:
    """Where the package of `execution_id` posts its reports: the API's external base URL + the path."""
    return base_url.rstrip("/") + REPORTS_PATH.format(execution_id=quote(execution_id, safe=""))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when absent or of another scheme."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        return None
    return token


def cycle_of(key: str, execution_id: str) -> int:
    """The cycle number of a report key, which must be a cycle of `execution_id` (`VA1-132457:package:2`)."""
    match = KEY_RE.match(key)
    if match is None or match["execution"] != execution_id or int(match["cycle"]) < 1:
        raise InvalidReport(
            f"body field key: {key[:120]!r} is not a cycle of execution {execution_id} "
            f"(expected {execution_id}:package:<cycle>, the patchaas.idempotencyKey parameter)"
        )
    return int(match["cycle"])


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one sentence: where, and the rule that was broken (as the REST API words them)."""
    parts: list[str] = []
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"body field {where}: {err.get('msg', 'is not valid')}" if where
                     else f"the body: {err.get('msg', 'is not valid')} (one cycle report)")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts) or "the report is not valid"


def parse_report(raw: bytes) -> CycleReport:
    """A posted body as a final CycleReport, validated strictly (what the JSON Schema allows, no coercion)."""
    if not raw.strip():
        raise InvalidReport("the request needs a JSON body: one cycle report (schemas/cycle_report.schema.json)")
    if len(raw) > MAX_REPORT_BYTES:
        raise InvalidReport(f"a cycle report may not exceed {MAX_REPORT_BYTES} bytes")
    try:
        report = CycleReport.model_validate_json(raw, strict=True, context=WIRE_CONTEXT)
    except ValidationError as exc:
        raise InvalidReport(describe(exc.errors(include_url=False))) from None
    if report.state is not CycleState.FINISHED:
        raise InvalidReport(
            f"body field state: a report is posted when the cycle has finished ('finished'), not {report.state.value!r}"
        )
    return report


def parse_post(raw: bytes) -> CycleReport:
    """A posted body: a final report, or a heartbeat (`state: running`), validated strictly."""
    try:
        return parse_report(raw)
    except InvalidReport as refused:
        if "when the cycle has finished" not in refused.message:
            raise
    return CycleReport.model_validate_json(raw, strict=True, context=WIRE_CONTEXT)


def canonical(report: CycleReport) -> dict[str, Any]:
    """The report as it is stored and compared: the model's JSON (HRESULTs unsigned, times normalised)."""
    return report.model_dump(mode="json")


def body_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 of a canonical body: two posts of the same report have the same digest."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def execution_of(key: str) -> str | None:
    """The execution id a package-run key belongs to (`VA1-132457:package:2` → `VA1-132457`)."""
    match = KEY_RE.match(key)
    return match["execution"] if match else None
