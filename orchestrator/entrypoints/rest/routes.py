"""The endpoints. Each one only translates: checks who calls, hands the request to the service, shapes the
answer. A path that names another account answers exactly as a missing resource does (404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials

from orchestrator.entrypoints.console import csv_export
from orchestrator.entrypoints.rest import bodies, clc_shapes, deps, statuses, streaming
from orchestrator.entrypoints.rest.bodies import (
    EXECUTION_PATTERN,
)
from orchestrator.entrypoints.rest.deps import (
    DB_DOWN,
    READ,
    UNAUTHENTICATED,
    WRITE,
    Alias,
    Caller,
    ExecutionId,
    GroupId,
    Operator,
    ServerId,
    ServerName,
    Service,
    StatusId,
    error_response,
    own,
)
from orchestrator.services import windows as windows_mod
from orchestrator.services.answers import DETAIL_JSON, SUMMARY_JSON
from orchestrator.services.errors import ServiceError
from orchestrator.services.patching import PatchService
from schemas.patching import ExecutionDetail, ExecutionSummary

DEFAULT_PAGE = 50
MAX_PAGE = 200
CSV = {"text/csv": {"schema": {"type": "string"}}}  # with `Accept: text/csv` (docs/CONSOLE.md)



def _json(body: bytes, headers: dict[str, str] | None = None) -> Response:
    """An answer the service serialized already (`history_json`, `detail_json`: the bytes FastAPI's
    `response_model` would give, by alias), sent as is."""
    return Response(body, media_type="application/json", headers=headers)


v2 = APIRouter(prefix="/v2")
patching = APIRouter(prefix="/rest/servers/{alias}/server/{server}/patch", tags=["patching"])


@v2.post("/authentication/logout", status_code=204, tags=["authentication"],
         responses={**UNAUTHENTICATED, **DB_DOWN, 400: error_response("a malformed request")})
async def logout(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(deps.bearer)]
                 ) -> Response:
    """Revoke the bearer token of this call (a script done with it, a token that leaked). Other API
    processes stop accepting it within their token cache's few seconds (PATCHAAS_API_TOKEN_CACHE_SECONDS)."""
    token = credentials.credentials if credentials else None
    tokens = deps.token_cache(request)
    await run_in_threadpool(tokens.auth.logout, token)
    tokens.forget(token)
    return Response(status_code=204)


@v2.post("/authentication/login", response_model=bodies.LoginAnswer, tags=["authentication"],
         responses={400: error_response("bad credentials (CLC's message) or a malformed body"),
                    429: error_response("too many consecutive failed logins for this user; retry after Retry-After"),
                    **DB_DOWN})
def login(request: Request, body: bodies.LoginRequest) -> bodies.LoginAnswer:
    """Log in with a username and password; the answer carries a bearer token for every other call."""
    done = deps.auth_service(request).login(body.username, body.password)
    who = done.principal
    return bodies.LoginAnswer(user_name=who.username, account_alias=who.account_alias, location_alias=who.location,
                              roles=list(who.roles), bearer_token=done.token)


@v2.post("/operations/{alias}/servers/executePackage", response_model=list[bodies.QueuedAnswer],
         response_model_exclude_none=True, tags=["operations"], responses=WRITE)
def execute_package(alias: Alias, body: bodies.ExecutePackageRequest, caller: Operator,
                    service: Service) -> Response:
    """Patch servers: one answer per server, queued with a status link and an execution id, or why not."""
    scope = own(caller, alias, f"account {alias} not found")
    answers = service.execute_package(scope, body.servers, body.package, caller.username)
    return streaming.queued_response(scope, answers)  # the list's bytes, a chunk at a time


@v2.post("/operations/{alias}/groups/executePackage", response_model=list[bodies.QueuedAnswer],
         response_model_exclude_none=True, tags=["operations"], responses=WRITE)
def execute_package_on_groups(alias: Alias, body: bodies.GroupExecuteRequest, caller: Operator,
                              service: Service) -> Response:
    """The group action: every server of the groups and of their nested groups, each answered on its own.
    With `maxConcurrency`, `maxErrors` or `waves` the servers are patched as a rate-controlled rollout: all
    are queued at once (same answers), a few run at a time, and the rest are skipped once too many failed."""
    scope = own(caller, alias, f"account {alias} not found")
    answers = service.execute_package_on_groups(scope, body.groups, body.package, caller.username, body.rate())
    return streaming.queued_response(scope, answers)  # the list's bytes, a chunk at a time


@v2.get("/operations/{alias}/status/{statusId}", response_model=bodies.OperationStatus, tags=["operations"],
        responses=READ)
def operation_status(alias: Alias, status_id: StatusId, caller: Caller, service: Service) -> bodies.OperationStatus:
    """CLC queue status of one queued server operation: notStarted, executing, succeeded or failed."""
    missing = f"status {status_id} not found"
    scope = own(caller, alias, missing)
    state = service.execution_state(scope, status_id)
    return bodies.OperationStatus(status=statuses.queue_status_of(state))


@v2.get("/servers/{alias}/{serverId}", response_model=clc_shapes.ServerAnswer, tags=["inventory"], responses=READ)
def get_server(alias: Alias, server_id: ServerId, caller: Caller, service: Service) -> clc_shapes.ServerAnswer:
    """One server in the CLC shape."""
    scope = own(caller, alias, f"server {server_id} not found")
    return clc_shapes.server_answer(service.server(scope, server_id))


@v2.get("/groups/{alias}/{groupId}", response_model=clc_shapes.GroupAnswer, tags=["inventory"], responses=READ)
def get_group(alias: Alias, group_id: GroupId, caller: Caller, service: Service) -> clc_shapes.GroupAnswer:
    """One group in the CLC shape: its nested groups in full and a `server` link per server."""
    scope = own(caller, alias, f"group {group_id} not found")
    return clc_shapes.group_answer(scope, service.group(scope, group_id))


@patching.get(
    "", response_model=list[ExecutionSummary],
    responses={
        200: {
            "description": "the executions, newest first",
            "headers": {
                "Link": {"schema": {"type": "string"},
                         "description": 'the next page, `<…/patch?limit=N&cursor=VA1-132457>; rel="next"`'},
                "X-Next-Cursor": {"schema": {"type": "string"}, "description": "the cursor of the next page"},
            },
            "content": CSV,
        },
        **READ,
    },
)
def summary(
    request: Request,
    alias: Alias,
    server: ServerName,
    caller: Caller,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="executions per page")] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(pattern=EXECUTION_PATTERN, description="the last execution id of the previous page",
              examples=["VA1-132457"]),
    ] = None,
) -> Response:
    """A server's patch history, newest first; when more remain, `Link: rel="next"` and `X-Next-Cursor`
    give the next page (pass `cursor`)."""
    scope = own(caller, alias, f"server {server} not found")
    items = service.history_json(scope, server, limit=limit + 1, before=cursor)
    page = items[:limit]
    headers: dict[str, str] = {}
    if len(items) > limit:
        after = page[-1][0]
        headers["Link"] = f'<{request.url.path}?limit={limit}&cursor={after}>; rel="next"'
        headers["X-Next-Cursor"] = after
    if csv_export.wants_csv(request.headers.get("accept")):  # the same page as CSV, one row per execution
        rows = csv_export.history_csv(SUMMARY_JSON.validate_json(body) for _, body in page)
        return Response(rows, media_type=csv_export.MEDIA_TYPE, headers=headers)
    return _json(b"[" + b",".join(body for _, body in page) + b"]", headers)


@patching.get("/{execution_id}", response_model=ExecutionDetail, responses={**READ, 200: {"content": CSV}})
def detail(request: Request, alias: Alias, server: ServerName, execution_id: ExecutionId, caller: Caller,
           service: Service) -> Response:
    """One execution with every patch it attempted (`Accept: text/csv`: its patches, one row each)."""
    scope = own(caller, alias, f"server {server} not found")
    body = service.detail_json(scope, server, execution_id)
    if csv_export.wants_csv(request.headers.get("accept")):
        return Response(csv_export.patches_csv(DETAIL_JSON.validate_json(body)), media_type=csv_export.MEDIA_TYPE)
    return _json(body)


@patching.post("/{execution_id}/cancel", response_model=ExecutionDetail, status_code=202,
               responses={**WRITE, 409: error_response("the execution has already ended")})
def cancel(alias: Alias, server: ServerName, execution_id: ExecutionId, caller: Operator, service: Service,
           body: Annotated[bodies.CancelRequest | None, Body()] = None) -> ExecutionDetail:
    """Stop after the current step and take the server out of maintenance mode; who (the token's user) and
    why are recorded. Answers the execution as it is now (202: it ends shortly)."""
    scope = own(caller, alias, f"server {server} not found")
    return service.cancel(scope, server, execution_id, caller.username, body.reason if body else None)


# --- patch windows and rollouts (our extension of the contract) -------------------------------------------

WindowId = Annotated[int, Path(alias="windowId", ge=1, le=2**31 - 1, description="window id", examples=[1])]
RolloutId = Annotated[int, Path(alias="rolloutId", ge=1, le=2**31 - 1, description="rollout id", examples=[1])]


def _windows(service: PatchService) -> windows_mod.WindowService:
    return windows_mod.WindowService(service)


@v2.post("/patchaas/{alias}/windows", response_model=bodies.WindowAnswer, status_code=201, tags=["windows"],
         responses={**WRITE, 409: error_response("the account already has a window of that name")})
def create_window(alias: Alias, body: bodies.WindowRequest, caller: Operator, service: Service) -> bodies.WindowAnswer:
    """Schedule a patch window: targets, a cron expression or a monthly rule ("second Tuesday + 3 days at
    22:00") in a time zone, a duration and a cutoff (no new update cycle in its last minutes), rate control."""
    scope = own(caller, alias, f"account {alias} not found")
    return bodies.window_answer(_windows(service).create(scope, body.spec(), caller.username))


@v2.get("/patchaas/{alias}/windows", response_model=list[bodies.WindowAnswer], tags=["windows"], responses=READ)
def list_windows(alias: Alias, caller: Caller, service: Service) -> list[bodies.WindowAnswer]:
    """The account's patch windows with their next occurrences (UTC)."""
    scope = own(caller, alias, f"account {alias} not found")
    return [bodies.window_answer(w) for w in _windows(service).list_windows(scope)]


@v2.get("/patchaas/{alias}/windows/{windowId}", response_model=bodies.WindowAnswer, tags=["windows"],
        responses=READ)
def get_window(alias: Alias, window_id: WindowId, caller: Caller, service: Service) -> bodies.WindowAnswer:
    """One window with its next occurrences and its recent ones (their rollouts and notes)."""
    scope = own(caller, alias, f"window {window_id} not found")
    return bodies.window_answer(_windows(service).get(scope, window_id))


@v2.patch("/patchaas/{alias}/windows/{windowId}", response_model=bodies.WindowAnswer, tags=["windows"],
          responses={**WRITE, 409: error_response("the account already has a window of that name")})
def update_window(alias: Alias, window_id: WindowId, body: bodies.WindowChange, caller: Operator,
                  service: Service) -> bodies.WindowAnswer:
    """Change a window: only the fields sent change; `{"enabled": false}` pauses it (no occurrence starts; a
    running one goes on until its cutoff), `{"enabled": true}` resumes it. A change applies from the next
    occurrence that starts after it: an open occurrence is neither restarted nor changed."""
    scope = own(caller, alias, f"window {window_id} not found")
    try:
        changes = body.changes()
    except ValueError as exc:
        raise ServiceError(str(exc)) from None
    return bodies.window_answer(_windows(service).update(scope, window_id, changes, by=caller.username))


@v2.delete("/patchaas/{alias}/windows/{windowId}", response_model=bodies.WindowAnswer, tags=["windows"],
           responses=WRITE)
def delete_window(alias: Alias, window_id: WindowId, caller: Operator, service: Service) -> bodies.WindowAnswer:
    """Delete a window: no further occurrence starts (a running one goes on until its cutoff). Answers the
    window as it was."""
    scope = own(caller, alias, f"window {window_id} not found")
    return bodies.window_answer(_windows(service).delete(scope, window_id, by=caller.username))


@v2.get("/patchaas/{alias}/rollouts/{rolloutId}", response_model=bodies.RolloutAnswer, tags=["windows"],
        responses=READ)
def get_rollout(alias: Alias, rollout_id: RolloutId, caller: Caller, service: Service) -> bodies.RolloutAnswer:
    """A rate-controlled rollout (a group action with rate control, or a window's occurrence)."""
    scope = own(caller, alias, f"rollout {rollout_id} not found")
    return bodies.rollout_answer(service.rollout(scope, rollout_id))
