"""The console's forms: log in and out, patch servers or groups (selection parameters, rate control), cancel an
execution, pause and resume a window. Every form carries its CSRF token; every one is validated as the REST
API validates the same request (forms.py) and refused beside its field with the REST message."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from orchestrator.domain import packages
from orchestrator.entrypoints.console import forms, session
from orchestrator.entrypoints.console.pages import Execution, Server, service_of
from orchestrator.entrypoints.console.web import (
    ConsoleRoute,
    check_csrf,
    error_page,
    is_https,
    operator,
    page,
    redirect,
    session_token,
    who,
)
from orchestrator.entrypoints.rest import deps
from orchestrator.services import auth
from orchestrator.services import windows as windows_mod
from orchestrator.services.errors import Conflict, ServiceError
from schemas import selection

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
User = Annotated[auth.Principal, Depends(who)]
Operator = Annotated[auth.Principal, Depends(operator)]
WindowId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def console_auth(request: Request) -> auth.AuthService:
    """The app's AuthService with the console's session lifetime (same users, hasher and throttling)."""
    base = deps.auth_service(request)
    cached: auth.AuthService | None = getattr(request.app.state, "console_auth", None)
    if cached is None or cached.sessions is not base.sessions or cached.hasher is not base.hasher:
        cached = auth.AuthService(base.sessions, base.clock, session.SESSION_TTL, hasher=base.hasher)
        request.app.state.console_auth = cached
    return cached


def _login_form(request: Request, status: int = 200, username: str = "", message: str | None = None,
                next_: str = "") -> Response:
    token = session.new_login_token()
    response = page(request, "login.html", status, None, login_csrf=token, username=username, message=message,
                    next=session.safe_next(next_))
    response.set_cookie(session.LOGIN_COOKIE, token, **session.cookie_options(is_https(request)))  # type: ignore[arg-type]
    return response


@router.get("/login")
async def login_form(request: Request, next: str = "") -> Response:  # noqa: A002 - the query parameter's name
    return _login_form(request, next_=next)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    next_ = str(form.get("next", ""))
    if not session.login_csrf_ok(request.cookies.get(session.LOGIN_COOKIE), str(form.get(session.CSRF_FIELD, ""))):
        return _login_form(request, 403, username, "this form has no valid CSRF token: try again", next_)
    if not username or not password:
        return _login_form(request, 400, username, "give your username and your password", next_)
    try:
        done = await run_in_threadpool(console_auth(request).login, username[:200], password[:auth.MAX_PASSWORD])
    except ServiceError as exc:  # CLC's one message for bad credentials; 429 when throttled
        return _login_form(request, exc.status, username, exc.message, next_)
    response = redirect(session.safe_next(next_))
    response.set_cookie(session.SESSION_COOKIE, done.token,
                        **session.cookie_options(is_https(request), session.SESSION_TTL))  # type: ignore[arg-type]
    response.delete_cookie(session.LOGIN_COOKIE, path=session.COOKIE_PATH)
    return response


@router.post("/logout")
async def logout(request: Request, user: User) -> Response:
    form = await request.form()
    check_csrf(request, str(form.get(session.CSRF_FIELD, "")))
    token = session_token(request)
    tokens = deps.token_cache(request)
    try:
        await run_in_threadpool(tokens.auth.logout, token)
    except auth.Unauthorized:
        pass
    tokens.forget(token)
    response = redirect("/console/login")
    response.delete_cookie(session.SESSION_COOKIE, path=session.COOKIE_PATH, httponly=True, samesite="strict",
                           secure=is_https(request))
    return response


# --- actions -------------------------------------------------------------------------------------


def _actions_page(request: Request, user: auth.Principal, form: forms.ActionForm, status: int = 200) -> Response:
    return page(request, "actions.html", status, user, form=form, packages=list(packages.PACKAGES.values()),
                classifications=[c.value for c in selection.Classification],
                severities=[s.value for s in selection.MsrcSeverity],
                reboot_policies=[r.value for r in selection.RebootPolicy])


@router.get("/actions")
async def actions_form(request: Request, user: User, group: str = "", server: str = "") -> Response:
    values = forms.empty_values()
    if server:
        values.update(target="servers", servers=server[:64])
    elif group:
        values.update(groups=group[:32])
    return _actions_page(request, user, forms.ActionForm(values=values, target=values["target"]))


def _values(form: Any) -> dict[str, Any]:
    values = forms.empty_values()
    for name in forms.TEXT_FIELDS:
        values[name] = str(form.get(name, ""))[:100_000]
    values["classifications"] = [str(v) for v in form.getlist("classifications")]
    values["severities"] = [str(v) for v in form.getlist("severities")]
    values["scanOnly"] = str(form.get("scanOnly", "")) in ("on", "true", "1")
    return values


@router.post("/actions")
async def execute(request: Request, user: Operator) -> Response:
    raw = await request.form()
    check_csrf(request, str(raw.get(session.CSRF_FIELD, "")))
    form = forms.action_form(_values(raw))
    if not form.valid:
        return _actions_page(request, user, form, 400)
    service = service_of(request)
    assert form.package is not None
    try:
        if form.target == "servers":
            answers = await run_in_threadpool(service.execute_package, user.account_alias, form.names, form.package,
                                              user.username, form.rate)
        else:
            answers = await run_in_threadpool(service.execute_package_on_groups, user.account_alias, form.names,
                                              form.package, user.username, form.rate)
    except ServiceError as exc:
        forms.service_refusal(form, exc)
        return _actions_page(request, user, form, exc.status)
    first = next((a.execution_id for a in answers if a.is_queued and a.execution_id), None)
    rollout_id = None
    if first is not None and form.rate is not None:
        rollout_id = await run_in_threadpool(service.rollout_of, user.account_alias, first)
    return page(request, "queued.html", who_=user, answers=answers, rollout_id=rollout_id, form=form)


@router.post("/servers/{server}/executions/{execution_id}/cancel")
async def cancel(request: Request, user: Operator, server: Server, execution_id: Execution) -> Response:
    raw = await request.form()
    check_csrf(request, str(raw.get(session.CSRF_FIELD, "")))
    reason, refusal = forms.cancel_reason(str(raw.get("reason", "")))
    if refusal is not None:
        return error_page(request, 400, refusal)
    service = service_of(request)
    try:
        detail = await run_in_threadpool(service.cancel, user.account_alias, server, execution_id, user.username,
                                         reason)
    except Conflict as exc:
        return error_page(request, 409, exc.message)
    return redirect(f"/console/servers/{detail.server}/executions/{detail.execution_id}")


async def _enable(request: Request, user: auth.Principal, window_id: int, enabled: bool) -> Response:
    raw = await request.form()
    check_csrf(request, str(raw.get(session.CSRF_FIELD, "")))
    windows = windows_mod.WindowService(service_of(request))
    await run_in_threadpool(windows.update, user.account_alias, window_id, {"enabled": enabled})
    back = str(raw.get("back", ""))
    return redirect(back if back in ("/console/windows", f"/console/windows/{window_id}") else "/console/windows")


@router.post("/windows/{window_id}/pause")
async def pause_window(request: Request, user: Operator, window_id: WindowId) -> Response:
    return await _enable(request, user, window_id, False)


@router.post("/windows/{window_id}/resume")
async def resume_window(request: Request, user: Operator, window_id: WindowId) -> Response:
    return await _enable(request, user, window_id, True)
