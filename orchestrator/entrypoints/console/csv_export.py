"""CSV of a server's history, an execution's patches and a compliance report (pure: values in, text out), for
the console's download links, the REST API's `Accept: text/csv` and the CLI's `--format csv`.

RFC 4180 (comma, CRLF, quotes doubled), a header row, times in ISO 8601 UTC with a `Z`. A text cell that a
spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage return) is written with a
leading apostrophe (OWASP's advice on CSV injection): a KB title from a vendor is data, never a formula."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from orchestrator.entrypoints.console import words
from orchestrator.services.compliance import ComplianceReport
from schemas.patching import ExecutionDetail, ExecutionSummary

MEDIA_TYPE = "text/csv; charset=utf-8"

HISTORY_COLUMNS = ("execution_id", "server", "status", "state", "start_time", "end_time", "cycles", "updates_found",
                   "reboots", "last_message")
PATCH_COLUMNS = ("execution_id", "server", "cycle", "kb", "title", "classification", "status", "result_code",
                 "result", "hresult", "hresult_text", "reboot_required", "start_time", "end_time", "url")
COMPLIANCE_COLUMNS = ("server", "os_type", "status", "stale", "patching_now", "execution_id", "execution_status",
                      "as_of", "installed", "missing", "failed", "reason")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def iso(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cell(value: object) -> str:
    """One cell's text: times as ISO UTC, booleans as true/false, formula-looking text defused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return out.getvalue()


def history_rows(items: Iterable[ExecutionSummary]) -> list[list[object]]:
    rows: list[list[object]] = []
    for item in items:
        inits = item.init_messages
        last = inits[-1].init_end_message if inits else None
        rows.append([item.execution_id, item.server, item.status, item.state, item.start_time, item.end_time,
                     len(inits), sum(i.updates_found for i in inits), sum(1 for i in inits if i.reboot_required),
                     (last or "").split("##")[0]])
    return rows


def history_csv(items: Iterable[ExecutionSummary]) -> str:
    """One row per execution, newest first as given."""
    return table(HISTORY_COLUMNS, history_rows(items))


def patch_rows(detail: ExecutionDetail) -> list[list[object]]:
    return [[detail.execution_id, detail.server, p.cycle, p.kb, p.title, p.classification, p.status, p.result_code,
             words.result_code_words(p.result_code), p.hresult, words.hresult_words(p.hresult), p.reboot_required,
             p.start_time, p.end_time, p.url] for p in detail.patches]


def patches_csv(detail: ExecutionDetail) -> str:
    """One row per patch record of the execution."""
    return table(PATCH_COLUMNS, patch_rows(detail))


def compliance_rows(found: ComplianceReport) -> list[list[object]]:
    return [[s.server, s.os_type, s.status, s.stale, s.patching_now, s.execution_id, s.execution_status, s.as_of,
             s.installed, " ".join(s.missing), " ".join(s.failed), s.reason] for s in found.servers]


def compliance_csv(found: ComplianceReport) -> str:
    """One row per server."""
    return table(COMPLIANCE_COLUMNS, compliance_rows(found))


def wants_csv(accept: str | None) -> bool:
    """Whether an Accept header prefers text/csv to application/json: the higher q wins, then the one named
    first; JSON when text/csv is not named (`*/*` alone is JSON)."""
    if not accept:
        return False
    best: dict[str, tuple[float, int]] = {}
    for index, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if media in ("text/csv", "application/json", "application/*", "text/*"):
            name = {"application/*": "application/json", "text/*": "text/csv"}.get(media, media)
            if name not in best or (q, -index) > (best[name][0], -best[name][1]):
                best[name] = (q, index)
    csv_rank, json_rank = best.get("text/csv"), best.get("application/json")
    if csv_rank is None or csv_rank[0] <= 0:
        return False
    if json_rank is None:
        return True
    return csv_rank[0] > json_rank[0] or (csv_rank[0] == json_rank[0] and csv_rank[1] < json_rank[1])
