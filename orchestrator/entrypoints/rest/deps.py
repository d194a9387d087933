"""What every route depends on: who calls (a bearer token, cached), the service, the typed path parameters,
the documented error answers, and `own` (a path that names another account answers as a missing resource)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.entrypoints.rest import bodies
from orchestrator.entrypoints.rest.bodies import (
    ALIAS_PATTERN,
    EXECUTION_PATTERN,
    SERVER_PATTERN,
    STATUS_PATTERN,
    ErrorMessage,
)
from orchestrator.services import auth
from orchestrator.services.errors import NotFound
from orchestrator.services.patching import PatchService

bearer = HTTPBearer(auto_error=False, description="the `bearerToken` answered by POST /v2/authentication/login")


def error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorMessage, "description": description}


Responses = dict[int | str, dict[str, Any]]
BAD_INPUT: Responses = {
    400: error_response("bad input: a path, query or body value breaks its format; the message says which")
}
DB_DOWN: Responses = {503: error_response("the database is unavailable; retry after the Retry-After seconds")}
UNAUTHENTICATED: Responses = {
    401: {
        **error_response("no bearer token, or an unknown or expired one"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    }
}
NOT_FOUND: Responses = {
    404: error_response("no such resource in the caller's account (other accounts' resources answer the same)")
}
FORBIDDEN: Responses = {403: error_response("the caller's roles only allow reading")}
READ: Responses = {**BAD_INPUT, **UNAUTHENTICATED, **NOT_FOUND, **DB_DOWN}
WRITE: Responses = {**READ, **FORBIDDEN}


def auth_service(request: Request) -> auth.AuthService:
    return request.app.state.auth  # type: ignore[no-any-return]


def token_cache(request: Request) -> auth.TokenCache:
    """The app's token cache (made on first use, over the app's AuthService)."""
    state = request.app.state
    cache: auth.TokenCache | None = getattr(state, "token_cache", None)
    if cache is None or cache.auth is not state.auth:
        settings = getattr(getattr(state, "container", None), "settings", None)
        ttl = float(getattr(settings, "api_token_cache_seconds", 5.0))
        cache = state.token_cache = auth.TokenCache(state.auth, ttl)
    return cache


# The dependencies are `async def`: FastAPI runs a sync dependency in the thread pool, one hop each, and
# these do no I/O (`_caller` only on a cache miss, and then in the thread pool).
async def _service(request: Request) -> PatchService:
    return request.app.state.container.service  # type: ignore[no-any-return]


async def _caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> auth.Principal:
    token = credentials.credentials if credentials else None
    tokens = token_cache(request)
    cached = tokens.cached(token)
    if cached is not None:
        return cached
    return await run_in_threadpool(tokens.authenticate, token)


async def _operator(caller: Annotated[auth.Principal, Depends(_caller)]) -> auth.Principal:
    auth.require_operator(caller)
    return caller


Caller = Annotated[auth.Principal, Depends(_caller)]
Operator = Annotated[auth.Principal, Depends(_operator)]
Service = Annotated[PatchService, Depends(_service)]
Alias = Annotated[str, Path(pattern=ALIAS_PATTERN, description="account alias", examples=["OSD"])]
ServerId = Annotated[
    str, Path(alias="serverId", pattern=SERVER_PATTERN, max_length=32, description="server name",
              examples=["VA1OSDPATCH01"])
]
ServerName = Annotated[
    str, Path(pattern=SERVER_PATTERN, max_length=32, description="server name", examples=["VA1OSDPATCH01"])
]
GroupId = Annotated[
    str, Path(alias="groupId", pattern=bodies.GROUP_PATTERN, max_length=32, description="group id",
              examples=["va1-0001"])
]
StatusId = Annotated[
    str, Path(alias="statusId", pattern=STATUS_PATTERN, max_length=16, description="status id of a queued operation",
              examples=["va1-132457"])
]
ExecutionId = Annotated[
    str, Path(pattern=EXECUTION_PATTERN, description="execution id (aa#-######)", examples=["VA1-132457"])
]


def own(caller: auth.Principal, alias: str, missing: str) -> str:
    """The caller's account if the path names it; otherwise the 404 a missing resource gets."""
    if alias.upper() != caller.account_alias:
        raise NotFound(missing)
    return caller.account_alias
