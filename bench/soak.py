"""Soak: a thousand simulated servers patched by real workers while every fault of the chaos test is
injected, then a table of the faults injected and what each cost, and a table of the invariants checked.

    .venv/bin/python bench/soak.py --servers 1000

Everything runs on throwaway services started here (never the machine's own): a PostgreSQL cluster
(initdb in /tmp, run as the postgres user) and a redis-server without persistence, on free ports; emails
go to an SMTP server on loopback. Workers, beat and the fault schedule:

- first a baseline run of the same fleet with no faults (skip with --no-baseline), to know what the run
  costs when nothing goes wrong and what a step's delay normally is;
- then the soak run: `--workers` workers of `--concurrency` pool processes and one beat; every 6-12 s a
  random worker is SIGKILLed and restarted, or one of its pool processes is SIGKILLed (its message is
  then delivered again); crash hooks (simulation/faults.py) kill processes at random after the intent,
  after the effect, after the commit and after an SMTP send, plus once in both windows of every kind of
  step and one poison step that crashes every time (the reaper must fail it); the control plane fails
  2 % of calls; Redis is SIGKILLed and restarted empty, PostgreSQL crash-stopped and restarted, beat
  SIGKILLed and restarted, Redis frozen (SIGSTOP) longer than the broker socket timeout, once each; and
  duplicate `advance` / `deliver_email` messages are sent all along.

Both runs also carry issue 14's outside world (tests/e2e/outside.py, as in the chaos test): a webhook
subscription (every kind) to a loopback receiver that verifies every signature; `HOOKED` NORMAL servers past
those of the crash rules carry an HTTP hook (post_cycle, post_run, onFailure warn) and an HTTP health check
(onHealthFailure fail), the others `hooks: none`. A run ends once every execution ended, every email was sent
and every webhook delivery answered; its invariants then include every event received at least once with a
valid signature and one body per id, each hook at most once per point and per Idempotency-Key, and no run
completed with a failed final health check.

What a fault costs is measured, not assumed: a poller records when each execution's row version moves;
the delay of an affected execution is the time from the fault (or from when its step was due, if later)
to the next move. For a crash or a SIGKILL the affected executions are those whose lease the dead
process held; for Redis, PostgreSQL and beat, every active execution, compared with the same measure at
the same moment of the baseline run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.entrypoints.api import Patchaas  # noqa: E402
from orchestrator.persistence import migrate, models  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from simulation import faults  # noqa: E402
from simulation.mailsink import MailSink  # noqa: E402
from simulation.specs import Scenario, SimServerSpec, build_fleet_specs  # noqa: E402
from tests.e2e import outside as outside_mod  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    Cluster,
    PostgresServer,
    RedisServer,
    check_invariants,
    install_fleet,
    pool_children,
)
from workers import app as app_mod  # noqa: E402

SOAK_ENV = {
    "PATCHAAS_SIM_TIMINGS": "soak",  # reboot 3 s, package cycle 2 s, power-on 2 s
    "PATCHAAS_POLL_INTERVAL_SECONDS": "1",
    "PATCHAAS_TICK_SECONDS": "1",
    "PATCHAAS_REDRIVE_SECONDS": "5",
    "PATCHAAS_LEASE_SECONDS": "20",  # production: 300; above the longest step on a loaded 2-CPU machine
    "PATCHAAS_RETRY_BACKOFF_SECONDS": "1",
    "PATCHAAS_SHORT_COUNTDOWN_SECONDS": "5",
    "PATCHAAS_REBOOT_TIMEOUT_SECONDS": "90",
    "PATCHAAS_PACKAGE_TIMEOUT_SECONDS": "180",
    "PATCHAAS_POWER_TIMEOUT_SECONDS": "120",
    "PATCHAAS_EMAIL_HOLD_SECONDS": "10",
    "PATCHAAS_BROKER_SOCKET_TIMEOUT_SECONDS": "5",
    "PATCHAAS_MAX_ATTEMPTS": "5",
    "PATCHAAS_SETTLE_SECONDS": "1",
}
FAULT_ENV = {
    "PATCHAAS_SIM_ERROR_RATE": "0.02",
}
# per hook point reached: ~25 steps x 1,000 executions make these a crash every few seconds; in a batch one
# crash takes the whole batch down, so per-step rates much above this would model a machine that never stays up
RANDOM_CRASHES = "after_intent:0.001,after_effect:0.001,after_commit:0.0005,after_email:0.002"
POISON = "poison"
EXPECTED: dict[str, tuple[str, str | None]] = {
    Scenario.NORMAL: ("completed", None),
    Scenario.FLAKY_KB: ("completed", None),
    Scenario.PENDING_REBOOT: ("completed", None),
    Scenario.UP_TO_DATE: ("completed", None),
    Scenario.POWERED_OFF: ("completed", None),
    Scenario.BROKEN_KB: ("failed", "could not be installed: KB"),
    Scenario.ROLLBACK_KB: ("failed", "update loop"),
    Scenario.NEVER_RETURNS: ("failed", "did not come back"),
    POISON: ("failed", "invoking the update package failed 5 times"),
}
EFFECT_STEPS = ("entering_maintenance", "invoking_package", "rebooting", "exiting_maintenance")
HOOKED = 10  # NORMAL servers past the crash rules' whose runs carry the HTTP hook and the HTTP health check


# --- progress: when each execution's row moved ------------------------------------------------------------


class Progress:
    """Polls the executions table; keeps, per execution, every version it was seen at: when, and when its
    next step was due (None while a worker holds its lease)."""

    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.interval = interval
        self.moves: dict[str, list[tuple[float, int, float | None, bool]]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Progress:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.engine.dispose()

    def _run(self) -> None:
        table = models.Execution.__table__
        query = sa.select(table.c.id, table.c.version, table.c.next_run_at, table.c.lease_owner, table.c.ended_at)
        while not self._stop.is_set():
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(query).all()
            except sa.exc.SQLAlchemyError:  # PostgreSQL is restarting
                time.sleep(self.interval)
                continue
            seen = time.time()
            for row in rows:
                moves = self.moves[row.id]
                if not moves or moves[-1][1] != row.version:
                    due = None if row.lease_owner else (row.next_run_at.timestamp() if row.next_run_at else None)
                    moves.append((seen, row.version, due, row.ended_at is None))
            time.sleep(self.interval)

    def version_at(self, execution_id: str, at: float) -> int:
        return max((v for seen, v, _, _ in self.moves.get(execution_id, []) if seen <= at), default=0)

    def snapshot(self, at: float) -> dict[str, tuple[int, float]]:
        """Executions active at `at`: id -> (version, when its next step was due; `at` if leased)."""
        out: dict[str, tuple[int, float]] = {}
        for execution_id, moves in self.moves.items():
            before = [m for m in moves if m[0] <= at]
            if not before:
                continue
            _, version, due, active = before[-1]
            if active:
                out[execution_id] = (version, at if due is None else max(at, due))
        return out

    def delay(self, execution_id: str, version: int, since: float) -> float | None:
        """Seconds from `since` until the row was seen past `version` (None: it never moved again)."""
        for seen, v, _, _ in self.moves.get(execution_id, []):
            if v > version and seen >= since - self.interval:
                return max(0.0, seen - since - self.interval / 2)
        return None


# --- the fault ledger ---------------------------------------------------------------------------------------


@dataclass
class FaultEvent:
    kind: str
    at: float
    until: float
    affected: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (version, due)


@dataclass
class Run:
    label: str
    started: float = 0.0
    ended: float = 0.0
    events: list[FaultEvent] = field(default_factory=list)
    duplicates: int = 0
    durations: list[float] = field(default_factory=list)

    @property
    def makespan(self) -> float:
        return self.ended - self.started


def leased_by(url: str, pids: list[int], in_flight: bool = False) -> dict[str, tuple[int, float]]:
    """Executions whose lease one of `pids` holds (owner is host:pid:uuid), with their version; with
    `in_flight`, also those handed to the broker and not yet claimed (a dead worker may hold their message:
    Celery keeps countdown messages in the worker's memory until they are due)."""
    engine = sa.create_engine(url)
    table = models.Execution.__table__
    try:
        with engine.connect() as conn:
            now = time.time()
            rows = conn.execute(sa.select(table.c.id, table.c.version, table.c.lease_owner, table.c.next_run_at,
                                          table.c.dispatched_until).where(table.c.ended_at.is_(None))).all()
    except sa.exc.SQLAlchemyError:
        return {}
    finally:
        engine.dispose()
    wanted = {str(p) for p in pids}
    out = {r.id: (r.version, now) for r in rows if r.lease_owner and r.lease_owner.split(":")[-2] in wanted}
    if in_flight:
        for r in rows:
            if not r.lease_owner and r.dispatched_until and r.dispatched_until.timestamp() > now and r.next_run_at:
                out.setdefault(r.id, (r.version, max(now, r.next_run_at.timestamp())))
    return out


# --- one run ---------------------------------------------------------------------------------------------------


def plan_for(specs: list[SimServerSpec]) -> dict[str, str]:
    plan: dict[str, str] = {s.name: s.scenario for s in specs if s.scenario is not Scenario.UNSUPPORTED_OS}
    poison = next(s.name for s in reversed(specs) if s.scenario is Scenario.NORMAL)
    plan[poison] = POISON
    return plan


def crash_rules(plan: dict[str, str], ids: dict[str, str]) -> str:
    """Random crashes, once in both windows of every kind of effect, and the poison step."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for server, kind in plan.items():
        if server in ids:
            by_kind[kind].append(ids[server])
    normal = by_kind[Scenario.NORMAL]
    rules = []
    for index, step in enumerate(EFFECT_STEPS):
        rules.append(f"after_intent@{normal[2 * index]}/{step}#1")
        rules.append(f"after_effect@{normal[2 * index + 1]}/{step}#1")
    off = by_kind[Scenario.POWERED_OFF]
    rules += [f"after_effect@{off[0]}/powering_on#1", f"after_intent@{off[0]}/restoring_power#1",
              f"after_intent@{off[1]}/powering_on#1", f"after_effect@{off[1]}/restoring_power#1"]
    rules.append(f"after_effect@{by_kind[Scenario.PENDING_REBOOT][0]}/rebooting#1")
    rules.append(f"after_intent@{by_kind[POISON][0]}/invoking_package")
    return ",".join([*rules, RANDOM_CRASHES])


def run_once(label: str, url: str, redis: RedisServer, pg: PostgresServer, sink: MailSink,
             specs: list[SimServerSpec], args: argparse.Namespace, workdir: Path,
             schedule: dict[str, float] | None) -> tuple[Run, dict[str, Any]]:
    """Patch the fleet; with `schedule` (fault name -> seconds after the start), inject every fault."""
    rng = random.Random(args.seed)
    chaos = schedule is not None
    plan = plan_for(specs)
    fleet = install_fleet(url, specs)
    settings = Settings(database_url=url, broker_url=redis.url)
    patching = Patchaas.connect(settings)
    sender = app_mod.create_app(settings)
    cluster = Cluster.for_test(url, redis.url, sink.url, workdir / label)
    cluster.env.update(SOAK_ENV)
    key = Fernet.generate_key().decode()
    cluster.env.update(outside_mod.ENV, PATCHAAS_WEBHOOK_KEY=key)
    outside = outside_mod.Outside.start(url, key)  # the webhook subscription and the hook, before the first run
    crash_dir = workdir / label / "crashes"
    run = Run(label)
    progress = Progress(url).start()
    workers = [f"w{i + 1}" for i in range(args.workers)]

    def start(name: str) -> None:
        if name == "beat":
            cluster.start_beat()
        else:
            cluster.start(name, "worker", f"--concurrency={args.concurrency}", "--loglevel=WARNING",
                          f"--hostname={name}@%h")

    try:
        run.started = time.time()
        hooked = [server for server, kind in plan.items() if kind == Scenario.NORMAL][8:8 + HOOKED]
        answers = patching.execute_package("OSD", [s.name for s in specs if s.name not in hooked],
                                           parameters={"hooks": "none"})
        answers += patching.execute_package("OSD", hooked, parameters=outside.parameters())
        ids = {a.server: a.execution_id for a in answers if a.is_queued}
        refused = [a.server for a in answers if not a.is_queued]
        assert set(ids) == set(plan), f"not queued: {sorted(set(plan) - set(ids))}"
        if chaos:
            cluster.env.update(FAULT_ENV)
            cluster.env.update(PATCHAAS_CRASH_POINTS=crash_rules(plan, ids), PATCHAAS_CRASH_SEED=str(args.seed),
                               PATCHAAS_CRASH_STATE_DIR=str(crash_dir))
        for name in [*workers, "beat"]:
            start(name)
        restarts: list[tuple[float, str]] = []
        done: set[str] = set()
        next_kill = time.monotonic() + rng.uniform(6, 12)
        next_duplicate = time.monotonic() + 1
        last_report = 0.0
        engine = sa.create_engine(url, pool_pre_ping=True)
        while True:
            now, elapsed = time.monotonic(), time.time() - run.started
            for due in [r for r in restarts if r[0] <= now]:
                restarts.remove(due)
                start(due[1])
            try:
                with engine.connect() as conn:
                    active = conn.execute(sa.select(sa.func.count()).select_from(models.Execution)
                                          .where(models.Execution.ended_at.is_(None))).scalar_one()
                    unsent = conn.execute(sa.select(sa.func.count()).select_from(models.Outbox)
                                          .where(models.Outbox.sent_at.is_(None))).scalar_one()
            except sa.exc.SQLAlchemyError:
                active = unsent = -1
            if elapsed - last_report >= 15:
                print(f"  [{label}] {elapsed:6.0f}s: {active} executions active, {unsent} emails unsent, "
                      f"{queue_length(redis)} messages queued", flush=True)
                last_report = elapsed
            if active == 0 and unsent == 0 and outside_mod.webhooks_pending(url) == (0, 0):  # all delivered
                if chaos and len(done) != len(schedule or {}):
                    print(f"  [{label}] ended before {sorted(set(schedule or {}) - done)} could be injected")
                break
            if elapsed > args.timeout:
                raise SystemExit(f"{label}: still {active} active after {args.timeout}s; logs in {cluster.logdir}")
            if chaos and active != 0:
                assert schedule is not None
                for fault, at in schedule.items():
                    if fault in done or elapsed < at:
                        continue
                    done.add(fault)
                    inject(fault, run, progress, cluster, redis, pg, restarts)
                if now >= next_kill:
                    kill_one(cluster, workers, rng, run, url, restarts)
                    next_kill = now + rng.uniform(6, 12)
                if now >= next_duplicate:
                    run.duplicates += send_duplicates(sender, engine, rng)
                    next_duplicate = now + 0.5
            time.sleep(0.1)
        run.ended = time.time()
        engine.dispose()
        for name in [*workers, "beat"]:
            if name not in cluster.procs:
                start(name)
        cluster.stop_all()
        progress.stop()
        with sink.lock:
            messages = [m for m in sink.messages if m["X-Patchaas-Execution"] in set(ids.values())]
        expected = {server: EXPECTED[kind if chaos or kind != POISON else Scenario.NORMAL]
                    for server, kind in plan.items()}
        verdict = check_invariants(url, fleet, ids, expected,
                                   powered_off={s for s, k in plan.items() if k == Scenario.POWERED_OFF},
                                   pending_reboot={s for s, k in plan.items() if k == Scenario.PENDING_REBOOT},
                                   messages=messages)
        result_outside = outside_mod.check_outside(url, outside, {ids[s] for s in hooked}, verdict)
        print(f"  [{label}] webhooks, hooks, health checks: {json.dumps(result_outside)}", flush=True)
        run.durations = durations(url)
        crashes = faults.crash_log(crash_dir) if chaos else []
        for crash in crashes:
            if crash["point"] == "after_email":
                continue
            at = float(crash["at"])
            # the version once the dead process's last write (its intent, its commit) is visible
            version = progress.version_at(crash["execution"], at + 2 * progress.interval)
            run.events.append(FaultEvent(f"crash {crash['point'].replace('_', ' ')}", at, at,
                                         {crash["execution"]: (version, at)}))
        result = {
            "verdict": verdict, "crashes": crashes, "refused": refused, "progress": progress,
            "email_delays": email_delays(url, crashes), "log_counts": log_counts(cluster.logdir),
            "poison": poison_cost(url, ids, plan),
        }
        return run, result
    finally:
        cluster.stop_all()
        progress.stop()
        patching.close()
        outside.close()


def inject(fault: str, run: Run, progress: Progress, cluster: Cluster, redis: RedisServer, pg: PostgresServer,
           restarts: list[tuple[float, str]]) -> None:
    at = time.time()
    affected = progress.snapshot(at)
    if fault == "redis_wipe":
        redis.restart(downtime=2.0)
        label = "Redis SIGKILL, restarted empty (2 s down)"
    elif fault == "postgres_restart":
        pg.restart(downtime=2.0)
        label = "PostgreSQL stop -m immediate, restart (2 s down)"
    elif fault == "beat_kill":
        cluster.kill("beat")
        restarts.append((time.monotonic() + 2.0, "beat"))
        label = "beat SIGKILL, restarted after 2 s"
    elif fault == "redis_freeze":
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)
        time.sleep(8.0)
        os.kill(redis.proc.pid, signal.SIGCONT)
        label = "Redis frozen 8 s (SIGSTOP; socket timeout 5 s)"
    else:  # pragma: no cover
        raise ValueError(fault)
    print(f"  [{run.label}] {at - run.started:6.0f}s: {label}", flush=True)
    run.events.append(FaultEvent(label, at, time.time(), affected))


def kill_one(cluster: Cluster, workers: list[str], rng: random.Random, run: Run, url: str,
             restarts: list[tuple[float, str]]) -> None:
    alive = [w for w in workers if w in cluster.procs]
    if not alive:
        return
    name = rng.choice(alive)
    children = pool_children(cluster.procs[name].pid)
    at = time.time()
    if children and rng.random() < 0.4:
        child = rng.choice(children)
        affected = leased_by(url, [child])
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            return
        run.events.append(FaultEvent("pool process SIGKILL (message delivered again)", at, at, affected))
        return
    affected = leased_by(url, children, in_flight=True)
    cluster.kill(name)
    restarts.append((time.monotonic() + rng.uniform(0.5, 3.0), name))
    run.events.append(FaultEvent("worker SIGKILL (whole process group; leases + messages in flight)", at, at,
                                 affected))


def queue_length(redis: RedisServer) -> str:
    import redis as redis_client

    try:
        client = redis_client.Redis(port=redis.port, socket_timeout=1)
        length = int(client.llen("patchaas"))
        client.close()
        return str(length)
    except Exception:
        return "?"


def send_duplicates(sender: Any, engine: sa.Engine, rng: random.Random) -> int:
    try:
        with engine.connect() as conn:
            executions = conn.execute(sa.select(models.Execution.id).where(models.Execution.ended_at.is_(None))
                                      .limit(200)).scalars().all()
            emails = conn.execute(sa.select(models.Outbox.id).order_by(models.Outbox.id.desc())
                                  .limit(200)).scalars().all()
    except sa.exc.SQLAlchemyError:
        return 0
    sent = 0
    picks = [(app_mod.ADVANCE, e) for e in rng.sample(list(executions), min(2, len(executions)))]
    picks += [(app_mod.DELIVER_EMAIL, e) for e in rng.sample(list(emails), min(1, len(emails)))]
    for task, arg in picks:
        try:
            sender.send_task(task, args=[arg], retry=False)
            sent += 1
        except Exception:  # Redis is down or frozen
            pass
    return sent


# --- measurements --------------------------------------------------------------------------------------------


def durations(url: str) -> list[float]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models.Execution.started_at, models.Execution.ended_at)).all()
    engine.dispose()
    return [(r.ended_at - r.started_at).total_seconds() for r in rows if r.ended_at]


def email_delays(url: str, crashes: list[dict[str, str]]) -> list[float]:
    """For each crash after an SMTP send: seconds until the row was marked sent (by a second send)."""
    ids = {int(c["execution"]): float(c["at"]) for c in crashes if c["point"] == "after_email"}
    if not ids:
        return []
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models.Outbox.id, models.Outbox.sent_at).where(models.Outbox.id.in_(ids))).all()
    engine.dispose()
    return [r.sent_at.timestamp() - ids[r.id] for r in rows if r.sent_at]


def poison_cost(url: str, ids: dict[str, str], plan: dict[str, str]) -> tuple[float, str]:
    server = next(s for s, k in plan.items() if k == POISON)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(models.Execution).where(models.Execution.id == ids[server])).one()
    engine.dispose()
    return ((row.ended_at - row.started_at).total_seconds(), row.failure_reason or "")


def log_counts(logdir: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in logdir.glob("w*.log"):
        text = path.read_text(errors="replace")
        counts["control-plane errors retried"] += text.count("simulated control-plane error")
        counts["database blips retried in-process"] += text.count("retrying the transaction in")
        counts["hand-offs lost to the broker (tick re-sent)"] += text.count("the tick will re-send it")
        counts["ticks skipped (database down)"] += text.count("tick skipped")
        counts["tasks cancelled on broker connection loss"] += text.count("Terminating it instead")
    return counts


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float]) -> list[str]:
    """p50, p95, max as table cells."""
    if not values:
        return ["-", "-", "-"]
    return [f"{statistics.median(values):.1f}", f"{pct(values, 0.95):.1f}", f"{max(values):.1f}"]


def fault_table(run: Run, progress: Progress, baseline: tuple[Run, Progress] | None) -> list[list[str]]:
    """Per kind of fault: how many, executions affected, their delay (median / p95 / max), and for the
    fleet-wide faults the same measure at the same moment of the baseline run."""
    by_kind: dict[str, list[FaultEvent]] = defaultdict(list)
    for event in run.events:
        by_kind[event.kind].append(event)
    rows = []
    for kind, events in by_kind.items():
        delays: list[float] = []
        normal: list[float] = []
        for event in events:
            for execution_id, (version, due) in event.affected.items():
                delay = progress.delay(execution_id, version, max(event.until, due))
                if delay is not None:
                    delays.append(delay)
            if baseline is not None and len(event.affected) > 5:
                base_run, base_progress = baseline
                offset = event.at - run.started
                moment = base_run.started + offset
                for execution_id, (version, due) in base_progress.snapshot(moment).items():
                    delay = base_progress.delay(execution_id, version, max(moment + event.until - event.at, due))
                    if delay is not None:
                        normal.append(delay)
        rows.append([kind, str(len(events)), str(sum(len(e.affected) for e in events)), *spread(delays),
                     f"{statistics.median(normal):.1f}" if normal else "-"])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=False)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def machine() -> str:
    free = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip().splitlines()
    mem = free[1].split()[1] if len(free) > 1 else "?"
    return (f"{platform.node()}: {os.cpu_count()} CPUs (nproc), {mem} GiB RAM (free -g), "
            f"Python {platform.python_version()}")


# --- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=2016)
    p.add_argument("--timeout", type=float, default=1800.0, help="give up on a run after this many seconds")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without faults")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="patchaas-soak-"))
    workdir.chmod(0o755)  # the postgres user must reach its data directory inside
    pg = PostgresServer(workdir / "pg")
    redis = RedisServer(workdir / "redis")
    specs = build_fleet_specs(args.seed, args.servers)
    print(f"soak: {args.servers} servers ({dict(Counter(s.scenario.value for s in specs))}), "
          f"{args.workers} workers x {args.concurrency} processes; {machine()}; work dir {workdir}", flush=True)
    try:
        pg.init().start()
        redis.start()
        with MailSink() as sink:
            baseline = None
            base_result: dict[str, Any] = {}
            if not args.no_baseline:
                url = pg.create_database("baseline")
                migrate.upgrade(url)
                base_run, base_result = run_once("baseline", url, redis, pg, sink, specs, args, workdir, None)
                baseline = (base_run, base_result["progress"])
                base_verdict = base_result["verdict"]
                print(f"  baseline: {base_run.makespan:.0f}s; invariants "
                      f"{'hold' if base_verdict.ok else 'BROKEN: ' + '; '.join(base_verdict.failures()[:5])}",
                      flush=True)
                redis.restart(downtime=0.1)  # nothing left over
            span = baseline[0].makespan if baseline else 60.0 + args.servers * 0.25
            schedule = {"redis_wipe": 0.2 * span, "postgres_restart": 0.4 * span, "beat_kill": 0.55 * span,
                        "redis_freeze": 0.7 * span}
            url = pg.create_database("soak")
            migrate.upgrade(url)
            run, result = run_once("soak", url, redis, pg, sink, specs, args, workdir, schedule)
    finally:
        redis.stop()
        try:
            pg.stop("immediate")
        except Exception:
            pass

    verdict = result["verdict"]
    crashes = result["crashes"]
    fault_rows = fault_table(run, result["progress"], baseline)
    email = result["email_delays"]
    fault_rows.append(["crash after SMTP send (email sent again, same Message-ID)",
                       str(sum(c["point"] == "after_email" for c in crashes)), str(len(email)), *spread(email), "-"])
    poison_seconds, poison_reason = result["poison"]
    poison_crashes = sum(1 for c in crashes if "#" not in c["rule"] and ":" not in c["rule"])
    fault_rows.append(["poison step (crashes every time) -> failed by the reaper", str(poison_crashes), "1",
                       f"{poison_seconds:.1f}", "-", "-", "-"])
    fault_rows.append(["duplicate advance / deliver_email messages", str(run.duplicates), "-", "-", "-", "-", "-"])
    for name, count in result["log_counts"].items():
        fault_rows.append([name, str(count), "-", "-", "-", "-", "-"])

    print()
    print(f"machine: {machine()}")
    print(f"fleet: {args.servers} servers, {len(result['refused'])} refused at request time (unsupported OS), "
          f"{verdict.counts['executions']} executions; {args.workers} workers x {args.concurrency} pool processes")
    print(f"settings: lease {SOAK_ENV['PATCHAAS_LEASE_SECONDS']}s, redrive {SOAK_ENV['PATCHAAS_REDRIVE_SECONDS']}s, "
          f"tick {SOAK_ENV['PATCHAAS_TICK_SECONDS']}s, poll {SOAK_ENV['PATCHAAS_POLL_INTERVAL_SECONDS']}s, "
          f"email hold {SOAK_ENV['PATCHAAS_EMAIL_HOLD_SECONDS']}s, sim timings soak (reboot 3s, package 2s)")
    print()
    print("Faults injected and what they cost (delay: seconds until an affected execution moved again)")
    print(table(["fault", "count", "affected", "delay p50", "p95", "max", "baseline p50"], fault_rows))
    print()
    print("Invariants checked")
    print(verdict.table())
    print()
    lines = [["run", "makespan s", "execution p50 s", "p95 s", "max s"]]
    for r in ([baseline[0]] if baseline else []) + [run]:
        lines.append([r.label, f"{r.makespan:.0f}", f"{statistics.median(r.durations):.1f}",
                      f"{pct(r.durations, 0.95):.1f}", f"{max(r.durations):.1f}"])
    print(table(lines[0], lines[1:]))
    if baseline:
        extra = run.makespan - baseline[0].makespan
        print(f"extra time for the whole run under faults: {extra:+.0f}s "
              f"({extra / baseline[0].makespan:+.0%}); per execution (median): "
              f"{statistics.median(run.durations) - statistics.median(baseline[0].durations):+.1f}s")
    print(f"counts: {verdict.counts}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "servers": args.servers, "faults": fault_rows,
            "invariants": {k: [c, len(b)] for k, (c, b) in verdict.rows.items()}, "counts": verdict.counts,
            "makespan": run.makespan, "baseline_makespan": baseline[0].makespan if baseline else None,
        }, indent=2))
    broken = verdict.failures() + (base_result["verdict"].failures() if base_result else [])
    if broken:
        print("\nVIOLATIONS:\n" + "\n".join(broken[:50]))
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
