"""Durable state transitions per second, end to end, beside two baselines measured in the same run.

An instant simulated fleet of N servers (default 2,000; every server NORMAL: 1-3 waves of updates, so
2-4 cycles, ~3 on average) is patched by one `patchaas worker --concurrency=2` (2 worker processes) and
one `patchaas beat` on PostgreSQL and Redis, started by a group action through the real Celery
dispatcher. Transitions = rows in `execution_events` (every saved state change and every recorded
cycle); the rate is transitions / (request → last execution ended).

Baselines, same PostgreSQL, same Redis, same number of worker processes:
  (a) a bare Celery task chain (bench/chain.py): one UPDATE + commit per hop, N chains, as many hops in
      total as the run's transitions, same Celery settings;
  (b) `pgbench -N` (the commit-rate ceiling of this PostgreSQL), initialised with `pgbench -i` in a bench
      database, with as many clients as worker processes.

    .venv/bin/python -m bench.transitions [--servers 2000] [--write-docs]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

if __package__ in (None, ""):  # `python bench/transitions.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, metrics_switch  # noqa: E402

SEED = 7
ALIAS = "OSD"
GROUP = "va1-0001"


def install(url: str, sim_url: str, servers: int) -> None:
    """The simulated fleet (in `sim_url`, its own database) and the inventory (in `url`)."""
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


def commits(admin_url: str, dbname: str) -> int:
    engine = sa.create_engine(admin_url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        value = conn.execute(sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d"),
                             {"d": dbname}).scalar_one()
    engine.dispose()
    return int(value)


def run_patchaas(args: Any, url: str, sim_url: str, logdir: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    """The product: a group action on every server, to the end."""
    from orchestrator import bootstrap
    from orchestrator.persistence import models
    from orchestrator.settings import Settings
    from simulation.mailsink import MailSink
    from workers.app import create_app
    from workers.dispatch import CeleryDispatcher

    install(url, sim_url, args.size)
    common.flush_redis(args.redis_url)
    dbname = url.rsplit("/", 1)[1]
    with MailSink() as sink:
        env = common.service_env(url, args.redis_url, sink.url,
                                 {"PATCHAAS_SIM_STATE_URL": sim_url, **extra_env})
        procs = common.Processes(env, logdir / "patchaas")
        settings = Settings(database_url=url, broker_url=args.redis_url)
        app = create_app(settings)
        container = bootstrap.build(settings, dispatcher=CeleryDispatcher(app))
        try:
            metrics_url = metrics_switch.start(  # metrics on or off (bench/metrics_switch.py)
                procs, lambda: procs.start_worker("worker", concurrency=args.concurrency), procs.start_beat)
            common.wait_for_workers(app, 1, procs=procs)
            before = commits(args.pg_admin_url, dbname)
            engine = container.db_engine
            t0 = time.monotonic()
            from orchestrator.settings import DEFAULT_PACKAGE_ID
            from schemas.patching import PackageRequest

            answers = container.service.execute_package_on_groups(
                ALIAS, [GROUP], PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={}), "bench")
            t_accepted = time.monotonic()
            queued = sum(1 for a in answers if a.is_queued)

            def done() -> bool:
                with engine.connect() as conn:
                    return conn.execute(sa.select(sa.func.count()).select_from(models.Execution)
                                        .where(models.Execution.ended_at.is_(None))).scalar_one() == 0

            t_end = common.wait_until(done, timeout=args.timeout, interval=0.25, procs=procs,
                                      what="every execution ended")
            counted = metrics_switch.steps_counted(metrics_url, procs.env.get("PATCHAAS_BENCH_BEAT_METRICS"))
        finally:
            procs.stop_all()
            container.close()
        with engine.connect() as conn:
            events = conn.execute(sa.select(sa.func.count()).select_from(models.ExecutionEvent)).scalar_one()
            first, last = conn.execute(sa.select(sa.func.min(models.ExecutionEvent.at),
                                                 sa.func.max(models.ExecutionEvent.at))).one()
            states = Counter(dict(conn.execute(sa.select(models.Execution.state, sa.func.count())
                                               .group_by(models.Execution.state)).all()))
            cycles = conn.execute(sa.select(sa.func.avg(models.Execution.cycle))).scalar_one()
        engine.dispose()
        time.sleep(1.2)  # let PostgreSQL publish the exited backends' counters
        after = commits(args.pg_admin_url, dbname)
    seconds = t_end - t0
    return {
        "executions": queued,
        "events": int(events),
        "seconds": seconds,
        "accept_seconds": t_accepted - t0,
        "rate": events / seconds if seconds else 0.0,
        "steady_rate": events / (last - first).total_seconds() if first and last and last > first else 0.0,
        "states": dict(states),
        "avg_cycles": float(cycles or 0),
        "commits": after - before,
        "metrics": counted,
    }


def run_chain(args: Any, url: str, hops: int, chains: int, logdir: Path) -> dict[str, Any]:
    """Baseline (a): `chains` Celery chains, `hops` hops in total, one UPDATE + commit each."""
    from bench import chain

    common.flush_redis(args.redis_url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        chain.create_table(conn, chains)
    chain.app.conf.broker_url = args.redis_url
    env = common.service_env(url, args.redis_url, None)
    procs = common.Processes(env, logdir / "chain")
    try:
        procs.start_worker("chain-worker", concurrency=args.concurrency, app="bench.chain")
        common.wait_for_workers(chain.app, 1, procs=procs)
        per, extra = divmod(hops, chains)
        t0 = time.monotonic()
        for i in range(chains):
            n = per + (1 if i < extra else 0)
            if n:
                chain.hop.apply_async((i + 1, n))

        def done() -> bool:
            with engine.connect() as conn:
                return chain.total_hops(conn) >= hops

        t_end = common.wait_until(done, timeout=args.timeout, interval=0.1, procs=procs, what="every hop")
    finally:
        procs.stop_all()
    engine.dispose()
    seconds = t_end - t0
    return {"hops": hops, "seconds": seconds, "rate": hops / seconds if seconds else 0.0}


def run_pgbench(args: Any) -> dict[str, Any]:
    """Baseline (b): pgbench -N (one commit per transaction) on a pgbench-initialised bench database."""
    pgbench = common.tool("pgbench")
    if pgbench is None:
        return {"tps": 0.0, "command": "pgbench not installed", "seconds": 0.0}
    parsed = sa.make_url(args.pg_admin_url)
    conn_args = ["-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432), "-U", parsed.username or "postgres"]
    with common.bench_database(args.pg_admin_url, "pgbench", migrate=False) as url:
        dbname = url.rsplit("/", 1)[1]
        subprocess.run([pgbench, *conn_args, "-i", "-q", "-s", "1", dbname], check=True, capture_output=True)
        clients = str(args.concurrency)
        command = [pgbench, *conn_args, "-N", "-c", clients, "-j", clients, "-T", str(args.pgbench_seconds),
                   dbname]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    found = re.search(r"tps = ([\d.]+)", out)
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    return {
        "tps": float(found.group(1)) if found else 0.0,
        "transactions": int(tx.group(1)) if tx else 0,
        "seconds": float(args.pgbench_seconds),
        "command": f"pgbench -N -c {clients} -j {clients} -T {args.pgbench_seconds}",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0], size=2000, tiny=6)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes (and pgbench clients)")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    p.add_argument("--pgbench-seconds", type=int, default=None, help="pgbench -T (default 15; 2 with --tiny)")
    p.add_argument("--env", action="append", default=[], metavar="PATCHAAS_X=value",
                   help="extra environment for the product's worker and beat")
    p.add_argument("--skip-baselines", action="store_true", help="only the product run")
    metrics_switch.add_argument(p)
    p.add_argument("--quiet-below", type=float, default=None, metavar="LOAD",
                   help="before each run, wait (up to 10 min) for the 1-minute load average to fall below LOAD")
    args = common.parse(p, argv)
    if args.pgbench_seconds is None:
        args.pgbench_seconds = 2 if args.tiny else 15
    extra_env = dict(item.split("=", 1) for item in args.env)
    info = common.machine(args.pg_admin_url, args.redis_url)
    logdir = Path(tempfile.mkdtemp(prefix="patchaas-bench-transitions-"))

    with common.bench_database(args.pg_admin_url, "transitions", args.keep_db) as url, \
            common.bench_database(args.pg_admin_url, "transitions_sim", args.keep_db, migrate=False) as sim_url:
        def phase(run: Any) -> dict[str, Any]:
            if args.quiet_below:
                common.wait_quiet(args.quiet_below, 600)
            before = common.load()
            result = run()
            result["load"] = f"{before:.1f} → {common.load():.1f}"
            return result

        runs: list[tuple[str, dict[str, Any]]] = []
        for i, mode in enumerate(metrics_switch.modes(args.metrics, args.metrics_repeat)):
            if i:
                metrics_switch.reset_runs(url)
            env = {**metrics_switch.env(mode), **extra_env}
            where = logdir / f"{i}-{mode}"
            runs.append((mode, phase(lambda env=env, where=where: run_patchaas(args, url, sim_url, where, env))))
            print(f"patchaas, metrics {mode}: {runs[-1][1]}")
        product = next((r for m, r in reversed(runs) if m == "on"), runs[-1][1])  # as deployed: metrics on
        if args.skip_baselines:
            chain_result = {"hops": 0, "seconds": 0.0, "rate": 0.0, "load": ""}
            pg = {"tps": 0.0, "transactions": 0, "seconds": 0.0, "command": "skipped", "load": ""}
        else:
            chain_result = phase(lambda: run_chain(args, url, product["events"], product["executions"], logdir))
            print(f"chain: {chain_result}")
            pg = phase(lambda: run_pgbench(args))
            print(f"pgbench: {pg}")
    common.flush_redis(args.redis_url)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "n/a"

    rows = [
        [f"patchaas: {product['executions']} servers × {product['avg_cycles']:.1f} cycles, "
         f"{args.concurrency} worker processes", f"{product['events']} transitions", product["seconds"],
         product["rate"], "1.00", product["load"]],
        [f"(a) bare Celery chain: 1 UPDATE + commit per hop, {product['executions']} chains",
         f"{chain_result['hops']} hops", chain_result["seconds"], chain_result["rate"],
         ratio(product["rate"], chain_result["rate"]), chain_result["load"]],
        [f"(b) {pg['command']}", f"{pg.get('transactions', 0)} commits", pg["seconds"], pg["tps"],
         ratio(product["rate"], pg["tps"]), pg["load"]],
    ]
    result_table = common.table(["run", "work", "seconds", "per second", "patchaas ÷ this", "load avg"], rows)
    detail = common.table(
        ["patchaas detail", "value"],
        [
            ["request accepted (group action, dispatch included), s", product["accept_seconds"]],
            ["transitions/s between the first and the last transition", product["steady_rate"]],
            ["commits in the orchestrator's database (pg_stat_database)", product["commits"]],
            ["commits per transition", product["commits"] / product["events"] if product["events"] else 0.0],
            ["final states", ", ".join(f"{k} {v}" for k, v in sorted(product["states"].items()))],
        ],
    )
    cost_table = metrics_cost(runs, args.concurrency)
    print()
    print(result_table)
    print()
    print(detail)
    print()
    print(cost_table)
    print(f"\nratios: patchaas/chain = {ratio(product['rate'], chain_result['rate'])}, "
          f"patchaas/pgbench = {ratio(product['rate'], pg['tps'])}")
    print(f"logs: {logdir}")
    if args.write_docs:
        body = "\n\n".join([
            f"Command: `{common.command_line(argv, 'bench.transitions')}`",
            "Machine:\n\n" + common.machine_lines(info),
            result_table,
            detail,
            cost_table,
            f"Ratios: patchaas ÷ bare chain = **{ratio(product['rate'], chain_result['rate'])}**, "
            f"patchaas ÷ pgbench = **{ratio(product['rate'], pg['tps'])}**.",
        ])
        common.write_section("bench/transitions.py", "Transitions per second (bench/transitions.py)", body)
    return {"patchaas": product, "chain": chain_result, "pgbench": pg, "table": result_table, "runs": runs,
            "cost": cost_table}


def metrics_cost(runs: list[tuple[str, dict[str, Any]]], processes: int) -> str:
    """Transitions/s with metrics off and on, each run and the mean of each mode, and on ÷ off."""
    rows = [[f"metrics {mode}", r["events"], r["seconds"], r["rate"], r["steady_rate"],
             int(r.get("metrics", {}).get("steps", 0)) or "", r["load"]] for mode, r in runs]
    mean = {m: [r["rate"] for mode, r in runs if mode == m] for m in ("off", "on")}
    if mean["off"] and mean["on"]:
        on, off = sum(mean["on"]) / len(mean["on"]), sum(mean["off"]) / len(mean["off"])
        rows.append(["on ÷ off (mean transitions/s)", "", "", metrics_switch.ratio(on, off), "", "", ""])
        row = metrics_switch.overhead_row(processes * 1000 / on if on else 0.0)
        rows.append([row[0], "", "", "", "", "", ""])
    return common.table(["run", "transitions", "seconds", "transitions/s", "steady transitions/s",
                         "steps the worker exporter counted", "load avg"], rows)


if __name__ == "__main__":
    main()
