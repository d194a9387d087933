"""Liveness and readiness, for load balancers, Kubernetes probes and docker-compose health checks. Neither
needs a token, and neither says anything about accounts: readiness names the dependency that is down."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from orchestrator.services import health

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the API process answers")
def healthz() -> dict[str, str]:
    """200 while the process serves requests; it checks nothing else (a dead database must not make an
    orchestrator restart its API processes in a loop: that is what `/readyz` is for)."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database (migrated) and the broker answer",
            responses={503: {"description": "a dependency is down; `message` names it"}})
async def readyz(request: Request) -> JSONResponse:
    """200 when the database answers at this release's migration and the broker accepts a connection;
    503 with a `message` naming what is not, and the checks, otherwise."""
    container = request.app.state.container
    checks = await run_in_threadpool(health.readiness, container.sessions, container.settings.broker_url)
    body: dict[str, Any] = {"checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "seconds": c.seconds}
                                       for c in checks]}
    failed = [c for c in checks if not c.ok]
    if failed:
        body["message"] = "not ready: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
        return JSONResponse(body, status_code=503)
    body["status"] = "ready"
    return JSONResponse(body)
