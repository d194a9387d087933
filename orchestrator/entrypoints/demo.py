"""`patchaas demo`: a simulated fleet of a dozen Windows 2012 / 2012 R2 servers in nested groups, patched
end to end by the production tasks and state machine on the embedded default (SQLite + in-process
broker), with a live progress table, the summary and one execution's detail, and the emails received.

Two transports (`PATCHAAS_DEMO_TRANSPORT` or `--transport`): `inprocess` (the default) calls the simulated
fleet directly; `http` serves it with `patchaas simulator`'s app and serves the REST API, both on free
loopback ports in threads of this process, and patches through the `clc` driver over HTTP, the simulated
servers posting each cycle's report to the API's report channel. Neither needs PostgreSQL or Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from cryptography.fernet import Fernet
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.persistence import db, models
from orchestrator.services import inventory
from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings
from schemas.patching import PackageRequest
from simulation.mailsink import MailSink
from simulation.webhook_sink import Receiver

if TYPE_CHECKING:
    from orchestrator.bootstrap import Container
    from orchestrator.ports import Fleet
    from simulation.fleet import SimulatedFleet

ALIAS = "OSD"
GROUPS = (
    ("va1-0001", "OSD Production", None),
    ("va1-0002", "Web tier", "va1-0001"),
    ("va1-0003", "Data tier", "va1-0001"),
    ("va1-0004", "Reporting", "va1-0003"),
)


def _pause(seconds: float) -> None:
    """The progress display's refresh pause (a UI loop, not a task: tasks never wait)."""
    threading.Event().wait(seconds)


STATE_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow"}
TRANSPORTS = ("inprocess", "http")
DEMO_CHECKS = [{"name": "app", "kind": "service", "service": "W3SVC", "retries": 1, "retryDelaySeconds": 0.5}]
"""The demo run's health check (docs/HOOKS.md): on the server, through the driver (the simulated fleet's
`check_service`, or `run_command`: over HTTP the clc driver's script package, which the CLC simulator runs)."""
CLC_USER = ("demo", "demo-password")
WEBHOOK_SECRET = "whsec_demo_receiver"  # the demo receiver's own; a real one comes from `patchaas webhook add`


def demo_settings(workdir: Path, smtp_url: str) -> Settings:
    """Embedded default with timings that make a multi-reboot run last seconds instead of hours."""
    return Settings(
        database_url=f"sqlite:///{workdir / 'demo.db'}",
        broker_url="memory://localhost/",  # with a host: kombu warns "No hostname was supplied" otherwise
        smtp_url=smtp_url,
        sim_timings="demo",
        reboot_timeout_seconds=8,
        package_timeout_seconds=30,
        power_timeout_seconds=10,
        poll_interval_seconds=0.25,
        tick_seconds=0.5,
        redrive_seconds=3,
        lease_seconds=30,
        retry_backoff_seconds=0.5,
        busy_backoff_seconds=1.0,  # the INSTALLER_BUSY server waits seconds for its installer, not minutes
        settle_seconds=1.0,  # a reboot is settled after 1 s idle (the CONFIGURING_UPDATES server: 2 s busy first)
        # the demo's webhook receiver is on loopback, which production refuses unless told (docs/HOOKS.md)
        webhook_key=SecretStr(Fernet.generate_key().decode()),
        webhook_allow_private_addresses=True,
        webhook_retry_base_seconds=0.5,
        webhook_retry_max_seconds=2.0,
    )


class _LateApp:
    """An ASGI app whose routes arrive later: the REST API's port must be known (it goes into the settings
    as the report channel's base URL) before the container the API serves is built."""

    def __init__(self) -> None:
        self.app: Any = None

    def attach(self, container: Container) -> None:
        from orchestrator.entrypoints.rest import create_app

        self.app = create_app(container)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            from fastapi.responses import JSONResponse

            if scope["type"] == "http":  # 503: the package's report is retried
                await JSONResponse({"message": "starting"}, status_code=503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


@contextmanager
def _over_http(fleet: SimulatedFleet, settings: Settings) -> Iterator[tuple[Settings, Fleet, _LateApp, str]]:
    """The simulator (over `fleet`) and the REST API on free loopback ports; settings for the clc driver
    and the report channel; the driver."""
    from simulation import clc_app, clc_control_plane, clc_server
    from workers.fleet import clc

    simulator = clc_app.create_app(fleet, clc_control_plane.users_from(dict([CLC_USER]), ALIAS))
    api = _LateApp()
    with clc_server.running(simulator) as simulator_url, clc_server.running(api) as api_url:
        over_http = settings.model_copy(update={
            "fleet": "clc", "clc_base_url": simulator_url, "clc_username": CLC_USER[0],
            "clc_password": SecretStr(CLC_USER[1]), "clc_account_alias": ALIAS, "report_base_url": api_url,
            "clc_poll_interval_seconds": 0.2, "clc_rate_per_second": 200.0, "clc_rate_burst": 50,
            # results arrive by the report channel, which wakes the run; polling the fleet is the fallback
            "poll_interval_seconds": 1.0,
        })
        driver = clc.ClcFleet.from_settings(over_http)
        try:
            yield over_http, driver, api, simulator_url
        finally:
            driver.close()


def run(workdir: Path = Path("var"), timeout: float = 90.0, console: Console | None = None,
        transport: str | None = None, linux: bool = False) -> int:
    """Run the demo; returns a process exit code (0 when every server reached its expected end). With
    `linux`, real Linux test hosts are patched over SSH beside the simulated fleet
    (orchestrator/entrypoints/demo_linux.py; root needed: exit code 2 and a message otherwise)."""
    from contextlib import ExitStack

    from orchestrator.entrypoints import demo_linux
    from simulation import fleet as simulated
    from simulation.specs import demo_fleet_specs
    from simulation.store import MemoryStore

    console = console or Console()
    transport = transport or Settings().demo_transport
    if transport not in TRANSPORTS:
        console.print(f"[red]unknown demo transport {transport!r} (PATCHAAS_DEMO_TRANSPORT): "
                      f"choose {' or '.join(TRANSPORTS)}")
        return 2
    why = demo_linux.unavailable() if linux else None
    if why:
        console.print(f"[red]error:[/] {why}")
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    for leftover in workdir.glob("demo.db*"):
        leftover.unlink()
    specs = demo_fleet_specs()
    fleet = simulated.SimulatedFleet.create(
        specs, MemoryStore(), simulated.SimTimings.demo(), seed=7
    )
    with MailSink() as sink, Receiver(WEBHOOK_SECRET) as receiver, ExitStack() as hosts:
        settings = demo_settings(workdir, sink.url)
        real = hosts.enter_context(demo_linux.running_hosts(workdir, console)) if linux else None
        console.rule("[bold]patchaas demo")
        console.print(
            f"Embedded default: SQLite at {settings.database_url}, Celery on the in-process broker, "
            f"a simulated fleet of {len(specs)} servers, SMTP on {sink.url}, a webhook receiver on {receiver.url}."
        )
        if transport == "http":
            with _over_http(fleet, settings) as (over_http, driver, api, simulator_url):
                console.print(
                    f"Over HTTP: the CLC simulator on {simulator_url} (clc driver), the REST API on "
                    f"{over_http.report_base_url} (the servers post each cycle's report to its report channel)."
                )
                finished, queued = _patch(over_http, real.fleet(over_http, driver) if real else driver, specs,
                                          timeout, console, (sink, receiver), api.attach, real)
        else:
            finished, queued = _patch(settings, real.fleet(settings, fleet) if real else fleet, specs, timeout,
                                      console, (sink, receiver), None, real)
        console.print(f"\nEmails received by the SMTP server: {len(sink.messages)} "
                      f"(one start and one end per execution expected: {2 * len(queued)})")
    if not finished:
        console.print("[red]Some executions did not finish in time.")
        return 1
    console.print(f"[bold green]Demo complete.[/] The database stays at {workdir / 'demo.db'}.")
    return 0


def _patch(settings: Settings, fleet: Fleet, specs: list[Any], timeout: float, console: Console,
           sinks: tuple[MailSink, Receiver], on_container: Callable[[Container], None] | None,
           linux: Any = None) -> tuple[bool, list[Any]]:
    """Register the fleet, run the group action and watch it; (every execution finished, the queued ones)."""
    from orchestrator.services.webhooks import WebhookService, WebhookSpec
    from workers.embedded import embedded

    sink, receiver = sinks

    with embedded(settings, fleet=fleet) as container:
        if on_container is not None:
            on_container(container)
        with container.sessions.begin() as session:
            now = db.utcnow()
            inventory.ensure_account(session, ALIAS, "OSD Demo", "VA1", "ops@osd.example", now)
            for gid, name, parent in GROUPS:
                inventory.ensure_group(session, ALIAS, gid, name, parent)
            inventory.register_servers(
                session,
                ALIAS,
                (
                    inventory.ServerSpec(s.name, s.os_type, s.power_state.value, GROUPS[i % len(GROUPS)][0])
                    for i, s in enumerate(specs)
                ),
            )
            if linux is not None:  # demo_linux.LinuxDemo: real hosts over SSH
                linux.register(session, ALIAS, now)
        keys = settings.webhook_key.get_secret_value() if settings.webhook_key else None
        WebhookService(container.sessions, db.utcnow, keys).create(
            ALIAS, WebhookSpec(name="demo-receiver", url=receiver.url, secret=WEBHOOK_SECRET), "demo")
        console.print(f"\nGroup action: execute package {DEFAULT_PACKAGE_ID} on va1-0001 (and nested groups)")
        on_server = hasattr(fleet, "check_service") or hasattr(fleet, "run_command")
        checks = {"healthChecks": DEMO_CHECKS} if on_server else {}
        if checks:
            console.print("  with a health check: service W3SVC running, before maintenance and after the last cycle")
        answers = container.service.execute_package_on_groups(
            ALIAS, ["va1-0001"], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=checks), requested_by="demo"
        )
        if linux is not None:
            answers = [*answers, *linux.execute(container, ALIAS, console)]
        for answer in answers:
            if not answer.is_queued:
                console.print(f"  [yellow]{answer.server}: refused[/] — {answer.error_message}")
        queued = [a for a in answers if a.is_queued]
        console.print(f"  {len(queued)} servers queued, {len(answers) - len(queued)} refused\n")
        finished = _watch(container.sessions, [a.execution_id for a in queued if a.execution_id],
                          timeout, console)
        _show_results(container, queued, console)
        _show_settle_and_health(container, queued, console)
        if linux is not None:
            for server, packages_now in linux.installed().items():
                console.print(f"  {server} (read inside the host): {packages_now}")
        if settings.report_base_url:
            _show_reports(container, console)
        deadline = time.monotonic() + 10
        ids = {a.execution_id for a in queued}
        while time.monotonic() < deadline and (len(sink.messages) < 2 * len(queued) or not ids <= _ended(receiver)):
            _pause(0.2)
        _show_webhooks(receiver, console)
    return finished, queued


def _ended(receiver: Receiver) -> set[str]:
    return {r.doc.get("executionId") for r in receiver.got() if r.valid and r.doc.get("kind") == "run.ended"}


def _show_webhooks(receiver: Receiver, console: Console) -> None:
    """What the demo's webhook receiver got: every event of the run, each signature verified (docs/HOOKS.md)."""
    got = [r for r in receiver.got() if r.valid]
    table = Table(title=f"Webhook receiver {receiver.url}: {len(got)} events, every signature verified")
    for column in ("Event", "Count", "Example"):
        table.add_column(column, overflow="fold")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        by_kind.setdefault(r.doc["kind"], []).append(r.doc)
    for kind, docs in sorted(by_kind.items()):
        first = docs[0]
        data = first.get("data") or {}
        example = " ".join(str(v) for v in (data.get("server"), first.get("executionId"),
                                            data.get("status") or data.get("kb") or data.get("reason")) if v)
        table.add_row(kind, str(len(docs)), example[:80])
    console.print(table)


def _show_reports(container: Container, console: Console) -> None:
    """How the cycles' results arrived over HTTP."""
    with container.sessions() as session:
        recorded = session.scalar(sa.select(sa.func.count()).select_from(models.CycleReportRecord)) or 0
        cycles = session.scalar(sa.select(sa.func.count()).select_from(models.Initiation)) or 0
    fleet = container.fleet
    console.print(
        f"Report channel: the servers posted {recorded} cycle reports over HTTP for {cycles} cycles; the engine "
        f"took {getattr(fleet, 'from_channel', 0)} cycle results from the reports and "
        f"{getattr(fleet, 'from_fleet', 0)} from polling the fleet (a report that had not arrived yet)."
    )


def _progress(sessions: sa.orm.sessionmaker[sa.orm.Session], ids: list[str]) -> tuple[Table, bool]:
    table = Table(title="Patching progress", expand=False)
    for column in ("Server", "Execution", "State", "Cycle", "Installed", "Failed", "Note"):
        table.add_column(column)
    with sessions() as session:
        rows = session.scalars(
            sa.select(models.Execution).where(models.Execution.id.in_(ids)).order_by(models.Execution.server_name)
        ).all()
        failed = dict(
            session.execute(
                sa.select(models.Patch.execution_id, sa.func.count())
                .where(models.Patch.execution_id.in_(ids), models.Patch.status == "failed")
                .group_by(models.Patch.execution_id)
            ).all()
        )
    for row in rows:
        style = STATE_STYLE.get(row.state, "cyan")
        note = row.failure_reason or row.reboot_reason or ""
        table.add_row(
            row.server_name, row.id, f"[{style}]{row.state}[/]", str(row.cycle), str(row.installed_count),
            str(failed.get(row.id, 0)), note[:70],
        )
    done = bool(rows) and all(r.ended_at is not None for r in rows)
    return table, done


def _watch(sessions: sa.orm.sessionmaker[sa.orm.Session], ids: list[str], timeout: float,
           console: Console) -> bool:
    deadline = time.monotonic() + timeout
    table, done = _progress(sessions, ids)
    with Live(table, console=console, refresh_per_second=4, transient=False) as live:
        while not done and time.monotonic() < deadline:
            _pause(0.25)
            table, done = _progress(sessions, ids)
            live.update(table)
    if not console.is_terminal:  # Live ends its last frame with a newline only on a terminal
        console.line()
    return done


def _show_results(container: object, queued: list, console: Console) -> None:  # type: ignore[type-arg]
    from orchestrator.bootstrap import Container

    assert isinstance(container, Container)
    service = container.service
    # the server with the most cycles makes the best example
    details = [service.detail(ALIAS, a.server, a.execution_id) for a in queued]
    example = max(details, key=lambda d: (d.status == "completed", d.cycles))
    history = service.history(ALIAS, example.server)
    summary = Table(title=f"Summary: GET /rest/servers/{ALIAS}/server/{example.server}/patch")
    for column in ("execution_id", "status", "start_time", "end_time", "init", "init_end_message"):
        summary.add_column(column, overflow="fold")
    for item in history:
        for init in item.init_messages:
            summary.add_row(item.execution_id, item.status, f"{item.start_time:%H:%M:%S}",
                            f"{item.end_time:%H:%M:%S}" if item.end_time else "", str(init.cycle),
                            (init.init_end_message or "")[:90])
    console.print(summary)
    detail = Table(title=f"Detail: GET …/patch/{example.execution_id} — {example.status}, "
                         f"duration {example.duration}, {example.installed_count} installed")
    for column in ("cycle", "KB", "patch_begin_message", "patch_end_message", "status"):
        detail.add_column(column, overflow="fold")
    for patch in example.patches:
        detail.add_row(str(patch.cycle), patch.kb, patch.patch_begin_message[:80], patch.patch_end_message or "",
                       patch.status)
    console.print(detail)
    ends = Table(title="How each execution ended")
    for column in ("Server", "Execution", "Status", "Cycles", "Installed", "Reason"):
        ends.add_column(column, overflow="fold")
    for d in sorted(details, key=lambda d: d.server):
        ends.add_row(d.server, d.execution_id, d.status, str(d.cycles), str(d.installed_count),
                     d.failure_reason or "")
    console.print(ends)


def _show_settle_and_health(container: Container, queued: list[Any], console: Console) -> None:
    """Issue 14 in the demo: the reboots waited out while a server was still configuring updates, and the health
    checks that caught a service that did not come back."""
    ids = [a.execution_id for a in queued if a.execution_id]
    with container.sessions() as session:
        waits = session.execute(
            sa.select(models.Execution.server_name, sa.func.count())
            .join(models.ExecutionEvent, models.ExecutionEvent.execution_id == models.Execution.id)
            .where(models.Execution.id.in_(ids), models.ExecutionEvent.to_state == "settling",
                   models.ExecutionEvent.note.contains("configuring updates"))
            .group_by(models.Execution.server_name)).all()
    for server, times in sorted(waits):
        console.print(f"Settled: {server} answered after its reboot but was still configuring updates; the run "
                      f"waited for its servicing stack {times} time(s) before the next step", soft_wrap=True)
    for answer in queued:
        detail = container.service.detail(ALIAS, answer.server, answer.execution_id)
        for check in detail.health_checks:
            if check.status == "failed":
                console.print(f"Health check: {detail.server} {check.name} ({check.target}) failed {check.phase}: "
                              f"{check.output} — the run {detail.status}"
                              + (", maintenance mode left on" if "stays on" in (detail.failure_reason or "") else ""),
                              soft_wrap=True)
