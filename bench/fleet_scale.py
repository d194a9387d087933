"""Fleet scale: N executions (default 10,000) waiting on reboots at once, polled every 30 s.

Every execution starts in `awaiting_boot` (cycle 1, its server rebooting), written directly into the
database with `next_run_at` spread evenly over one poll interval; every simulated server comes back at a
random moment of the next 60 s (so most executions poll once or twice), finds nothing left to install and
completes (invoke → result → maintenance off → completed). One `patchaas worker --concurrency=2` and one
`patchaas beat`, production timings (30 s poll interval, 5 s tick, 500 rows per tick) unless --env says
otherwise.

Measured:
- lag from `next_run_at` to the step being claimed, for every step and for the timer-driven polls of
  `awaiting_boot` alone (p50, p99, max): a bench-only trigger on `executions` records each claim
  (the database's clock; the workers run on the same machine);
- RSS of the worker (main process and pool children) and of beat over the run;
- statements per step, counted in-process with a SQLAlchemy listener on 200 more executions of the same
  kind after the run: once through `Engine.advance` (one step per task) and once through
  `orchestrator.batch` (one task per batch), with the fleet's own statements counted apart;
- the tick's due query on the full table (EXPLAIN ANALYZE): what it reads does not grow with the fleet.

    .venv/bin/python -m bench.fleet_scale [--servers 10000] [--write-docs]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

if __package__ in (None, ""):  # `python bench/fleet_scale.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import autovacuum, common, metrics_switch, seeding  # noqa: E402

ALIAS = "OSD"
GROUP = "va1-0001"
SEED = 7

TRIGGER = """
CREATE TABLE bench_claims (
    id bigserial PRIMARY KEY, execution_id varchar(10) NOT NULL, state varchar(32) NOT NULL,
    due_at timestamptz, claimed_at timestamptz NOT NULL
);
CREATE FUNCTION bench_record_claim() RETURNS trigger AS $$
BEGIN
    IF NEW.lease_owner IS NOT NULL AND (OLD.lease_owner IS NULL OR NEW.lease_expires_at > OLD.lease_expires_at)
    THEN
        INSERT INTO bench_claims (execution_id, state, due_at, claimed_at)
        VALUES (NEW.id, NEW.state, NEW.next_run_at, clock_timestamp());
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_claims BEFORE UPDATE ON executions FOR EACH ROW EXECUTE FUNCTION bench_record_claim();
"""


def server_names(count: int, start: int = 1) -> list[str]:
    from simulation.specs import server_name

    return [server_name("VA1", ALIAS, "PATCH", i) for i in range(start, start + count)]


def register(url: str, names: list[str]) -> None:
    """The servers in the inventory."""
    from orchestrator.persistence import db
    from orchestrator.services import inventory
    from simulation import catalog

    engine = db.create_engine_for(url)
    with db.session_factory(engine).begin() as session:
        inventory.ensure_account(session, ALIAS, "bench", "VA1", "ops@osd.example", db.utcnow())
        inventory.ensure_group(session, ALIAS, GROUP, "bench")
        inventory.register_servers(
            session, ALIAS, (inventory.ServerSpec(n, catalog.WINDOWS_2012R2, "started", GROUP) for n in names))
    engine.dispose()


def simulate(sim_url: str, names: list[str], back_from: float, come_back: float, reset: bool) -> None:
    """The simulated servers: rebooting, back at a random moment of [back_from, back_from + come_back]
    (wall-clock seconds), in maintenance mode, nothing left to install."""
    from schemas.fleet import PowerState
    from simulation import catalog
    from simulation.server_state import ServerState
    from simulation.specs import Scenario, SimServerSpec
    from simulation.store import SqlStore

    rng = random.Random(SEED + len(names))
    store = SqlStore(sim_url)
    servers = []
    for name in names:
        spec = SimServerSpec(name, catalog.WINDOWS_2012R2, PowerState.STARTED, Scenario.UP_TO_DATE)
        state = ServerState(seed=SEED, power_state=PowerState.STARTED, in_maintenance=True, boots=1,
                            booting_until=back_from + rng.uniform(0.0, come_back))
        servers.append((name, spec.to_doc(), state.to_doc()))
    store.install(servers, reset=reset)
    store.dispose()


def waiting_executions(url: str, names: list[str], spread: float, start_in: float = 0.0) -> list[str]:
    """One execution per server in `awaiting_boot`, due over `spread` seconds from `start_in` s on; ids."""
    from orchestrator.domain import machine, packages
    from orchestrator.persistence import db, models
    from orchestrator.services.patching import PatchService
    from orchestrator.settings import DEFAULT_PACKAGE_ID
    from schemas.patching import PackageRequest

    engine = db.create_engine_for(url)
    now = db.utcnow()
    service = PatchService(sessions=db.session_factory(engine), dispatcher=None, clock=db.utcnow)  # type: ignore[arg-type]
    pkg = packages.get(DEFAULT_PACKAGE_ID)
    package = PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={})
    rows, ids = [], set()
    for i, name in enumerate(names):
        values = service.execution_values(name, "VA1", ALIAS, pkg, package, "bench", now)
        while values["id"] in ids:
            values["id"] = service.execution_values(name, "VA1", ALIAS, pkg, package, "bench", now)["id"]
        ids.add(values["id"])
        values.update(
            state=machine.State.AWAITING_BOOT.value, cycle=1, version=5, prior_power_state="started",
            boot_id_before=f"{name}-boot-1", reboot_reason="cycle 1 requires a reboot",
            deadline_at=now + timedelta(minutes=20), installed_count=3,
            next_run_at=now + timedelta(seconds=start_in + spread * i / max(1, len(names))), dispatched_until=None,
        )
        rows.append(values)
    with engine.begin() as conn:
        existing = set(conn.execute(sa.select(models.Execution.id)).scalars())
        for values in rows:
            while values["id"] in existing:
                values["id"] = service.execution_values(values["server_name"], "VA1", ALIAS, pkg, package, "bench",
                                                        now)["id"]
            existing.add(values["id"])
        conn.execute(sa.insert(models.Execution.__table__), rows)
    engine.dispose()
    return [r["id"] for r in rows]


def tick_seconds(metrics_url: str | None) -> dict[str, float]:
    """The ticks of the run from the worker's `patchaas_tick_duration_seconds` histogram (metrics on): how
    many, their mean, and the histogram's bounds under which 99% and all of them fell."""
    if metrics_url is None:
        return {}
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url, timeout=30) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "patchaas_tick_duration_seconds":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                total += s.value
            elif s.name.endswith("_count"):
                count += s.value
    buckets.sort()

    def bound(share: float) -> float:
        return next((le for le, n in buckets if n >= share * count), float("inf"))

    return {"ticks": count, "mean": total / count if count else 0.0, "p99_le": bound(0.99), "max_le": bound(1.0)}


def lags(url: str, ids: set[str]) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT execution_id, state, EXTRACT(EPOCH FROM claimed_at - due_at) AS lag FROM bench_claims")).all()
    engine.dispose()
    every = [max(0.0, float(r.lag)) for r in rows if r.execution_id in ids and r.lag is not None]
    polls = [max(0.0, float(r.lag)) for r in rows
             if r.execution_id in ids and r.state == "awaiting_boot" and r.lag is not None]
    return {
        "steps": len(every), "p50": common.percentile(every, 50), "p99": common.percentile(every, 99),
        "max": max(every, default=0.0),
        "polls": len(polls), "poll_p50": common.percentile(polls, 50), "poll_p99": common.percentile(polls, 99),
        "poll_max": max(polls, default=0.0),
    }


def run_fleet(args: Any, url: str, sim_url: str, logdir: Path, names: list[str], extra_env: dict[str, str]
              ) -> dict[str, Any]:
    from orchestrator.persistence import models
    from orchestrator.settings import Settings
    from simulation.mailsink import MailSink
    from workers.app import create_app

    common.flush_redis(args.redis_url)
    with MailSink() as sink:
        env = common.service_env(url, args.redis_url, sink.url,
                                 {"PATCHAAS_SIM_STATE_URL": sim_url,
                                  "PATCHAAS_POLL_INTERVAL_SECONDS": str(args.poll), **extra_env})
        procs = common.Processes(env, logdir)
        app = create_app(Settings(database_url=url, broker_url=args.redis_url))
        engine = sa.create_engine(url)
        vacuum = autovacuum.Autovacuum([url, sim_url])  # as a deployment's server would (bench/autovacuum.py)
        try:
            metrics_url = metrics_switch.start(  # metrics on or off (bench/metrics_switch.py)
                procs, lambda: procs.start_worker("worker", concurrency=args.concurrency, loglevel=args.loglevel),
                lambda: procs.start_beat(loglevel=args.loglevel))
            procs.sample_rss()
            common.wait_for_workers(app, 1, procs=procs)
            # written by COPY with their times parked, then shifted at once: the first is due `lead` s later
            seeding.install_rebooting(sim_url, names, SEED, args.come_back, reset=True)
            ids = seeding.waiting_executions(url, names, ALIAS, args.poll)
            _, armed_in = seeding.arm(url, sim_url, lead=1.0 + len(names) / 3000)  # shift + ANALYZE: ~20 s at 100k
            print(f"seeded {len(ids)} executions; timers armed in {armed_in:.2f}s")
            vacuum.__enter__()
            t0 = time.monotonic()

            def done() -> bool:
                with engine.connect() as conn:
                    return conn.execute(sa.select(sa.func.count()).select_from(models.Execution)
                                        .where(models.Execution.ended_at.is_(None))).scalar_one() == 0

            t_end = common.wait_until(done, timeout=args.timeout, interval=0.25 if args.tiny else 1.0, procs=procs,
                                      what="every execution ended")
            counted = metrics_switch.steps_counted(metrics_url, procs.env.get("PATCHAAS_BENCH_BEAT_METRICS"))
            ticks = tick_seconds(metrics_url)  # the tick's own duration, as the worker's exporter measured it
        finally:
            vacuum.__exit__(None, None, None)
            procs.stop_all()
        with engine.connect() as conn:
            states = dict(conn.execute(sa.select(models.Execution.state, sa.func.count())
                                       .group_by(models.Execution.state)).all())
        engine.dispose()
    result = lags(url, set(ids))
    result.update(seconds=t_end - t0, states=states, metrics=counted, ticks=ticks,
                  autovacuum=dict(vacuum.runs, active=vacuum.active, seconds=vacuum.seconds))
    for name in ("worker", "beat"):
        first, peak, last = common.rss_summary(procs.rss.get(name, []))
        result[f"{name}_rss"] = (first, peak, last)
    return result


class _Dispatch:
    """Collects what the in-process engine hands off (nothing is sent)."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def advance(self, execution_id: str, delay: float) -> None:
        self.steps.append(execution_id)

    def deliver(self, outbox_id: int) -> None:
        return None

    def advance_many(self, ids: list[str], delay: float = 0.0) -> None:
        self.steps.extend(ids)


def statements_per_step(args: Any, url: str, sim_url: str, count: int, metrics: bool = True,
                        start: int | None = None) -> dict[str, Any]:
    """In-process: `count` more waiting executions, run to their end one step per call, then (another
    `count`) in batches; statements per step on the orchestrator's database and on the fleet's. `metrics`:
    the engine's telemetry on (PATCHAAS_METRICS_ENABLED) or off; `start`: the first server's number."""
    from orchestrator import bootstrap
    from orchestrator.engine import config, rounds
    from orchestrator.settings import Settings

    out: dict[str, Any] = {}
    start = args.size + 1 if start is None else start
    for label in ("one step per task", "batches"):
        names = server_names(count, start)
        start += count
        register(url, names)
        simulate(sim_url, names, time.time() - 2.0, 1.0, reset=False)  # every server is back already: each
        ids = waiting_executions(url, names, 0.0)  # run goes to its end
        settings = Settings(database_url=url, broker_url="memory://", sim_state_url=sim_url,
                            poll_interval_seconds=args.poll, metrics_enabled=metrics, settle_seconds=0)
        dispatcher = _Dispatch()
        container = bootstrap.build(settings, dispatcher=dispatcher)
        counter = common.QueryCounter(container.db_engine)
        fleet_counter = common.QueryCounter(container.fleet.store.engine)  # type: ignore[attr-defined]
        counter.reset()
        fleet_counter.reset()
        steps = 0
        t0 = time.perf_counter()
        if label == "batches":
            for i in range(0, len(ids), config.DEFAULT_BATCH_SIZE):
                steps += rounds.run(container.engine, ids[i:i + config.DEFAULT_BATCH_SIZE]).steps
        else:
            queue = list(ids)
            while queue:
                container.engine.advance(queue.pop(0))
                steps += 1
                queue.extend(dispatcher.steps)
                dispatcher.steps.clear()
        seconds = time.perf_counter() - t0
        out[label] = {
            "steps": steps,
            "per_step": counter.count / steps if steps else 0.0,
            "fleet_per_step": fleet_counter.count / steps if steps else 0.0,
            "ms_per_step": 1000 * seconds / steps if steps else 0.0,
            "top": counter.by_statement.most_common(6),
        }
        counter.close()
        fleet_counter.close()
        container.close()
    return out


def tick_plan(url: str, tick_batch: int) -> str:
    """EXPLAIN ANALYZE of the tick's due query on the whole table, made due (rolled back)."""
    from orchestrator.engine import executions
    from orchestrator.persistence import db

    engine = db.create_engine_for(url)
    with engine.connect() as conn:
        trans = conn.begin()
        conn.exec_driver_sql("UPDATE executions SET ended_at = NULL, next_run_at = now() - interval '1 second', "
                             "dispatched_until = NULL, lease_owner = NULL, lease_expires_at = NULL")
        conn.exec_driver_sql("ANALYZE executions")
        table = executions.models.Execution.__table__
        now = db.utcnow()
        query = (
            sa.select(table.c.id)
            .where(table.c.ended_at.is_(None), table.c.next_run_at <= now,
                   sa.or_(table.c.dispatched_until.is_(None), table.c.dispatched_until < now),
                   sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now))
            .order_by(table.c.next_run_at).limit(tick_batch).with_for_update(skip_locked=True)
        )
        compiled = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {compiled}").scalars().all()
        trans.rollback()
    engine.dispose()
    return "\n".join(plan)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0], size=10_000, tiny=20)
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("--poll", type=float, default=None, help="poll interval, s (default 30; 2 with --tiny)")
    p.add_argument("--come-back", type=float, default=None, help="servers come back within this many seconds "
                   "(default 2 poll intervals)")
    p.add_argument("--in-process", type=int, default=None, help="executions for the statement count (200)")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--loglevel", default="WARNING", help="worker and beat log level (INFO logs every task)")
    metrics_switch.add_argument(p)
    p.add_argument("--env", action="append", default=[], metavar="PATCHAAS_X=value",
                   help="extra environment for the worker and beat")
    args = common.parse(p, argv)
    if args.poll is None:
        args.poll = 2.0 if args.tiny else 30.0
    if args.come_back is None:
        args.come_back = 2 * args.poll
    if args.in_process is None:
        args.in_process = 5 if args.tiny else 200
    extra_env = dict(item.split("=", 1) for item in args.env)
    info = common.machine(args.pg_admin_url, args.redis_url)
    logdir = Path(tempfile.mkdtemp(prefix="patchaas-bench-fleet-"))
    with common.bench_database(args.pg_admin_url, "fleet", args.keep_db) as url, \
            common.bench_database(args.pg_admin_url, "fleet_sim", args.keep_db, migrate=False) as sim_url:
        names = server_names(args.size)
        seeding.register_servers(url, ALIAS, GROUP, names)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(TRIGGER)
        engine.dispose()
        runs: list[tuple[str, dict[str, Any]]] = []
        order = metrics_switch.modes(args.metrics, args.metrics_repeat)
        for i, mode in enumerate(order):
            if i:
                metrics_switch.reset_runs(url)
            load_before = common.load()
            env = {**metrics_switch.env(mode), **extra_env}
            run = run_fleet(args, url, sim_url, logdir / f"{i}-{mode}", names, env)
            run["load"] = (load_before, common.load())
            runs.append((mode, run))
            print(f"fleet, metrics {mode}: {run}")
        fleet = next((r for m, r in reversed(runs) if m == "on"), runs[-1][1])  # as deployed: metrics on
        plan = tick_plan(url, int(extra_env.get("PATCHAAS_TICK_BATCH", 500)))
        in_process: list[tuple[str, dict[str, Any]]] = []
        first = args.size + 1
        for mode in order:  # the engine in this process, telemetry off and on, same kind of executions
            in_process.append((mode, statements_per_step(args, url, sim_url, args.in_process, mode == "on", first)))
            first += 2 * args.in_process
        per_step = next((r for m, r in reversed(in_process) if m == "on"), in_process[-1][1])
        print(f"statements: {per_step}")
    common.flush_redis(args.redis_url)

    lag_table = common.table(
        ["lag next_run_at → claimed", "steps", "p50 s", "p99 s", "max s"],
        [["every step", fleet["steps"], fleet["p50"], fleet["p99"], fleet["max"]],
         ["awaiting_boot polls (timer-driven)", fleet["polls"], fleet["poll_p50"], fleet["poll_p99"],
          fleet["poll_max"]]],
    )
    rss_table = common.table(
        ["process (RSS, MiB)", "at start", "peak", "at end"],
        [[name, *fleet[f"{name}_rss"]] for name in ("worker", "beat")],
    )
    stmt_rows = []
    for label, r in per_step.items():
        top = ", ".join(f"{s} {n / r['steps']:.2f}" for s, n in r["top"][:5]) if r["steps"] else ""
        stmt_rows.append([label, r["steps"], r["per_step"], r["fleet_per_step"], r["ms_per_step"], top])
    stmt_table = common.table(
        ["in-process, same kind of executions", "steps", "statements/step (orchestrator)",
         "statements/step (simulated fleet)", "ms/step", "most frequent (per step)"], stmt_rows)
    summary = (f"{args.size} executions waiting on reboots, poll every {args.poll:g} s, servers back within "
               f"{args.come_back:g} s: all ended in {fleet['seconds']:.0f} s "
               f"({', '.join(f'{k} {v}' for k, v in sorted(fleet['states'].items()))}); "
               f"load average {fleet['load'][0]} → {fleet['load'][1]}.")
    ticks = fleet.get("ticks") or {}
    if ticks.get("ticks"):
        summary += (f" The tick's own duration: {ticks['ticks']:.0f} ticks, mean {ticks['mean']:.3f} s, 99% under "
                    f"{ticks['p99_le']:g} s, all under {ticks['max_le']:g} s (patchaas_tick_duration_seconds).")
    print()
    print(summary)
    print(lag_table)
    print()
    print(rss_table)
    print()
    print(stmt_table)
    cost_table = metrics_cost(runs, in_process)
    print()
    print(cost_table)
    print()
    print("the tick's due query on the whole table:\n" + plan)
    print(f"logs: {logdir}")
    if args.write_docs:
        body = "\n\n".join([
            f"Command: `{common.command_line(argv, 'bench.fleet_scale')}`",
            "Machine:\n\n" + common.machine_lines(info),
            summary, lag_table, rss_table, stmt_table, cost_table,
            "The tick's due query with every row due (EXPLAIN ANALYZE):\n\n```\n" + plan + "\n```",
        ])
        common.write_section("bench/fleet_scale.py", "Fleet scale (bench/fleet_scale.py)", body)
    return {"fleet": fleet, "statements": per_step, "plan": plan, "runs": runs, "in_process": in_process,
            "cost": cost_table}


def metrics_cost(runs: list[tuple[str, dict[str, Any]]], in_process: list[tuple[str, dict[str, Any]]]) -> str:
    """Metrics off and on: the processes' run (lag, time to the end, worker RSS) and the in-process engine's
    ms per step (one step per task, and batches), with on ÷ off of the means."""
    rows: list[list[Any]] = []
    for mode, r in runs:
        rows.append([f"processes, metrics {mode}", r["steps"], f"{r['p50']:.3f} / {r['p99']:.3f}", r["seconds"],
                     r["worker_rss"][1], int(r.get("metrics", {}).get("steps", 0)) or ""])
    for mode, r in in_process:
        rows.append([f"in process, metrics {mode}", r["one step per task"]["steps"] + r["batches"]["steps"],
                     f"{r['one step per task']['ms_per_step']:.3f} / {r['batches']['ms_per_step']:.3f} ms/step",
                     "", "", ""])

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    for label, pick in (("one step per task", lambda r: r["one step per task"]["ms_per_step"]),
                        ("batches", lambda r: r["batches"]["ms_per_step"])):
        on = mean([pick(r) for m, r in in_process if m == "on"])
        off = mean([pick(r) for m, r in in_process if m == "off"])
        if on and off:
            rows.append([f"on ÷ off, in process, {label} (ms/step)", "", metrics_switch.ratio(on, off), "", "", ""])
    on = mean([r["seconds"] for m, r in runs if m == "on"])
    off = mean([r["seconds"] for m, r in runs if m == "off"])
    if on and off:
        rows.append(["on ÷ off, processes (time to the end)", "", metrics_switch.ratio(on, off), "", "", ""])
    return common.table(["metrics off / on", "steps", "lag p50 / p99 s (in process: ms/step, task / batch)",
                         "all ended, s", "worker RSS peak MiB", "steps the exporter counted"], rows)


if __name__ == "__main__":
    main()
