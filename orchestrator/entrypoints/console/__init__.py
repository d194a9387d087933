"""The operator console at /console: server-rendered pages (Jinja2 templates, package files) over the service
layer the REST API uses, served by the same FastAPI app (`patchaas api`). See docs/CONSOLE.md."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from orchestrator.entrypoints.console import actions, pages
from orchestrator.entrypoints.console.web import PREFIX, ConsoleRoute, error_page

STATIC = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


@cache
def static_file(name: str) -> bytes:
    return resources.files("orchestrator.entrypoints.console").joinpath("static", name).read_bytes()


@router.get("/static/{name}")
async def static(name: Annotated[str, Path(max_length=40)]) -> Response:
    """The console's own script and style sheet (vendored: no CDN, the pages work offline)."""
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(static_file(name), media_type=STATIC[name],
                    headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


router.include_router(actions.router)
router.include_router(pages.router)


@router.get("")
async def bare() -> Response:
    return Response(status_code=307, headers={"Location": f"{PREFIX}/overview"})


@router.api_route("/{rest:path}", methods=["GET", "POST"])
async def unknown(request: Request, rest: str) -> Response:
    """Any other console address: the HTML 404 page."""
    return error_page(request, 404, f"no console page at {request.url.path}")
