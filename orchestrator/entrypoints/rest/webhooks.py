"""Webhook subscriptions and the event history of an account (docs/HOOKS.md):

    POST   /v2/patchaas/{alias}/webhooks                        subscribe (201; the generated secret, once)
    GET    /v2/patchaas/{alias}/webhooks                        the account's subscriptions
    GET    /v2/patchaas/{alias}/webhooks/{webhookId}            one, with its delivery counts and last error
    DELETE /v2/patchaas/{alias}/webhooks/{webhookId}            unsubscribe (pending deliveries are dropped)
    POST   /v2/patchaas/{alias}/webhooks/{webhookId}/enable     enable again one that was disabled for failing
    GET    /v2/patchaas/{alias}/events?after=&limit=&kind=      the event history, oldest first

Authenticated like every /v2 route (bearer token; writes need an operator role); another account's
subscriptions answer 404. A secret is never answered after creation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import Field

from orchestrator.domain import webhooks as webhook_rules
from orchestrator.entrypoints.rest.bodies import EXECUTION_PATTERN, CamelModel
from orchestrator.entrypoints.rest.deps import READ, WRITE, Alias, Caller, Operator, error_response, own
from orchestrator.services import webhooks as service_mod

router = APIRouter(prefix="/v2/patchaas/{alias}", tags=["webhooks"])
WebhookId = Annotated[int, Path(alias="webhookId", ge=1, le=2**31 - 1, description="webhook id", examples=[1])]
MAX_EVENTS = 500


class WebhookRequest(CamelModel):
    """A subscription: where to POST which events, in which format, signed with which secret."""

    name: str = Field(min_length=1, max_length=100, examples=["ops-slack"])
    url: str = Field(min_length=8, max_length=2000, examples=["https://hooks.example.com/patchaas"])
    format: str = Field(default="json", description="json | slack | teams", examples=["json"])
    kinds: list[str] = Field(default_factory=lambda: ["*"], max_length=50,
                             description="event kinds, `family.*` or `*`", examples=[["run.ended", "kb.*"]])
    secret: str | None = Field(default=None, min_length=16, max_length=200,
                               description="the signing secret (sealed at rest); omitted: one is generated")
    secret_ref: str | None = Field(default=None, max_length=500, description="instead of a secret: env:NAME or "
                                   "file:/path, read by the workers when they sign", examples=["env:HOOK_SECRET"])


class WebhookAnswer(CamelModel):
    id: int
    name: str
    url: str
    format: str
    kinds: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    consecutive_failures: int
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    secret_ref: str | None
    created_by: str
    created_at: datetime
    deliveries: dict[str, int]
    secret: str | None = Field(default=None, description="the generated secret: in the creating answer only")


class EventAnswer(CamelModel):
    id: str = Field(description="the stable event id, as in X-Patchaas-Event-Id")
    sequence: int = Field(description="the `after` cursor of the next page")
    kind: str
    account: str
    execution_id: str | None
    actor: str | None
    created_at: str
    data: dict[str, Any]


def _service(request: Request) -> service_mod.WebhookService:
    container = request.app.state.container
    key = getattr(container.settings, "webhook_key", None)
    return service_mod.WebhookService(container.sessions, container.service.clock,
                                      key.get_secret_value() if key else None)


def _answer(info: service_mod.WebhookInfo) -> WebhookAnswer:
    return WebhookAnswer(
        id=info.id, name=info.name, url=info.url, format=info.format, kinds=list(info.kinds), enabled=info.enabled,
        disabled_reason=info.disabled_reason, disabled_at=info.disabled_at,
        consecutive_failures=info.consecutive_failures, failing_since=info.failing_since,
        last_success_at=info.last_success_at, last_failure_at=info.last_failure_at, last_error=info.last_error,
        secret_ref=info.secret_ref, created_by=info.created_by, created_at=info.created_at,
        deliveries=dict(info.counts), secret=info.secret)


CONFLICT = {409: error_response("the account already has a webhook of that name")}


@router.post("/webhooks", response_model=WebhookAnswer, response_model_exclude_none=False, status_code=201,
             responses={**WRITE, **CONFLICT})
def create_webhook(alias: Alias, body: WebhookRequest, caller: Operator, request: Request) -> WebhookAnswer:
    """Subscribe a URL to the account's events. Without `secret` or `secretRef` a secret is generated and
    answered here, once: keep it to verify `X-Patchaas-Signature`."""
    scope = own(caller, alias, f"account {alias} not found")
    spec = service_mod.WebhookSpec(name=body.name, url=body.url, format=body.format, kinds=body.kinds,
                                   secret=body.secret, secret_ref=body.secret_ref)
    return _answer(_service(request).create(scope, spec, caller.username))


@router.get("/webhooks", response_model=list[WebhookAnswer], responses=READ)
def list_webhooks(alias: Alias, caller: Caller, request: Request) -> list[WebhookAnswer]:
    """The account's subscriptions (never their secrets)."""
    scope = own(caller, alias, f"account {alias} not found")
    return [_answer(info) for info in _service(request).list_webhooks(scope)]


@router.get("/webhooks/{webhookId}", response_model=WebhookAnswer, responses=READ)
def get_webhook(alias: Alias, webhook_id: WebhookId, caller: Caller, request: Request) -> WebhookAnswer:
    """One subscription: enabled or why it was disabled, its last error and its deliveries by state."""
    scope = own(caller, alias, f"webhook {webhook_id} not found")
    return _answer(_service(request).get(scope, webhook_id))


@router.delete("/webhooks/{webhookId}", response_model=WebhookAnswer, responses=WRITE)
def delete_webhook(alias: Alias, webhook_id: WebhookId, caller: Operator, request: Request) -> WebhookAnswer:
    """Unsubscribe; deliveries not sent yet are dropped. Answers the subscription as it was."""
    scope = own(caller, alias, f"webhook {webhook_id} not found")
    return _answer(_service(request).delete(scope, webhook_id, caller.username))


@router.post("/webhooks/{webhookId}/enable", response_model=WebhookAnswer, responses=WRITE)
def enable_webhook(alias: Alias, webhook_id: WebhookId, caller: Operator, request: Request) -> WebhookAnswer:
    """Enable a subscription disabled for failing: its pending deliveries resume."""
    scope = own(caller, alias, f"webhook {webhook_id} not found")
    return _answer(_service(request).enable(scope, webhook_id, caller.username))


@router.get("/events", response_model=list[EventAnswer], tags=["events"], responses={
    200: {"description": "the events after `after`, oldest first", "headers": {
        "X-Next-After": {"schema": {"type": "integer"}, "description": "the `after` of the next page"}}},
    **READ})
def list_events(
    alias: Alias, caller: Caller, request: Request, response: Response,
    after: Annotated[int, Query(ge=0, le=2**62, description="the `sequence` of the last event seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS, description="events per page")] = 100,
    kind: Annotated[list[str] | None, Query(max_length=50, description="only these kinds (`family.*`)")] = None,
    execution_id: Annotated[str | None, Query(alias="executionId", pattern=EXECUTION_PATTERN)] = None,
) -> list[EventAnswer]:
    """The account's event history, the audit trail included: who requested and cancelled runs, who
    changed windows, users and webhooks, and every run's start, cycles, quarantines and end."""
    scope = own(caller, alias, f"account {alias} not found")
    events = _service(request).events(scope, after, limit, kind or (), execution_id)
    if events:
        response.headers["X-Next-After"] = str(events[-1].sequence)
    return [EventAnswer.model_validate(webhook_rules.envelope(e)) for e in events]
