"""The console's read pages: the fleet overview (and its live region), a server's history, an execution's
detail with its timeline, rollouts, windows on a month calendar, compliance, and the CSV downloads. Every one
reads through the service layer the REST API uses, scoped to the user's account."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from markupsafe import Markup

from orchestrator.domain import schedules
from orchestrator.entrypoints.console import charts, csv_export
from orchestrator.entrypoints.console.fragments import Fragments
from orchestrator.entrypoints.console.web import TEMPLATES, ConsoleRoute, ago, page, redirect, who
from orchestrator.entrypoints.rest.bodies import EXECUTION_PATTERN, GROUP_PATTERN, SERVER_PATTERN
from orchestrator.services import auth, compliance, fleet_view
from orchestrator.services import windows as windows_mod
from orchestrator.services.answers import DETAIL_JSON, SUMMARY_JSON
from orchestrator.services.patching import PatchService
from schemas.patching import ExecutionDetail, ExecutionSummary

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
User = Annotated[auth.Principal, Depends(who)]
Server = Annotated[str, Path(pattern=SERVER_PATTERN, max_length=32)]
Execution = Annotated[str, Path(pattern=EXECUTION_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(pattern=EXECUTION_PATTERN)]
Groups = Annotated[list[Annotated[str, Query(pattern=GROUP_PATTERN, max_length=32)]] | None, Query(max_length=100)]
CSV_MAX = 10_000  # executions in one history download
FRAGMENTS = Fragments()  # ended executions' rows, patch tables and timelines (fragments.py)


def service_of(request: Request) -> PatchService:
    return request.app.state.container.service  # type: ignore[no-any-return]


def csv_response(text: str, filename: str) -> Response:
    return Response(text, media_type=csv_export.MEDIA_TYPE,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store",
                             "X-Content-Type-Options": "nosniff"})


def history_page(service: PatchService, alias: str, server: str, limit: int,
                 cursor: str | None) -> tuple[list[ExecutionSummary], str | None]:
    """A page of the summary from the REST API's cached JSON (`history_json`), and the next page's cursor."""
    items = service.history_json(alias, server, limit=limit + 1, before=cursor)
    page_ = [SUMMARY_JSON.validate_json(body) for _, body in items[:limit]]
    return page_, (items[limit - 1][0] if len(items) > limit else None)


def history_rows(service: PatchService, alias: str, server: str, limit: int,
                 cursor: str | None) -> tuple[list[Markup], str | None]:
    """A page of the summary as table rows: an ended execution's row is rendered once per process (keyed by
    the cached JSON the service answers for it), a running one each time."""
    items = service.history_json(alias, server, limit=limit + 1, before=cursor)
    rows: list[Markup] = []
    template = TEMPLATES.get_template("_history_row.html")
    for _, body in items[:limit]:
        row = FRAGMENTS.get("row", body)
        if row is None:
            item = SUMMARY_JSON.validate_json(body)
            row = Markup(template.render(item=item))
            if item.end_time is not None:
                FRAGMENTS.put("row", body, row, len(row))
        rows.append(row)
    return rows, (items[limit - 1][0] if len(items) > limit else None)


def detail_of(service: PatchService, alias: str, server: str, execution_id: str) -> ExecutionDetail:
    """The detail from the REST API's cached JSON (`detail_json`)."""
    return DETAIL_JSON.validate_json(service.detail_json(alias, server, execution_id))


def detail_page_parts(service: PatchService, alias: str, server: str,
                      execution_id: str) -> tuple[ExecutionDetail, Markup, Markup]:
    """The detail, its patch rows and its timeline; rendered once per process for an ended execution."""
    body = service.detail_json(alias, server, execution_id)  # the account's, or NotFound
    kept = FRAGMENTS.get("detail", body)
    if kept is not None:
        return kept  # type: ignore[no-any-return]
    detail = DETAIL_JSON.validate_json(body)
    transitions = fleet_view.events(service, alias, server, execution_id)
    found = charts.steps(detail.start_time, detail.end_time, service.clock(),
                         [(t.at, t.from_state, t.to_state, t.cycle) for t in transitions])
    timeline = Markup(TEMPLATES.get_template("_timeline.html").render(timeline=charts.timeline(found), detail=detail))
    patches = Markup(TEMPLATES.get_template("_patch_rows.html").render(detail=detail))
    parts = (detail, patches, timeline)
    if detail.end_time is not None:
        FRAGMENTS.put("detail", body, parts, len(body) + len(patches) + len(timeline))
    return parts


@router.get("/")
async def home() -> Response:
    return redirect("/console/overview")


@router.get("/overview")
def overview(request: Request, user: User) -> Response:
    service = service_of(request)
    now = service.clock()
    view = fleet_view.fleet(service, user.account_alias, now)
    return page(request, "overview.html", who_=user, view=view, now=now, donut=charts.donut(view.compliance.counts()),
                runs=view.runs, ago=lambda t: ago(t, now))


@router.get("/overview/runs")
def overview_runs(request: Request, user: User) -> Response:
    """The live region of the overview: the runs in flight and those just ended (polled by console.js)."""
    service = service_of(request)
    now = service.clock()
    found = fleet_view.runs(service, user.account_alias, now)
    return page(request, "_runs.html", who_=user, runs=found, now=now, ago=lambda t: ago(t, now))


@router.get("/servers/{server}")
def server_history(request: Request, user: User, server: Server, limit: Limit = 50, cursor: Cursor = None) -> Response:
    """The seed's summary screen, paginated like the REST answer (limit, cursor)."""
    service = service_of(request)
    info = service.server(user.account_alias, server)
    rows, following = history_rows(service, user.account_alias, server, limit, cursor)
    return page(request, "history.html", who_=user, server=info, rows=rows, limit=limit, cursor=cursor,
                following=following)


@router.get("/servers/{server}/history.csv")
def server_history_csv(request: Request, user: User, server: Server) -> Response:
    service = service_of(request)
    items: list[ExecutionSummary] = []
    cursor: str | None = None
    while len(items) < CSV_MAX:
        chunk, cursor = history_page(service, user.account_alias, server, 200, cursor)
        items += chunk
        if cursor is None:
            break
    name = items[0].server if items else server.upper()
    return csv_response(csv_export.history_csv(items), f"{name}-history.csv")


@router.get("/servers/{server}/executions/{execution_id}")
def execution_detail(request: Request, user: User, server: Server, execution_id: Execution) -> Response:
    """The seed's detail screen, and the timeline of the run's steps."""
    service = service_of(request)
    detail, patch_rows, timeline = detail_page_parts(service, user.account_alias, server, execution_id)
    rollout_id = service.rollout_of(user.account_alias, detail.execution_id)
    return page(request, "detail.html", who_=user, detail=detail, patch_rows=patch_rows, timeline_html=timeline,
                rollout_id=rollout_id)


@router.get("/servers/{server}/executions/{execution_id}/patches.csv")
def execution_patches_csv(request: Request, user: User, server: Server, execution_id: Execution) -> Response:
    detail = detail_of(service_of(request), user.account_alias, server, execution_id)
    return csv_response(csv_export.patches_csv(detail), f"{detail.execution_id}-patches.csv")


@router.get("/compliance")
def compliance_page(request: Request, user: User, group: Groups = None) -> Response:
    found = compliance.for_account(service_of(request), user.account_alias, group or ())
    return page(request, "compliance.html", who_=user, found=found, groups=group or [],
                donut=charts.donut(found.counts()))


@router.get("/compliance.csv")
def compliance_csv(request: Request, user: User, group: Groups = None) -> Response:
    found = compliance.for_account(service_of(request), user.account_alias, group or ())
    return csv_response(csv_export.compliance_csv(found), f"{found.alias}-compliance.csv")


@router.get("/rollouts/{rollout_id}")
def rollout(request: Request, user: User, rollout_id: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> Response:
    """A rollout's limits, state, why it stopped, and its executions wave by wave."""
    service = service_of(request)
    info = service.rollout(user.account_alias, rollout_id)
    members = fleet_view.rollout_members(service, user.account_alias, rollout_id)
    waves: dict[int, list[fleet_view.MemberRow]] = {}
    for m in members:
        waves.setdefault(m.wave, []).append(m)
    return page(request, "rollout.html", who_=user, rollout=info, waves=sorted(waves.items()))


@router.get("/windows")
def windows(request: Request, user: User, month: Annotated[str | None, Query(max_length=7)] = None) -> Response:
    """The account's windows, their next occurrences on a month calendar, and pause/resume buttons."""
    service = service_of(request)
    now = service.clock()
    found = windows_mod.WindowService(service).list_windows(user.account_alias)
    year, month_ = charts.parse_month(month, now)
    first, following = charts.month_bounds(year, month_)
    entries = []
    for w in found:
        if not w.enabled or following <= now:
            continue
        schedule = schedules.schedule_of(w.schedule_kind, w.schedule)
        starts = schedules.occurrences(schedule, schedules.zone(w.timezone), max(first, now) - timedelta(seconds=1),
                                       following)
        entries += [(w.name, at, w.id) for at in starts if first <= at < following]
    calendar = charts.month(year, month_, now.date(), entries)
    return page(request, "windows.html", who_=user, windows=found, month=calendar)


@router.get("/windows/{window_id}")
def window(request: Request, user: User, window_id: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> Response:
    info = windows_mod.WindowService(service_of(request)).get(user.account_alias, window_id)
    return page(request, "window.html", who_=user, window=info)
