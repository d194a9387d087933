"""The FastAPI app: `create_app(container)` for tests and embedders, `build_app_from_settings()` for uvicorn.
Nothing is built or connected at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from importlib import metadata
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from orchestrator.bootstrap import Container
from orchestrator.entrypoints import console
from orchestrator.entrypoints.rest import compliance, errors, health, observability, reports, routes, ssh_hosts
from orchestrator.entrypoints.rest import hooks as hook_routes
from orchestrator.entrypoints.rest import webhooks as webhook_routes
from orchestrator.services import auth
from orchestrator.settings import Settings

TITLE = "patchaas"
DESCRIPTION = (
    "Patching-as-a-Service in CenturyLink Cloud's API v2 contract: log in, execute the update package on "
    "servers or groups, poll the queue status, read a server's patch summary and an execution's detail, "
    "cancel. Every error is `{\"message\": \"...\"}`. See docs/API.md."
)


def _version() -> str:
    try:
        return metadata.version("patchaas")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(container: Container, *, auth_service: auth.AuthService | None = None,
               owns_container: bool = False) -> FastAPI:
    """The REST app over a wired container; with `owns_container` the container is closed at shutdown."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_container:
                container.close()

    app = FastAPI(title=TITLE, version=_version(), description=DESCRIPTION, lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name)
    app.state.container = container
    app.state.auth = auth_service or auth.AuthService(
        container.sessions, container.service.clock, timedelta(seconds=container.settings.token_ttl_seconds)
    )
    errors.install(app)
    observability.install(app)  # GET /metrics, request metrics and spans (orchestrator/observability)
    app.include_router(routes.v2)
    app.include_router(routes.patching)
    app.include_router(health.router)  # /healthz, /readyz (no token)
    app.include_router(compliance.router)
    app.include_router(reports.router)  # the update package's report channel (orchestrator/services/reports.py)
    app.include_router(ssh_hosts.router)  # operators register Linux servers' SSH details
    app.include_router(webhook_routes.router)  # webhook subscriptions and the event history (docs/HOOKS.md)
    app.include_router(hook_routes.router)  # pre/post hooks per account (docs/HOOKS.md)
    app.include_router(console.router)  # the operator console at /console (docs/CONSOLE.md)

    def openapi() -> dict[str, Any]:
        """FastAPI's document without its 422 answers: bad input is a 400 with a message here."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def build_app_from_settings(settings: Settings | None = None) -> FastAPI:
    """The app of a deployment (uvicorn factory): settings from PATCHAAS_*, work handed to Celery."""
    from orchestrator import bootstrap
    from workers.app import create_app as create_celery_app
    from workers.dispatch import CeleryDispatcher

    settings = settings or Settings()
    container = bootstrap.build(settings, dispatcher=CeleryDispatcher(create_celery_app(settings)))
    return create_app(container, owns_container=True)
