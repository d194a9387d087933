"""The REST API's metrics and spans: `GET /metrics` (Prometheus text; every uvicorn worker process's numbers
when PROMETHEUS_MULTIPROC_DIR is set, as `patchaas api --workers N` does) and one ASGI middleware that counts
and times every request by method, route template (never the raw path: no server name or execution id in a
label) and status, counts logins and report-channel posts by outcome, and opens a span per request when
traces are on (its parent the caller's `traceparent` header).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from orchestrator.observability import exporter, metrics, tracing

LOGIN = {200: "ok", 429: "throttled"}  # any other 4xx: bad_credentials; 5xx: error
REPORT = {201: "recorded", 200: "replayed", 400: "invalid", 401: "unauthorized", 404: "not_found", 409: "conflict",
          413: "too_large", 503: "unavailable"}


def install(app: FastAPI) -> None:
    """The middleware and `GET /metrics` (not in the OpenAPI document; no token, like /healthz)."""
    app.add_middleware(ObservedRequests)
    registry: list[Any] = []

    def scrape() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if not registry:
            registry.append(exporter.registry())
        return Response(generate_latest(registry[0]), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False, name="metrics")


def route_of(scope: dict[str, Any]) -> tuple[str, str]:
    """(route template, route name) of a request once routed; `unmatched` for a 404 of no route."""
    route = scope.get("route")
    return (getattr(route, "path", None) or "unmatched", getattr(route, "name", "") or "")


def record(method: str, scope: dict[str, Any], status: int, seconds: float) -> None:
    template, name = route_of(scope)
    metrics.HTTP_REQUESTS.labels(method, template, str(status)).inc()
    metrics.HTTP_SECONDS.labels(method, template).observe(seconds)
    if name == "login":
        metrics.LOGINS.labels(LOGIN.get(status, "error" if status >= 500 else "bad_credentials")).inc()
    elif name == "post_report":
        metrics.REPORT_POSTS.labels(REPORT.get(status, "error")).inc()


class ObservedRequests:
    """Pure ASGI (no per-request task or body copy, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        for outcome in ("ok", "bad_credentials", "throttled", "error"):
            metrics.LOGINS.labels(outcome)  # every series from the start, at 0
        for outcome in (*REPORT.values(), "error"):
            metrics.REPORT_POSTS.labels(outcome)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        method = scope.get("method", "GET")
        try:
            if tracing.enabled():
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
                with tracing.span(f"{method}", {"http.request.method": method}, parent=headers.get("traceparent"),
                                  kind="server") as span:
                    await self.app(scope, receive, sending)
                    span.update_name(f"{method} {route_of(scope)[0]}")
                    span.set_attribute("http.route", route_of(scope)[0])
                    span.set_attribute("http.response.status_code", status[0])
            else:
                await self.app(scope, receive, sending)
        finally:
            record(method, scope, status[0], time.perf_counter() - started)
