"""Pre/post hooks of an account (docs/HOOKS.md):

    PUT    /v2/patchaas/{alias}/hooks/{name}     create (201) or replace (200) a hook
    GET    /v2/patchaas/{alias}/hooks            the account's hooks, by name
    GET    /v2/patchaas/{alias}/hooks/{name}     one hook
    DELETE /v2/patchaas/{alias}/hooks/{name}     delete it (runs already going keep their copy)

Authenticated like every /v2 route (bearer token; writes need an operator role); another account's hooks answer
404. Secret headers are never answered: only their names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import Field

from orchestrator.entrypoints.rest.bodies import CamelModel
from orchestrator.entrypoints.rest.deps import READ, WRITE, Alias, Caller, Operator, own
from orchestrator.services import hooks as service_mod
from schemas.hooks import HookSpec

router = APIRouter(prefix="/v2/patchaas/{alias}", tags=["hooks"])
HookName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="hook name", examples=["drain"])]


class HookAnswer(CamelModel):
    """A hook as defined, without its secret header values."""

    name: str
    kind: str
    points: list[str]
    on_failure: str
    timeout_seconds: int
    command: str | None = None
    method: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    secret_header_names: list[str] = Field(default_factory=list, description="the sealed headers' names only")
    headers_ref: str | None = None
    body: str | None = None
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


def _service(request: Request) -> service_mod.HookService:
    container = request.app.state.container
    key = getattr(container.settings, "webhook_key", None)
    return service_mod.HookService(container.sessions, container.service.clock,
                                   key.get_secret_value() if key else None)


def _answer(info: service_mod.HookInfo) -> HookAnswer:
    d: dict[str, Any] = info.definition
    http = d.get("kind") == "http"
    return HookAnswer(
        name=info.name, kind=d["kind"], points=list(d.get("points") or []), on_failure=d.get("onFailure", "fail"),
        timeout_seconds=int(d.get("timeoutSeconds", 60)), command=d.get("command"),
        method=d.get("method") if http else None, url=d.get("url"), headers=dict(d.get("headers") or {}),
        secret_header_names=list(info.secret_header_names), headers_ref=d.get("headersRef"), body=d.get("body"),
        created_by=info.created_by, created_at=info.created_at, updated_by=info.updated_by,
        updated_at=info.updated_at)


@router.put("/hooks/{name}", response_model=HookAnswer, responses={201: {"model": HookAnswer,
            "description": "the hook was created"}, **WRITE})
def put_hook(alias: Alias, name: HookName, body: HookSpec, caller: Operator, request: Request,
             response: Response) -> HookAnswer:
    """Create or replace the hook `name`: a command on the server (`kind: command`) or an HTTP call from the
    orchestrator (`kind: http`), run at its `points` of every run of the account (or of the runs whose `hooks`
    parameter names it). 201 when created, 200 when replaced."""
    scope = own(caller, alias, f"account {alias} not found")
    info, created = _service(request).put(scope, name, body, caller.username)
    response.status_code = 201 if created else 200
    return _answer(info)


@router.get("/hooks", response_model=list[HookAnswer], responses=READ)
def list_hooks(alias: Alias, caller: Caller, request: Request) -> list[HookAnswer]:
    """The account's hooks, by name (never their secret headers)."""
    scope = own(caller, alias, f"account {alias} not found")
    return [_answer(info) for info in _service(request).list_hooks(scope)]


@router.get("/hooks/{name}", response_model=HookAnswer, responses=READ)
def get_hook(alias: Alias, name: HookName, caller: Caller, request: Request) -> HookAnswer:
    """One hook."""
    scope = own(caller, alias, f"hook {name} not found")
    return _answer(_service(request).get(scope, name))


@router.delete("/hooks/{name}", response_model=HookAnswer, responses=WRITE)
def delete_hook(alias: Alias, name: HookName, caller: Operator, request: Request) -> HookAnswer:
    """Delete the hook; runs already going keep the copy they started with. Answers the hook as it was."""
    scope = own(caller, alias, f"hook {name} not found")
    return _answer(_service(request).delete(scope, name, caller.username))
