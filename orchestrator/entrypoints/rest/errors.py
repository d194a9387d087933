"""Every error the REST API answers is JSON `{"message": "..."}`: refusals of the service with their own
status, bad input as 400 with the rule it broke, and never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from orchestrator.domain import naming
from orchestrator.services.errors import ServiceError

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error"
DATABASE_DOWN = "the database is unavailable; try again shortly"
MAX_BODY = 1024 * 1024

RULES: Mapping[str, str] = {
    "alias": "must be an account alias of 2 to 4 letters or digits, like OSD",
    "serverId": "must be a server name like VA1OSDPATCH33",
    "server": "must be a server name like VA1OSDPATCH33",
    "servers": "must be server names like VA1OSDPATCH33",
    "groupId": "must be a group id like va1-0001",
    "groups": "must be group ids like va1-0001",
    "statusId": "must be a status id like va1-132457",
    "execution_id": "must be an execution id like VA1-132457 (aa#-######)",
    "cursor": "must be the last execution id of the previous page, like VA1-132457",
}

_PLACES = {"path": "path parameter", "query": "query parameter", "header": "header", "body": "body field"}


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one error shape."""
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"message": safe}, status_code=status, headers=dict(headers or {}))


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's validation errors as one sentence for people: where, and the rule that was broken."""
    parts: list[str] = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        kind = str(err.get("type", ""))
        if kind == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        if loc == ["body"] and kind == "missing":
            parts.append("the request needs a JSON body")
            continue
        place = _PLACES.get(loc[0], loc[0]) if loc else "request"
        names = [p for p in loc[1:] if not p.isdigit()]
        name = ".".join(loc[1:]) or "value"
        rule = RULES.get(names[0]) if names and kind in ("string_pattern_mismatch", "string_too_long") else None
        parts.append(f"{place} {name}: {rule or err.get('msg', 'is not valid')}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts) or "the request is not valid"


def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(int(retry_after))}
    return error(exc.status, exc.message, headers)


def _naming_error(request: Request, exc: Exception) -> JSONResponse:
    return error(400, str(exc))


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error(400, validation_message(exc.errors()))


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), exc.headers)


def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    return error(503, DATABASE_DOWN, {"Retry-After": "5"})


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error(500, INTERNAL_ERROR)


class BodyLimit:
    """ASGI middleware: a request body above `limit` bytes is answered 413 before anything reads it all."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = error(413, f"the request body is over {self.limit} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await too_big(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooBig(self.limit)
            return message

        started = False

        async def watched(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(HTTPException):
    """Raised from inside the body read: FastAPI passes HTTPExceptions on, so the 413 handler answers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(naming.NamingError, _naming_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_down)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(BodyLimit)  # type: ignore[arg-type]
