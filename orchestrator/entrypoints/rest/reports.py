"""The report channel's endpoint: `POST /v2/patchaas/executions/{execution_id}/reports`.

The update package posts one cycle's report here (`schemas/cycle_report.schema.json`) with the per-execution
bearer token it was given as `patchaas.reportToken`. The body is read and validated by `orchestrator.reports`
after the token is checked, so a caller without a token learns nothing but 401. See docs/API.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from orchestrator.entrypoints.rest.bodies import EXECUTION_PATTERN, ErrorMessage
from orchestrator.services import reports
from schemas.fleet import CycleReport

router = APIRouter(prefix="/v2/patchaas/executions", tags=["report channel"])


class ReportAnswer(BaseModel):
    """The record of a posted report (`reports.Recorded.as_json`)."""

    model_config = ConfigDict(populate_by_name=True)

    execution_id: str = Field(alias="executionId", examples=["VA1-132457"])
    key: str = Field(examples=["VA1-132457:package:2"])
    cycle: int = Field(ge=1, examples=[2])
    recorded: bool = Field(description="true: recorded now (201); false: the same report was recorded before (200)")
    received_at: datetime = Field(alias="receivedAt", description="when the report was first recorded")
    heartbeats: int | None = Field(default=None, description="a heartbeat: how many of the cycle were heard so far")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorMessage, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": ReportAnswer, "description": "recorded"},
    200: {"model": ReportAnswer,
          "description": "the same report was recorded before (an idempotent replay); nothing changed"},
    202: {"model": ReportAnswer, "description": "a heartbeat (state running): kept, not the cycle's report"},
    400: _error("the body is not a cycle report of this execution (the message names the rule)"),
    401: _error("no bearer token, or not a report token of this execution"),
    404: _error("no such execution"),
    409: _error("the execution has finished, a different report of this cycle was recorded, or a heartbeat came "
                "after the cycle's report"),
    413: _error("the request body is over 1 MiB"),
    503: _error("the database is unavailable; retry after the Retry-After seconds"),
}

def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """A JSON Schema with its local `$defs` references replaced by the definitions (OpenAPI resolves a `$ref`
    from the document's root, so a request body's schema carries no `$defs` of its own)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(item, defs) for item in schema]
    return schema


def _body_schema() -> dict[str, Any]:
    model = CycleReport.model_json_schema()
    return _inlined(model, model.get("$defs", {}))  # type: ignore[no-any-return]


_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _body_schema()}}}}


def _channel(request: Request) -> reports.ReportChannel:
    channel = getattr(request.app.state, "report_channel", None)
    if channel is None:
        container = request.app.state.container
        service = container.service
        channel = reports.ReportChannel(service.sessions, service.clock, lambda i: service.dispatcher.advance(i, 0.0))
        request.app.state.report_channel = channel
    return channel  # type: ignore[no-any-return]


@router.post(
    "/{execution_id}/reports",
    status_code=201,
    response_model=None,
    responses=RESPONSES,
    openapi_extra=_BODY,
    summary="Post one cycle's report (the update package's report channel)",
)
async def post_report(
    request: Request,
    execution_id: Annotated[
        str, Path(pattern=EXECUTION_PATTERN, description="execution id (aa#-######)", examples=["VA1-132457"])
    ],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="a heartbeat's: <key>:heartbeat:<n> (n from 1 per invocation)")] = None,
) -> Any:
    """Record one finished cycle of the update package, once per (execution, cycle key). 201 with the record
    the first time; 200 with the same record when the same report is posted again. A heartbeat (`state:
    running`) is kept apart, never as the cycle's report: 202."""
    raw = await request.body()
    done = await _in_thread(_channel(request).record, execution_id.upper(), authorization, raw, idempotency_key)
    if done.heartbeat is not None:
        return JSONResponse(done.as_json(), status_code=202)
    return JSONResponse(done.as_json(), status_code=201 if done.created else 200)


async def _in_thread(function: Any, *args: Any) -> reports.Recorded:
    """Database work off the event loop (the endpoint is async only to read the raw body)."""
    return await run_in_threadpool(function, *args)  # type: ignore[no-any-return]
