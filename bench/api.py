"""REST API latency and throughput under 50 concurrent clients, beside a trivial endpoint of the same app.

The app is `orchestrator.rest.create_app(container)` served by uvicorn (`--workers 2`, one per CPU of the
reference machine) on its own PostgreSQL database holding a server with N executions (default 1,000; 3
cycles each) and an execution with 200 patches. The load comes from `wrk` (Debian's package; a Python
asyncio/httpx client when wrk is missing), 50 connections, authenticated with a bearer token:

- `GET /rest/servers/OSD/server/<server>/patch` — the summary (first page: 50 executions, their cycles);
- `GET /rest/servers/OSD/server/<server>/patch/<id>` — the detail of the execution with 200 patches;
- `GET /bench/ping` — a trivial endpoint added to the same app by this benchmark (no auth, no database):
  the framework's own ceiling on this machine;
- `GET /console/servers/<server>` and `GET /console/servers/<server>/executions/<id>` — the console's history
  and detail pages of the same server and execution (HTML from the same cached reads, Jinja2 templates; the
  session cookie is the same token), beside their JSON answers: "of JSON" is the page's throughput as a
  share of the JSON answer's in the same run. Each is also measured with one client at a time (what one
  operator waits for a page), beside the JSON answer with one client.

Statements per request are counted in-process (FastAPI's TestClient over the same app, a SQLAlchemy
listener on the container's engine), for the summary at page sizes 50 and 200 to show they do not grow
with the page, and with the service's cache of ended executions' answers emptied before each request
(a process's first read of them). Under load every execution of the page and the detailed one have
ended (as in a real history), so after the warm-up second their answers come from that cache.

    .venv/bin/python -m bench.api [--size 1000] [--patches 200] [--write-docs]
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

if __package__ in (None, ""):  # `python bench/api.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

ALIAS = "OSD"
GROUP = "va1-0001"
HISTORY_SERVER = "VA1OSDPATCH01"
DETAIL_SERVER = "VA1OSDPATCH02"
USER, PASSWORD = "bench", "bench-password-1"


class _NoDispatch:
    def advance(self, execution_id: str, delay: float) -> None:
        return None

    def deliver(self, outbox_id: int) -> None:
        return None


def seed(url: str, executions: int, patches: int) -> str:
    """The account, a user, a server with `executions` ended executions (3 cycles each) and an execution
    with `patches` patches; returns that execution's id."""
    from orchestrator.domain import machine, packages
    from orchestrator.persistence import db, models
    from orchestrator.services import inventory
    from orchestrator.services.patching import PatchService
    from orchestrator.settings import DEFAULT_PACKAGE_ID
    from schemas.patching import PackageRequest
    from simulation import catalog

    engine = db.create_engine_for(url)
    sessions = db.session_factory(engine)
    now = db.utcnow()
    with sessions.begin() as session:
        inventory.ensure_account(session, ALIAS, "bench", "VA1", "ops@osd.example", now)
        inventory.ensure_group(session, ALIAS, GROUP, "bench")
        inventory.register_servers(session, ALIAS, [
            inventory.ServerSpec(HISTORY_SERVER, catalog.WINDOWS_2012R2, "started", GROUP),
            inventory.ServerSpec(DETAIL_SERVER, catalog.WINDOWS_2012R2, "started", GROUP),
        ])
    service = PatchService(sessions=sessions, dispatcher=_NoDispatch(), clock=db.utcnow)
    pkg = packages.get(DEFAULT_PACKAGE_ID)
    package = PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={})
    kbs = [u for u in catalog.catalog_for(catalog.WINDOWS_2012R2)]
    rows, used = [], set()

    def execution(server: str, started: Any) -> dict[str, Any]:
        values = service.execution_values(server, "VA1", ALIAS, pkg, package, USER, started)
        while values["id"] in used:
            values = service.execution_values(server, "VA1", ALIAS, pkg, package, USER, started)
        used.add(values["id"])
        values.update(state=machine.State.COMPLETED.value, outcome="completed", cycle=3, version=30,
                      ended_at=started + timedelta(minutes=40), end_message="Updating Complete",
                      next_run_at=None, dispatched_until=None, installed_count=9)
        return values

    for i in range(executions):
        rows.append(execution(HISTORY_SERVER, now - timedelta(days=executions - i)))
    detail = execution(DETAIL_SERVER, now - timedelta(hours=3))
    rows.append(detail)
    initiations, patch_rows = [], []
    for values in rows:
        cycles = 4 if values is detail else 3
        for cycle in range(1, cycles + 1):
            initiations.append({
                "execution_id": values["id"], "cycle": cycle, "started_at": values["started_at"],
                "ended_at": values["started_at"] + timedelta(minutes=10), "begin_message": "Invoking SUS API",
                "end_message": "Updates Downloaded Successfully downloaded 3 updates to install##…##",
                "updates_found": 3, "reboot_required": True, "result_code": 2, "hresult": 0,
            })
    with engine.begin() as conn:
        conn.execute(sa.insert(models.Execution.__table__), rows)
        table = models.Initiation.__table__
        ids = conn.execute(sa.insert(table).returning(table.c.id, table.c.execution_id, table.c.cycle,
                                                      sort_by_parameter_order=True), initiations).all()
        detail_inits = [r for r in ids if r.execution_id == detail["id"]]
        for n in range(patches):
            init = detail_inits[n % len(detail_inits)]
            update = kbs[n % len(kbs)]
            patch_rows.append({
                "execution_id": detail["id"], "initiation_id": init.id, "cycle": init.cycle,
                "kb": f"{update.kb[:10]}{n:05d}"[:16], "title": update.title, "url": update.url,
                "classification": update.classification.value, "result_code": 2, "hresult": 0,
                "reboot_required": bool(n % 2), "status": "completed", "started_at": detail["started_at"],
                "ended_at": detail["started_at"] + timedelta(minutes=5),
                "begin_message": f"Installing {update.title}", "end_message": "Result Code: 2",
            })
        conn.execute(sa.insert(models.Patch.__table__), patch_rows)
    with engine.connect() as conn:  # statistics as autovacuum would have them
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    from orchestrator.services import auth

    service_auth = auth.AuthService(sessions, db.utcnow, timedelta(days=1))
    service_auth.create_user(USER, ALIAS, ["AccountAdmin"], PASSWORD)
    engine.dispose()
    return str(detail["id"])


def token(url: str) -> str:
    from orchestrator.persistence import db
    from orchestrator.services import auth

    engine = db.create_engine_for(url)
    login = auth.AuthService(db.session_factory(engine), db.utcnow, timedelta(days=1)).login(USER, PASSWORD)
    engine.dispose()
    return login.token


def build_app() -> Any:
    """The app served by uvicorn (`--factory`): settings from PATCHAAS_*, nothing dispatched, plus the
    trivial `/bench/ping`."""
    from orchestrator import bootstrap
    from orchestrator.entrypoints.rest import create_app
    from orchestrator.settings import Settings

    container = bootstrap.build(Settings(), dispatcher=_NoDispatch())
    app = create_app(container, owns_container=True)
    add_ping(app)
    return app


def add_ping(app: Any) -> None:
    @app.get("/bench/ping", include_in_schema=False)
    def ping() -> dict[str, bool]:
        return {"ok": True}


SUMMARY = "summary, first page (50 of 1,000 executions)"
DETAIL = "detail (200 patches)"
CONSOLE_HISTORY = "console: history page (50 of 1,000 executions)"
CONSOLE_DETAIL = "console: detail page (200 patches)"
JSON_OF = {CONSOLE_HISTORY: SUMMARY, CONSOLE_DETAIL: DETAIL}  # each page beside the JSON answer it shows
ONE_CLIENT = (SUMMARY, CONSOLE_HISTORY, DETAIL, CONSOLE_DETAIL)


def paths(detail_id: str) -> dict[str, str]:
    base = f"/rest/servers/{ALIAS}/server"
    return {
        "trivial endpoint (/bench/ping)": "/bench/ping",
        SUMMARY: f"{base}/{HISTORY_SERVER}/patch",
        DETAIL: f"{base}/{DETAIL_SERVER}/patch/{detail_id}",
        CONSOLE_HISTORY: f"/console/servers/{HISTORY_SERVER}",
        CONSOLE_DETAIL: f"/console/servers/{DETAIL_SERVER}/executions/{detail_id}",
    }


def auth_headers(bearer: str) -> dict[str, str]:
    """The REST API reads the bearer token, the console the session cookie (a console session is a token)."""
    return {"Authorization": f"Bearer {bearer}", "Cookie": f"patchaas_session={bearer}"}


# --- load ------------------------------------------------------------------------------------------


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(base: str, path: str, bearer: str, seconds: int, connections: int, threads: int) -> dict[str, Any]:
    headers = [arg for name, value in auth_headers(bearer).items() for arg in ("-H", f"{name}: {value}")]
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "--timeout", "10s",
         *headers, base + path],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total, "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def run_httpx(base: str, path: str, bearer: str, seconds: int, connections: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    failures = 0

    async def client(deadline: float, http: httpx.AsyncClient) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            answer = await http.get(path)
            latencies.append((time.perf_counter() - t0) * 1000)
            failures += answer.status_code >= 400

    async def main() -> float:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=base, headers=auth_headers(bearer), limits=limits, timeout=30) as http:
            t0 = time.perf_counter()
            await asyncio.gather(*(client(t0 + seconds, http) for _ in range(connections)))
            return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    return {"rps": len(latencies) / elapsed, "p50": common.percentile(latencies, 50),
            "p99": common.percentile(latencies, 99), "requests": len(latencies), "non_2xx": failures,
            "socket_errors": ""}


def statements_per_request(url: str, detail_id: str, bearer: str, repeat: int) -> dict[str, float]:
    """In-process (TestClient over the same app): statements per request, by endpoint."""
    from fastapi.testclient import TestClient

    from orchestrator import bootstrap
    from orchestrator.entrypoints.rest import create_app
    from orchestrator.settings import Settings

    container = bootstrap.build(Settings(database_url=url, broker_url="memory://"), dispatcher=_NoDispatch())
    app = create_app(container)
    add_ping(app)
    counter = common.QueryCounter(container.db_engine)
    counts: dict[str, float] = {}
    targets = dict(paths(detail_id))
    summary_path = targets[SUMMARY]
    targets["summary, page of 200"] = summary_path + "?limit=200"
    targets["summary, first page, not cached"] = summary_path
    targets["detail, not cached"] = targets["detail (200 patches)"]
    with TestClient(app) as client:
        for label, path in targets.items():
            client.get(path, headers=auth_headers(bearer))  # warm
            counter.reset()
            for _ in range(repeat):
                if "not cached" in label:  # as on a process's first read of these executions
                    container.service.answers.clear()
                answer = client.get(path, headers=auth_headers(bearer))
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
            counts[label] = counter.count / repeat
    counter.close()
    container.close()
    return counts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0], size=1000, tiny=60)
    p.add_argument("--patches", type=int, default=None, help="patches of the detailed execution (200; 20 tiny)")
    p.add_argument("--connections", type=int, default=50, help="concurrent clients")
    p.add_argument("--seconds", type=int, default=None, help="per endpoint (15; 2 with --tiny)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto")
    p.add_argument("--one-client-seconds", type=int, default=None,
                   help="per page and JSON answer with one client at a time (5; 1 with --tiny)")
    args = common.parse(p, argv)
    if args.patches is None:
        args.patches = 20 if args.tiny else 200
    if args.seconds is None:
        args.seconds = 2 if args.tiny else 15
    if args.one_client_seconds is None:
        args.one_client_seconds = 1 if args.tiny else 5
    client = args.client
    if client == "auto":
        client = "wrk" if common.tool("wrk") else "httpx"
    info = common.machine(args.pg_admin_url, None)
    logdir = Path(tempfile.mkdtemp(prefix="patchaas-bench-api-"))
    from simulation.mailsink import free_port

    with common.bench_database(args.pg_admin_url, "api", args.keep_db) as url:
        detail_id = seed(url, args.size, args.patches)
        bearer = token(url)
        counts = statements_per_request(url, detail_id, bearer, 5 if args.tiny else 20)
        port = free_port()
        env = common.service_env(url, "memory://", None)
        procs = common.Processes(env, logdir)
        results: dict[str, dict[str, Any]] = {}
        single: dict[str, dict[str, Any]] = {}
        try:
            procs.start("uvicorn", [str(common.BIN / "uvicorn"), "bench.api:build_app", "--factory",
                                    "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
                                    "--no-access-log", "--log-level", "warning"])
            procs.sample_rss()
            base = f"http://127.0.0.1:{port}"
            import httpx

            def up() -> bool:
                try:
                    return httpx.get(base + "/bench/ping", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            common.wait_until(up, timeout=60, interval=0.3, procs=procs, what="uvicorn answering")
            for label, path in paths(detail_id).items():
                if client == "wrk":
                    run_wrk(base, path, bearer, 1, args.connections, 2)  # warm every worker's pool
                    results[label] = run_wrk(base, path, bearer, args.seconds, args.connections, 2)
                else:
                    run_httpx(base, path, bearer, 1, args.connections)
                    results[label] = run_httpx(base, path, bearer, args.seconds, args.connections)
                results[label]["load"] = common.load()
                print(label, results[label])
            for label in ONE_CLIENT:  # what one operator waits for: one request at a time
                path = paths(detail_id)[label]
                single[label] = (run_wrk(base, path, bearer, args.one_client_seconds, 1, 1) if client == "wrk"
                                 else run_httpx(base, path, bearer, args.one_client_seconds, 1))
                single[label]["load"] = common.load()
                print(label, "(one client)", single[label])
        finally:
            procs.stop_all()
    trivial = results["trivial endpoint (/bench/ping)"]["rps"]
    rows = []

    def of_json(label: str, measured: dict[str, dict[str, Any]]) -> str:
        base_rps = measured.get(JSON_OF.get(label, ""), {}).get("rps")
        return f"{100 * measured[label]['rps'] / base_rps:.0f}%" if base_rps else ""

    for label, r in results.items():
        share = f"{100 * r['rps'] / trivial:.0f}%" if trivial else "n/a"
        rows.append([label, r["requests"], r["p50"], r["p99"], r["rps"], share, of_json(label, results),
                     counts.get(label, 0.0), r["non_2xx"], r["load"]])
    for label, r in single.items():
        rows.append([f"{label}, one client", r["requests"], r["p50"], r["p99"], r["rps"], "", of_json(label, single),
                     counts.get(label, 0.0), r["non_2xx"], r["load"]])
    for label in ("summary, page of 200", "summary, first page, not cached", "detail, not cached"):
        rows.append([f"{label} (statements only)", "", "", "", "", "", "", counts[label], "", ""])
    result_table = common.table(
        ["endpoint", "requests", "p50 ms", "p99 ms", "requests/s", "of trivial", "of JSON", "statements/request",
         "errors", "load avg"], rows)
    setting = (f"{args.connections} concurrent connections for {args.seconds} s per endpoint ({client}); "
               f"uvicorn --workers {args.workers}; a server with {args.size} executions, an execution with "
               f"{args.patches} patches. One client: one request at a time for {args.one_client_seconds} s.")
    print()
    print(setting)
    print(result_table)
    if args.write_docs:
        body = "\n\n".join([
            f"Command: `{common.command_line(argv, 'bench.api')}`",
            "Machine:\n\n" + common.machine_lines(info),
            setting, result_table,
        ])
        common.write_section("bench/api.py", "REST API (bench/api.py)", body)
    return {"results": results, "one_client": single, "statements": counts, "table": result_table}


if __name__ == "__main__":
    main()
