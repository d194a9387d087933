"""A slow, rate-limited control plane kept saturated: N servers patched through the `clc` driver.

`patchaas simulator` answers every CLC request after 250 ms and limits each account to R requests a second
(a token bucket, one second of burst; beyond it 429 with `Retry-After`). Its fleet of N servers (every one
NORMAL: 1-3 waves of updates, so 2-4 cycles) lives in its own PostgreSQL database; one
`patchaas worker --concurrency=2` (2 worker processes) and one `patchaas beat` patch them all, started by a
group action, through the `clc` driver (its adaptive limiter starting at 10 requests/s per process, no
ceiling to speak of, PATCHAAS_CLC_CONCURRENCY calls in flight per process).

The bound is what the rate limit alone allows: every request the simulator accepted ÷ R. The makespan
(request → last execution ended) is reported against it, beside the requests refused with 429 (wasted
requests), for each R, and beside a same-run baseline: the same run with 8 calls in flight per process
(the batch round's pool before issue 16). Engine timings: a 2 s poll interval (instead of 30 s, so that
the reboot waits of the instant fleet do not dominate a short run), CLC queue polling every 0.5 s; the
rest are production defaults unless --env says otherwise.

    .venv/bin/python -m bench.control_plane [--servers 5000] [--rates 50,200] [--write-docs]
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

if __package__ in (None, ""):  # `python bench/control_plane.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

SEED = 7
ALIAS = "OSD"
GROUP = "va1-0001"
USER = ("patchaas", "patchaas-bench")
BASELINE_CONCURRENCY = 8  # the batch round's fleet pool before issue 16


def install(url: str, sim_url: str, servers: int) -> None:
    """The simulated fleet (in `sim_url`, the simulator's store) and the inventory (in `url`)."""
    from orchestrator.persistence import db
    from orchestrator.services import inventory
    from simulation import fleet as simulated
    from simulation.specs import Scenario, build_fleet_specs
    from simulation.store import SqlStore

    specs = build_fleet_specs(SEED, servers, scenarios={Scenario.NORMAL: servers})
    store = SqlStore(sim_url)
    simulated.SimulatedFleet.create(specs, store, simulated.SimTimings.instant(), seed=SEED, reset=True)
    store.dispose()
    engine = db.create_engine_for(url)
    with db.session_factory(engine).begin() as session:
        inventory.ensure_account(session, ALIAS, "bench", "VA1", "ops@osd.example", db.utcnow())
        inventory.ensure_group(session, ALIAS, GROUP, "bench")
        inventory.register_servers(
            session, ALIAS,
            (inventory.ServerSpec(s.name, s.os_type, s.power_state.value, GROUP) for s in specs),
        )
    engine.dispose()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def simulator_counts(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/simulator/faults", timeout=10) as response:
        counts: dict[str, Any] = json.loads(response.read())
    return counts


def start_simulator(procs: common.Processes, rate: float, latency_ms: float) -> str:
    port = free_port()
    procs.start("simulator", [str(common.BIN / "patchaas"), "simulator", "--host", "127.0.0.1", f"--port={port}",
                              f"--username={USER[0]}", f"--password={USER[1]}", f"--latency-ms={latency_ms:g}",
                              f"--rate-limit={rate:g}", "--timings=instant", f"--seed={SEED}"])
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/simulator/health", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    common.wait_until(answers, timeout=60, interval=0.2, procs=procs, what="the simulator answers")
    return base


def run_once(args: Any, rate: float, concurrency: int, logdir: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    """One run: fresh databases, the simulator at `rate`, the workers with `concurrency` calls in flight."""
    from orchestrator import bootstrap
    from orchestrator.persistence import models
    from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings
    from schemas.patching import PackageRequest
    from simulation.mailsink import MailSink
    from workers.app import create_app
    from workers.dispatch import CeleryDispatcher

    label = f"cp_{int(rate)}_{concurrency}"
    with common.bench_database(args.pg_admin_url, label, args.keep_db) as url, \
            common.bench_database(args.pg_admin_url, f"{label}_sim", args.keep_db, migrate=False) as sim_url, \
            MailSink() as sink:
        install(url, sim_url, args.size)
        common.flush_redis(args.redis_url)
        env = common.service_env(url, args.redis_url, sink.url, {"PATCHAAS_SIM_STATE_URL": sim_url})
        procs = common.Processes(env, logdir)
        settings = Settings(database_url=url, broker_url=args.redis_url)
        app = create_app(settings)
        container = bootstrap.build(settings, dispatcher=CeleryDispatcher(app))
        try:
            base = start_simulator(procs, rate, args.latency_ms)
            procs.env.update({
                "PATCHAAS_FLEET": "clc", "PATCHAAS_CLC_BASE_URL": base, "PATCHAAS_CLC_USERNAME": USER[0],
                "PATCHAAS_CLC_PASSWORD": USER[1], "PATCHAAS_CLC_RATE_PER_SECOND": "100000",
                "PATCHAAS_CLC_RATE_START_PER_SECOND": "10", "PATCHAAS_CLC_CONCURRENCY": str(concurrency),
                "PATCHAAS_CLC_POLL_INTERVAL_SECONDS": "0.5", "PATCHAAS_CLC_RETRY_ATTEMPTS": "12",
                "PATCHAAS_CLC_RETRY_DEADLINE_SECONDS": "60",
                "PATCHAAS_POLL_INTERVAL_SECONDS": "2", "PATCHAAS_SETTLE_SECONDS": "0", **extra_env,
            })
            procs.start_worker("worker", concurrency=args.processes)
            procs.start_beat()
            common.wait_for_workers(app, 1, procs=procs)
            before = simulator_counts(base)["rateLimit"]
            load_before = common.load()
            t0 = time.monotonic()
            answers = container.service.execute_package_on_groups(
                ALIAS, [GROUP], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={}), "bench")
            queued = sum(1 for a in answers if a.is_queued)
            engine = container.db_engine

            def done() -> bool:
                with engine.connect() as conn:
                    return conn.execute(sa.select(sa.func.count()).select_from(models.Execution)
                                        .where(models.Execution.ended_at.is_(None))).scalar_one() == 0

            t_end = common.wait_until(done, timeout=args.timeout, interval=0.5, procs=procs,
                                      what="every execution ended")
            after = simulator_counts(base)["rateLimit"]
            load_after = common.load()
            with engine.connect() as conn:
                states = Counter(dict(conn.execute(sa.select(models.Execution.state, sa.func.count())
                                                   .group_by(models.Execution.state)).all()))
                cycles = conn.execute(sa.select(sa.func.avg(models.Execution.cycle))).scalar_one()
        finally:
            procs.stop_all()
            container.close()
    accepted = after["accepted"] - before["accepted"]
    refused = after["refused"] - before["refused"]
    makespan = t_end - t0
    bound = accepted / rate
    return {
        "rate": rate, "concurrency": concurrency, "executions": queued, "makespan": makespan,
        "accepted": accepted, "refused": refused, "bound": bound, "ratio": makespan / bound if bound else 0.0,
        "achieved": accepted / makespan if makespan else 0.0, "per_server": accepted / max(1, queued),
        "states": dict(states), "avg_cycles": float(cycles or 0), "load": f"{load_before:.1f} → {load_after:.1f}",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0], size=5000, tiny=4)
    p.add_argument("--rates", default=None, help="the simulator's rate limits R, comma-separated (default 50,200; "
                                                 "40 with --tiny)")
    p.add_argument("--latency-ms", type=float, default=None, help="the simulator's latency (250; 20 with --tiny)")
    p.add_argument("--processes", type=int, default=2, help="worker processes (patchaas worker --concurrency)")
    p.add_argument("--fleet-concurrency", type=int, default=None,
                   help="PATCHAAS_CLC_CONCURRENCY of the measured runs (default: the setting's default)")
    p.add_argument("--skip-baseline", action="store_true", help=f"no run with {BASELINE_CONCURRENCY} in flight")
    p.add_argument("--baseline-at", default=None, help="the rates that get a baseline run (default: every rate)")
    p.add_argument("--timeout", type=float, default=7200.0, help="give up on a run after this many seconds")
    p.add_argument("--env", action="append", default=[], metavar="PATCHAAS_X=value",
                   help="extra environment for the worker and beat")
    args = common.parse(p, argv)
    from orchestrator.settings import Settings

    rates = [float(r) for r in (args.rates or ("40" if args.tiny else "50,200")).split(",")]
    if args.latency_ms is None:
        args.latency_ms = 20.0 if args.tiny else 250.0
    concurrency = args.fleet_concurrency or Settings.model_fields["clc_concurrency"].default
    extra_env = dict(item.split("=", 1) for item in args.env)
    info = common.machine(args.pg_admin_url, args.redis_url)
    logdir = Path(tempfile.mkdtemp(prefix="patchaas-bench-control-plane-"))
    runs: list[dict[str, Any]] = []
    baseline_at = [float(r) for r in args.baseline_at.split(",")] if args.baseline_at else rates
    for rate in rates:
        plan = [concurrency] + ([] if args.skip_baseline or concurrency == BASELINE_CONCURRENCY
                                or rate not in baseline_at else [BASELINE_CONCURRENCY])
        for width in plan:
            result = run_once(args, rate, width, logdir / f"r{rate:g}-c{width}", extra_env)
            result["baseline"] = width != concurrency
            runs.append(result)
            print(f"R={rate:g}, {width} in flight: {result}")
    common.flush_redis(args.redis_url)

    rows = [[f"R = {r['rate']:g}/s, {r['concurrency']} in flight per process"
             + (" (baseline: the pool before)" if r["baseline"] else ""),
             r["executions"], r["accepted"], r["refused"], r["bound"], r["makespan"], f"{r['ratio']:.2f}",
             r["achieved"], r["load"]] for r in runs]
    result_table = common.table(["run", "servers", "requests accepted", "refused (429)", "bound = accepted ÷ R, s",
                                 "makespan, s", "makespan ÷ bound", "requests/s", "load avg"], rows)
    detail = common.table(["run", "requests per server", "cycles per server", "final states"],
                          [[f"R = {r['rate']:g}, {r['concurrency']} in flight", r["per_server"], r["avg_cycles"],
                            ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))] for r in runs])
    print()
    print(result_table)
    print()
    print(detail)
    print(f"logs: {logdir}")
    if args.write_docs:
        body = "\n\n".join([
            f"Command: `{common.command_line(argv, 'bench.control_plane')}`",
            "Machine:\n\n" + common.machine_lines(info),
            result_table,
            detail,
        ])
        common.write_section("bench/control_plane.py", "A slow, rate-limited control plane (bench/control_plane.py)",
                             body)
    return {"runs": runs, "table": result_table}


if __name__ == "__main__":
    main()
