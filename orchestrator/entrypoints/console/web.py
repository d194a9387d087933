"""What every console route shares: the Jinja2 templates (package files), who is logged in (the session
cookie, checked as a bearer token through the REST API's token cache), the CSRF check, the security headers,
and `ConsoleRoute`, which turns every refusal into an HTML page with its status (never JSON, never a trace)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from orchestrator.domain import naming
from orchestrator.entrypoints.console import charts, session, words
from orchestrator.entrypoints.rest import deps, errors
from orchestrator.services import auth
from orchestrator.services.errors import ServiceError

log = logging.getLogger(__name__)

PREFIX = session.COOKIE_PATH
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: datetime | None) -> str:
    """A time as the pages print it: UTC, to the second."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def ago(value: datetime | None, now: datetime) -> str:
    """`in 12 s` / `3 min ago` beside a time."""
    if value is None:
        return ""
    seconds = int((value - now).total_seconds())
    span = abs(seconds)
    text = f"{span} s" if span < 120 else f"{span // 60} min" if span < 7200 else f"{span // 3600} h"
    return f"in {text}" if seconds > 0 else f"{text} ago"


TEMPLATES = Environment(loader=PackageLoader("orchestrator.entrypoints.console", "templates"),
                        autoescape=select_autoescape(["html", "svg"]), trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters.update(when=when, hresult_words=words.hresult_words, result_words=words.result_code_words,
                         kb_url=words.kb_url)
TEMPLATES.globals.update(prefix=PREFIX, lane_colours=charts.LANE_COLOURS)


class LoginNeeded(Exception):
    """No session, or one that ended: the page sends the browser to the login form."""


def session_token(request: Request) -> str | None:
    return request.cookies.get(session.SESSION_COOKIE) or None


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


async def who(request: Request) -> auth.Principal:
    """The logged-in user (LoginNeeded when there is no live session)."""
    token = session_token(request)
    if token is None:
        raise LoginNeeded()
    tokens = deps.token_cache(request)
    principal = tokens.cached(token)
    if principal is None:
        try:
            principal = await run_in_threadpool(tokens.authenticate, token)
        except auth.Unauthorized:
            raise LoginNeeded() from None
    request.state.console_user = principal
    return principal


async def operator(request: Request) -> auth.Principal:
    """The logged-in user, who must hold an operator role (403 page otherwise)."""
    principal = await who(request)
    auth.require_operator(principal)
    return principal


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse (403) a form whose CSRF token is missing or not its session's."""
    if not session.csrf_ok(session_token(request), submitted):
        raise auth.Forbidden("this form has no valid CSRF token: reload the page and try again")


def page(request: Request, template: str, status_code: int = 200, who_: auth.Principal | None = None,
         **context: Any) -> HTMLResponse:
    """A rendered page with the security headers; logged-in pages get the user and the CSRF token."""
    token = session_token(request)
    body = TEMPLATES.get_template(template).render(
        request=request, user=who_, csrf=session.csrf_token(token) if token and who_ else "",
        csrf_field=session.CSRF_FIELD, **context)
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def error_page(request: Request, status: int, message: str) -> Response:
    if request.headers.get("x-requested-with") == "fetch":  # a live region asking: plain text
        return Response(message, status_code=status, media_type="text/plain; charset=utf-8",
                        headers=SECURITY_HEADERS)
    user = getattr(request.state, "console_user", None)
    titles = {400: "Bad request", 401: "Not logged in", 403: "Not allowed", 404: "Not found", 409: "Conflict",
              429: "Too many attempts", 503: "Unavailable"}
    return page(request, "error.html", status, user, title=titles.get(status, "Error"), status=status,
                message=message)


class ConsoleRoute(APIRoute):
    """Every console route: a missing session redirects to the login form (401 for a live region), and every
    refusal is an HTML page with the REST API's status and message."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginNeeded:
                if request.headers.get("x-requested-with") == "fetch":
                    return Response("log in again", status_code=401, media_type="text/plain; charset=utf-8")
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                from urllib.parse import quote

                return redirect(f"{PREFIX}/login?next={quote(session.safe_next(target), safe='/')}")
            except ServiceError as exc:
                return error_page(request, exc.status, exc.message)
            except naming.NamingError as exc:
                return error_page(request, 404, str(exc))
            except RequestValidationError as exc:
                return error_page(request, 400, errors.validation_message(exc.errors()))
            except (OperationalError, PoolTimeout) as exc:
                log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
                return error_page(request, 503, errors.DATABASE_DOWN)
            except Exception as exc:  # noqa: BLE001 - a bug: logged with its trace, the page says only that
                log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
                return error_page(request, 500, errors.INTERNAL_ERROR)

        return route
