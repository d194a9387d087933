"""Chaos: real workers patch a fleet while we SIGKILL them, crash them in the two dangerous windows, wipe
Redis, crash PostgreSQL and deliver messages twice; afterwards every execution ended where it should and
nothing was done twice, on the simulator's own record.

The test runs its own PostgreSQL cluster and its own Redis on free ports (never the machine's), so it can
crash-restart them. Faults, in one run of about a minute:

- every 2-4 s a random worker is SIGKILLed (its whole process group) and restarted, or one of its pool
  processes is SIGKILLed (Celery then re-queues that message: a second delivery);
- deterministic crashes (`orchestrator.faults`, counted cluster-wide so each fires exactly once) after the
  intent and after the effect of every kind of step: maintenance on and off, package, reboot, pre-check
  reboot, power on and off; after a commit; after an SMTP send (a duplicate email by design, same
  Message-ID); plus 2 % random crashes in both windows;
- one poison step that crashes every time: the lease reaper must fail that run after `max_attempts`;
- the control plane fails 3 % of calls;
- Redis SIGKILLed and restarted empty, once; PostgreSQL stopped with `-m immediate` and restarted, once;
  beat SIGKILLed and restarted, once;
- duplicate `advance` and `deliver_email` messages for random executions and emails, all along.

The same run carries issue 14's outside world, on loopback: a webhook subscription (every kind) to a receiver
that verifies every signature; two NORMAL servers (outside the crash rules) whose runs carry an HTTP hook `lb`
(post_cycle and post_run, onFailure warn, its secret header from an env: reference) and an HTTP health check
(onHealthFailure fail); the other runs ask for `hooks: none`.

Then every invariant of issue 4 is checked per execution (`harness.check_invariants`), and, once every event
is fanned out and every delivery answered (a bounded wait), issue 14's (`tests/e2e/outside.py::check_outside`):
every event of the log reached the receiver at least once with a valid signature, and all copies of one id
carry one body (at least once, never "exactly once": a kill after the receiver's answer sends it again; a
request cut off mid-body is not a delivery); each hook ran at most once per (execution, point, cycle, hook)
and its receiver saw each Idempotency-Key at most once (an HTTP hook interrupted by a kill is `unknown`, never
re-sent); every hook run `ok` or `unknown`, each `ok` one seen by the receiver; a completed hooked run ran
post_cycle 1 and post_run; the hooked runs' health checks passed before and after; no run completed with a
failed final health check.

Faster tests below reach every window of every step in-process (one step per task, and in batches), and pin
the fixes the chaos runs forced: a control-plane error after the intent backs off instead of holding the
lease; a database blip during a save or an email's "sent" mark is ridden out; the tick spaces out re-sends of
a stuck step. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from orchestrator import bootstrap
from orchestrator.domain import machine
from orchestrator.engine import rounds
from orchestrator.entrypoints.api import Patchaas
from orchestrator.persistence import health_models, migrate, models
from orchestrator.ports import FleetError
from orchestrator.settings import DEFAULT_PACKAGE_ID, Settings
from schemas.patching import PackageRequest
from simulation import faults
from simulation import fleet as simulated
from simulation.mailsink import MailSink
from simulation.specs import Scenario, SimServerSpec, build_fleet_specs
from simulation.store import MemoryStore
from tests import support
from tests.e2e.harness import (
    Cluster,
    PostgresServer,
    RedisServer,
    Verdict,
    active_executions,
    check_invariants,
    install_fleet,
    pool_children,
    wait_until,
)
from tests.e2e.outside import ENV as OUTSIDE_ENV
from tests.e2e.outside import Outside, check_outside, webhooks_pending
from workers import app as app_mod
from workers import mail

SEED = int(os.environ.get("PATCHAAS_CHAOS_SEED", "20160607"))
POISON = "poison"  # a NORMAL server whose package step crashes every time

EXPECTED: dict[str, tuple[str, str | None]] = {  # scenario -> (status, part of the failure reason)
    Scenario.NORMAL: ("completed", None),
    Scenario.FLAKY_KB: ("completed", None),
    Scenario.PENDING_REBOOT: ("completed", None),
    Scenario.UP_TO_DATE: ("completed", None),
    Scenario.POWERED_OFF: ("completed", None),
    Scenario.BROKEN_KB: ("failed", "could not be installed: KB"),
    Scenario.ROLLBACK_KB: ("failed", "update loop"),
    Scenario.NEVER_RETURNS: ("failed", "did not come back"),
    POISON: ("failed", "invoking the update package failed"),  # "... failed <max_attempts> times"
}

CHAOS_ENV = {
    "PATCHAAS_SIM_TIMINGS": "demo",  # reboots take 1.5 s, a package cycle 1 s: kills land mid-wait
    "PATCHAAS_POLL_INTERVAL_SECONDS": "0.3",
    "PATCHAAS_TICK_SECONDS": "0.5",
    "PATCHAAS_REDRIVE_SECONDS": "2",
    "PATCHAAS_LEASE_SECONDS": "4",
    "PATCHAAS_RETRY_BACKOFF_SECONDS": "0.3",
    "PATCHAAS_REBOOT_TIMEOUT_SECONDS": "25",
    "PATCHAAS_PACKAGE_TIMEOUT_SECONDS": "40",
    "PATCHAAS_POWER_TIMEOUT_SECONDS": "25",
    "PATCHAAS_EMAIL_HOLD_SECONDS": "3",
    "PATCHAAS_MAX_ATTEMPTS": "5",
    "PATCHAAS_SIM_ERROR_RATE": "0.03",  # the control plane fails 3 % of calls transiently
    "PATCHAAS_SETTLE_SECONDS": "0.5",
    **OUTSIDE_ENV,  # webhooks to loopback, short retries, a killed send re-sent after 3 s; the hook's header
}
WEBHOOK_KEY = Fernet.generate_key().decode()
HOOKED = 2  # NORMAL servers (outside the crash rules) whose runs carry the HTTP hook and the HTTP health check
RANDOM_CRASHES = "after_intent:0.02,after_effect:0.02"
CHAOS_WINDOW = 40.0  # seconds of random kills and duplicate messages
REDIS_RESTART_AT = 7.0
POSTGRES_RESTART_AT = 15.0
BEAT_KILL_AT = 22.0


@dataclass
class Services:
    pg: PostgresServer
    redis: RedisServer
    database_url: str
    workdir: Path


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Our own PostgreSQL and Redis (crash-restarted by the test), stopped and removed afterwards."""
    pgdir = Path(tempfile.mkdtemp(prefix="patchaas-chaos-pg-"))  # under /tmp: the postgres user can reach it
    pg = PostgresServer(pgdir)
    redis = RedisServer(tmp_path / "redis")
    try:
        pg.init().start()
        url = pg.create_database("patchaas")
        migrate.upgrade(url)
        redis.start()
        yield Services(pg, redis, url, tmp_path)
    finally:
        redis.stop()
        try:
            pg.stop("immediate")
        except Exception:  # already down
            pass
        shutil.rmtree(pgdir, ignore_errors=True)


@dataclass
class Ledger:
    """What the test injected."""

    started: float = field(default_factory=time.monotonic)
    worker_kills: int = 0
    child_kills: int = 0
    duplicates: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.1f}s {text}")
        self.wall.append((time.time(), text))

    wall: list[tuple[float, str]] = field(default_factory=list)


def _plan(specs: list[SimServerSpec]) -> dict[str, str]:
    """Server -> expectation key: its scenario, or POISON for one NORMAL server."""
    plan = {s.name: s.scenario for s in specs}
    poison = next(s.name for s in reversed(specs) if s.scenario is Scenario.NORMAL)
    plan[poison] = POISON
    return plan


def _crash_rules(plan: dict[str, str], ids: dict[str, str]) -> str:
    """Deterministic crashes in both windows of every kind of step, each once cluster-wide."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for server, kind in plan.items():
        by_kind[kind].append(ids[server])
    normal, off, pending = by_kind[Scenario.NORMAL], by_kind[Scenario.POWERED_OFF], by_kind[Scenario.PENDING_REBOOT]
    flaky = by_kind[Scenario.FLAKY_KB]
    rules = [
        f"after_intent@{normal[0]}/entering_maintenance#1",
        f"after_effect@{normal[1]}/entering_maintenance#1",
        f"after_intent@{normal[2]}/invoking_package#1",
        f"after_effect@{normal[3]}/invoking_package#1",
        f"after_intent@{normal[4]}/rebooting#1",
        f"after_effect@{normal[5]}/rebooting#1",
        f"after_intent@{normal[0]}/exiting_maintenance#1",
        f"after_effect@{normal[1]}/exiting_maintenance#1",
        f"after_effect@{off[0]}/powering_on#1",
        f"after_intent@{off[0]}/restoring_power#1",
        f"after_intent@{off[1]}/powering_on#1",
        f"after_effect@{off[1]}/restoring_power#1",
        f"after_effect@{pending[0]}/rebooting#1",  # the reboot pending before the first cycle
        f"after_intent@{pending[1]}/rebooting#1",
        f"after_commit@{flaky[0]}/awaiting_result#1",
        f"after_commit@{normal[2]}/awaiting_boot#1",
        f"after_commit@{normal[3]}/exiting_maintenance#1",  # the end email's hand-off is lost: the tick re-sends
        "after_email#3",  # sent, not marked: the same email goes out again (same Message-ID)
        f"after_intent@{by_kind[POISON][0]}/invoking_package",  # every time: the reaper must end it
    ]
    return ",".join([*rules, RANDOM_CRASHES])


def _start(cluster: Cluster, name: str) -> None:
    """Start worker `name` (2 pool processes, INFO logs: every step is in the log) or the beat."""
    if name == "beat":
        cluster.start_beat()
    else:
        cluster.start(name, "worker", "--concurrency=2", "--loglevel=INFO", f"--hostname={name}@%h")


def _kill_something(cluster: Cluster, rng: random.Random, ledger: Ledger, restarts: list[tuple[float, str]]) -> None:
    workers = sorted(name for name in cluster.procs if name.startswith("w"))
    if not workers:
        return
    name = rng.choice(workers)
    children = pool_children(cluster.procs[name].pid)
    if children and rng.random() < 0.4:
        child = rng.choice(children)
        try:
            os.kill(child, signal.SIGKILL)
            ledger.child_kills += 1
            ledger.note(f"SIGKILL pool process {child} of {name}")
        except ProcessLookupError:
            pass
        return
    cluster.kill(name)
    ledger.worker_kills += 1
    ledger.note(f"SIGKILL worker {name}")
    restarts.append((time.monotonic() + rng.uniform(0.3, 1.5), name))


def _send_duplicates(sender: object, database_url: str, rng: random.Random, ledger: Ledger) -> None:
    """Deliver a few messages twice: steps of random executions, random emails (sent or not)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            executions = conn.execute(sa.select(models.Execution.id)).scalars().all()
            emails = conn.execute(sa.select(models.Outbox.id)).scalars().all()
    except sa.exc.OperationalError:
        return  # PostgreSQL is restarting
    finally:
        engine.dispose()
    picks = [(app_mod.ADVANCE, e) for e in rng.sample(executions, min(2, len(executions)))]
    picks += [(app_mod.DELIVER_EMAIL, e) for e in rng.sample(emails, min(1, len(emails)))]
    for task, arg in picks:
        try:
            sender.send_task(task, args=[arg], retry=False)  # type: ignore[attr-defined]
            ledger.duplicates += 1
        except Exception:  # Redis is restarting
            pass


def test_runs_survive_kills_restarts_and_duplicates(services: Services, mail_sink: MailSink) -> None:
    rng = random.Random(SEED)
    db_url = services.database_url
    scenarios = {s: 2 for s in EXPECTED if s != POISON} | {Scenario.UP_TO_DATE: 1, Scenario.NORMAL: 9}
    specs = build_fleet_specs(SEED % 1000, sum(scenarios.values()), scenarios=scenarios)
    plan = _plan(specs)
    fleet = install_fleet(db_url, specs)
    crash_dir = services.workdir / "crashes"
    settings = Settings(database_url=db_url, broker_url=services.redis.url)
    patching = Patchaas.connect(settings)
    sender = app_mod.create_app(settings)
    cluster = Cluster.for_test(db_url, services.redis.url, mail_sink.url, services.workdir / "cluster")
    ledger = Ledger()
    outside = Outside.start(db_url, WEBHOOK_KEY)  # the webhook subscription and the hook exist before the first run
    try:
        hooked = [server for server, kind in plan.items() if kind == Scenario.NORMAL][6:6 + HOOKED]
        answers = patching.execute_package("OSD", [s.name for s in specs if s.name not in hooked],
                                           parameters={"hooks": "none"})
        answers += patching.execute_package("OSD", hooked, parameters=outside.parameters())
        assert len(answers) == len(specs) and all(a.is_queued for a in answers)
        ids = {a.server: a.execution_id for a in answers}
        cluster.env.update(CHAOS_ENV)
        cluster.env.update(PATCHAAS_WEBHOOK_KEY=WEBHOOK_KEY)
        cluster.env.update(PATCHAAS_CRASH_POINTS=_crash_rules(plan, ids), PATCHAAS_CRASH_SEED=str(SEED),
                           PATCHAAS_CRASH_STATE_DIR=str(crash_dir))
        for name in ("w1", "w2", "beat"):
            _start(cluster, name)

        # --- chaos ---------------------------------------------------------------------------
        restarts: list[tuple[float, str]] = []
        next_kill = ledger.started + rng.uniform(2.0, 4.0)
        next_duplicate = ledger.started + 1.0
        redis_done = postgres_done = beat_done = False
        while True:
            now = time.monotonic()
            elapsed = now - ledger.started
            for due in [r for r in restarts if r[0] <= now]:
                restarts.remove(due)
                _start(cluster, due[1])
                ledger.note(f"restarted {due[1]}")
            if elapsed > CHAOS_WINDOW or (redis_done and postgres_done and not active_executions(db_url)):
                break
            if not redis_done and elapsed >= REDIS_RESTART_AT:
                ledger.note("Redis SIGKILLed (contents lost)")
                services.redis.restart(downtime=1.5)
                ledger.note("Redis restarted empty")
                redis_done = True
            if not postgres_done and elapsed >= POSTGRES_RESTART_AT:
                ledger.note("PostgreSQL stopped -m immediate")
                services.pg.restart(downtime=1.5)
                ledger.note("PostgreSQL restarted")
                postgres_done = True
            if not beat_done and elapsed >= BEAT_KILL_AT:
                cluster.kill("beat")
                ledger.note("SIGKILL beat")
                restarts.append((now + 1.0, "beat"))
                beat_done = True
            if now >= next_kill:
                _kill_something(cluster, rng, ledger, restarts)
                next_kill = now + rng.uniform(2.0, 4.0)
            if now >= next_duplicate:
                _send_duplicates(sender, db_url, rng, ledger)
                next_duplicate = now + 0.5
            time.sleep(0.1)
        for name in ("w1", "w2", "beat"):
            if name not in cluster.procs:
                _start(cluster, name)
        ledger.note("chaos over")

        # --- everything ends --------------------------------------------------------------------
        def outbox_pending() -> int:
            engine = sa.create_engine(db_url)
            with engine.connect() as conn:
                count = conn.execute(sa.select(sa.func.count()).select_from(models.Outbox)
                                     .where(models.Outbox.sent_at.is_(None))).scalar_one()
            engine.dispose()
            return int(count)

        wait_until(lambda: not active_executions(db_url), timeout=120, interval=0.5,
                   on_timeout=lambda: f"still active: {active_executions(db_url)}\n" + "\n".join(ledger.events)
                   + "\n" + cluster.log("w1")[-4000:])
        wait_until(lambda: outbox_pending() == 0, timeout=30, interval=0.5,
                   on_timeout=lambda: f"{outbox_pending()} emails still unsent")
        # at least once: wait (generously) until every event is fanned out and every delivery answered 2xx
        wait_until(lambda: webhooks_pending(db_url) == (0, 0), timeout=120, interval=0.5,
                   on_timeout=lambda: f"webhooks still pending (events, deliveries): {webhooks_pending(db_url)}")
        ledger.note("all executions ended, all emails sent, all webhooks delivered")
        duration = time.monotonic() - ledger.started
        cluster.stop_all()

        # --- the record -------------------------------------------------------------------------
        crashes = faults.crash_log(crash_dir)
        with mail_sink.lock:
            messages = list(mail_sink.messages)
        report = _check(db_url, fleet, plan, ids, messages, crashes)
        report.update(_check_outside(db_url, outside, {ids[s] for s in hooked}))
        report.update(
            seconds=round(duration, 1), worker_kills=ledger.worker_kills, pool_kills=ledger.child_kills,
            duplicate_messages=ledger.duplicates, redis_restarts=services.redis.restarts,
            postgres_restarts=services.pg.restarts, crashes=dict(Counter(c["point"] for c in crashes)),
        )
        print("\nCHAOS " + json.dumps(report))
        _keep_timeline(db_url, ledger, services.workdir / "timeline.json")
        print("\n".join(ledger.events))

        # the faults really were injected
        assert services.redis.restarts == 1 and services.pg.restarts == 1
        assert ledger.worker_kills + ledger.child_kills >= 5 and ledger.duplicates >= 20
        fired = Counter(c["rule"] for c in crashes)
        deterministic = [r for r in _crash_rules(plan, ids).split(",") if "#" in r]
        missing = [r for r in deterministic if fired[r] != 1]
        assert not missing, f"deterministic crashes that did not fire exactly once: {missing}"
        poison_rule = next(r for r in fired if r.endswith("/invoking_package"))
        assert fired[poison_rule] >= 2  # it crashed again and again (a random kill may take one of its attempts)
        poison = patching.detail("OSD", *next((n, ids[n]) for n, k in plan.items() if k == POISON))
        assert "invoking the update package failed 5 times" in (poison.failure_reason or "")
    finally:
        cluster.stop_all()
        patching.close()
        outside.close()


def _keep_timeline(db_url: str, ledger: Ledger, path: Path) -> None:
    """Every transition and every injected fault with wall-clock times, for a post-mortem of slow runs."""
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        events = conn.execute(sa.select(models.ExecutionEvent.execution_id, models.ExecutionEvent.at,
                                        models.ExecutionEvent.from_state, models.ExecutionEvent.to_state)
                              .order_by(models.ExecutionEvent.id)).all()
    engine.dispose()
    path.write_text(json.dumps({
        "faults": ledger.wall,
        "events": [(e.execution_id, e.at.timestamp(), e.from_state, e.to_state) for e in events],
    }))


def _check(db_url: str, fleet: simulated.SimulatedFleet, plan: dict[str, str], ids: dict[str, str],
           messages: list[EmailMessage], crashes: list[dict[str, str]]) -> dict[str, object]:
    """Every invariant of the issue, per execution (tests/e2e/harness.py: check_invariants); fails with
    every violation, returns counts for the report."""
    verdict = check_invariants(
        db_url, fleet, ids, expected={server: EXPECTED[kind] for server, kind in plan.items()},
        powered_off={s for s, k in plan.items() if k == Scenario.POWERED_OFF},
        pending_reboot={s for s, k in plan.items() if k == Scenario.PENDING_REBOOT}, messages=messages)
    print("\n" + verdict.table())
    assert verdict.ok, "\n".join(verdict.failures()[:30])
    return {**verdict.counts, "after_email_crashes": sum(c["point"] == "after_email" for c in crashes)}


def _check_outside(db_url: str, outside: Outside, hooked: set[str]) -> dict[str, object]:
    """Issue 14's invariants on webhooks, hooks and health checks (tests/e2e/outside.py: check_outside)."""
    verdict = Verdict()
    counts = check_outside(db_url, outside, hooked, verdict)
    print("\n" + verdict.table())
    assert verdict.ok, "\n".join(verdict.failures()[:30])
    return counts


# --- webhooks, hooks and health checks during the chaos (issue 14) -------------------------------------


# --- every window of every step, in one process, deterministically ------------------------------------


class Crash(BaseException):
    """A simulated process death: a BaseException, so no `except Exception` in the engine can swallow it."""


def _crash() -> None:
    raise Crash


class CountingFleet:
    """The simulated fleet, counting every effect call that went through, per (call, idempotency key): the
    simulator itself forgets a repeated reboot or power call under a known key, this does not."""

    EFFECTS = ("set_maintenance", "power_on", "power_off", "reboot", "invoke_package")

    def __init__(self, fleet: simulated.SimulatedFleet) -> None:
        self.fleet = fleet
        self.calls: Counter[tuple[str, str]] = Counter()

    def __getattr__(self, name: str) -> object:
        target = getattr(self.fleet, name)
        if name not in self.EFFECTS:
            return target

        def counted(server: str, *args: object) -> object:
            result = target(server, *args)
            key = next(a for a in args if isinstance(a, str) and ":" in a)
            self.calls[(name, key)] += 1
            return result

        return counted


STEPS_WITH_EFFECTS = ("powering_on", "entering_maintenance", "invoking_package", "rebooting",
                      "exiting_maintenance", "restoring_power")


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_a_crash_in_every_window_of_every_step_changes_nothing(pg: str, mode: str) -> None:
    """Each execution dies once after the intent, once after the effect and once after the commit of every
    step it goes through, on a control plane that also fails 5 % of calls; emails die once after SMTP.
    Steps run one per task, or in batches (orchestrator/engine/rounds.py), where one crash kills every step of the
    batch: an execution whose step was interrupted must then run alone, or its neighbours' crashes would
    count against it until the reaper fails it. A fake clock and an in-memory fleet: seconds, no processes."""
    clock = support.FakeClock()
    scenarios = {s: 1 for s in EXPECTED if s != POISON} | {Scenario.NORMAL: 3}
    specs = build_fleet_specs(5, sum(scenarios.values()), scenarios=scenarios)
    plan = _plan(specs)
    fleet = simulated.SimulatedFleet.create(
        specs, MemoryStore(), simulated.SimTimings(reboot_seconds=30, package_seconds=20, power_seconds=10),
        seed=5, clock=clock.seconds, transient_error_rate=0.05)
    dispatcher = support.ListDispatcher()
    mailer = mail.MemoryMailer()
    hooks = faults.CrashHooks([], crash=_crash)
    # three crashes per step plus 5 % errors per call is far denser than life: allow more attempts per step
    settings = support.test_settings(pg, lease_seconds=10.0, email_hold_seconds=5.0, reboot_timeout_seconds=300.0,
                                     max_attempts=10)
    counting = CountingFleet(fleet)
    container = bootstrap.build(settings, dispatcher=dispatcher, fleet=counting, mailer=mailer,  # type: ignore[arg-type]
                                clock=clock, hooks=hooks)
    support.register(container, specs)
    # a health check (issue 14); the control plane's 5 % errors fail an attempt: 6 attempts all failing is ~1e-8
    checks = {"healthChecks": [{"name": "svc", "kind": "service", "service": "W3SVC", "retries": 5,
                                "retryDelaySeconds": 1}]}
    request = PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters=checks)
    answers = container.service.execute_package("OSD", [s.name for s in specs], request, "chaos")
    ids = {a.server: a.execution_id for a in answers}
    poison = next(ids[name] for name, kind in plan.items() if kind == POISON)
    rules = [f"after_intent@{poison}/invoking_package"]
    for execution_id in ids.values():
        for step in [s.value for s in machine.State]:
            rules += [f"{point}@{execution_id}/{step}#1" for point in ("after_intent", "after_effect", "after_commit")]
    hooks.rules = faults.parse(",".join([*rules, "after_email#1", "after_email#4"]))

    crashed: Counter[str] = Counter()
    engine = container.engine

    def attempt(run: Callable[[Any], object], arg: Any) -> None:
        try:
            run(arg)
        except Crash:
            crashed["crash"] += 1

    for _ in range(20_000):
        while dispatcher.steps or dispatcher.emails:
            if mode == "batch":  # everything due in one batch; what the batch hands back runs alone
                due = list(dict.fromkeys(dispatcher.steps))
                dispatcher.steps.clear()
                attempt(lambda ids: rounds.run(engine, ids), due)
                for execution_id in list(dict.fromkeys(dispatcher.steps)):
                    attempt(engine.advance, execution_id)
                dispatcher.steps.clear()
            while dispatcher.steps and mode == "single":
                attempt(engine.advance, dispatcher.steps.popleft())
            while dispatcher.emails:
                attempt(engine.deliver, dispatcher.emails.popleft())
        if not support.active(container) and not _unsent(container):
            break
        clock.advance(1.0)
        container.engine.tick()
    else:
        raise AssertionError(f"still active: {support.active(container)}")

    crashes = [{"point": r.point, "rule": r.text} for r in hooks.rules if hooks._counts.get(r.text, 0) >= (r.nth or 1)]
    windows = Counter((r.point, r.step) for r in hooks.rules if r.nth and hooks._counts.get(r.text, 0) >= 1)
    for step in (*STEPS_WITH_EFFECTS, "checking_health"):  # every dangerous window of every kind of effect was hit
        assert windows[("after_intent", step)] and windows[("after_effect", step)], step
    with container.sessions() as session:  # health checks: each attempt's intent completed by its transition, once
        checked = session.execute(sa.select(health_models.HealthCheckResult.status)).scalars().all()
    assert checked and "running" not in checked and "failed" not in checked, Counter(checked)
    fleet.transient_error_rate = 0.0  # the checks read the simulator's record through the same object
    report = _check(pg, fleet, plan, ids, list(mailer.sent), crashes)
    assert report["smtp_repeats"] >= 1  # the after_email crashes sent twice, same Message-ID
    repeated = {call: n for call, n in counting.calls.items() if n != 1}
    assert not repeated, f"effects asked more than once under one key: {repeated}"
    assert {name for name, _ in counting.calls} == set(CountingFleet.EFFECTS)
    print("\nIN-PROCESS CHAOS " + json.dumps({**report, "crashes": crashed["crash"], "windows": len(windows)}))


def _unsent(container: bootstrap.Container) -> int:
    with container.sessions() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(models.Outbox)
                                  .where(models.Outbox.sent_at.is_(None))) or 0)


def test_a_control_plane_error_after_the_intent_backs_off_instead_of_holding_the_lease(pg: str) -> None:
    """The effect's call fails after its intent was committed (a 503 from the control plane): the step is
    released from the version the intent wrote, retried after the backoff, and the error is on the row.
    (It used to release from the version read at the claim, fail that compare-and-set, and keep the lease:
    five minutes of nothing in production, and a reaper reason without the error.)"""
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 1, scenarios={Scenario.NORMAL: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), clock=clock.seconds)
    calls: list[str] = []
    set_maintenance = fleet.set_maintenance

    def flaky(server: str, on: bool, key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise FleetError("503 Service Unavailable")
        set_maintenance(server, on, key)

    fleet.set_maintenance = flaky  # type: ignore[method-assign]
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg, lease_seconds=300.0), fleet, clock, dispatcher)
    support.register(container, specs)
    [answer] = container.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID),
                                                 "chaos")
    assert container.engine.advance(answer.execution_id).value == "advanced"  # requested -> entering_maintenance
    assert container.engine.advance(answer.execution_id).value == "retrying"
    with container.sessions() as session:
        row = session.get(models.Execution, answer.execution_id)
        assert row is not None
        assert row.lease_owner is None and row.intent == {"key": calls[0]}
        assert "503" in (row.last_error or "") and row.next_run_at == clock.now + timedelta(seconds=1)
    clock.advance(1.0)
    assert container.engine.advance(answer.execution_id).value == "advanced"
    assert len(calls) == 2 and [e.kind for e in fleet.effects()] == ["maintenance_on"]


class _Blip:
    """Fails the next `times` statements that start with `prefix` and mention `column` the way a
    restarting PostgreSQL does."""

    def __init__(self, engine: sa.Engine, prefix: str, column: str, times: int) -> None:
        self.prefix, self.column, self.left, self.failed = prefix, column, times, 0
        sa.event.listen(engine, "before_cursor_execute", self)

    def __call__(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        text = statement.lstrip().upper()
        if self.left and text.startswith(self.prefix) and self.column in text:
            self.left -= 1
            self.failed += 1
            raise psycopg2.OperationalError("server closed the connection unexpectedly")


def test_a_database_blip_during_a_save_or_an_email_mark_is_ridden_out(pg: str) -> None:
    """The commit after an effect and the "sent" mark after an SMTP send are retried through a short
    database outage, instead of holding the lease until it expires (five minutes in production) or
    sending the email again after the hold."""
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 1, scenarios={Scenario.NORMAL: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    mailer = mail.MemoryMailer()
    container = support.make_container(support.test_settings(pg, lease_seconds=300.0), fleet, clock, dispatcher,
                                       mailer)
    support.register(container, specs)
    [answer] = container.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID),
                                                 "chaos")
    execution_id = answer.execution_id
    assert container.engine.advance(execution_id).value == "advanced"  # requested -> entering_maintenance

    saves = _Blip(container.db_engine, "UPDATE EXECUTIONS SET", "STATE=", 2)
    assert container.engine.advance(execution_id).value == "advanced"  # maintenance on, saved on the 3rd try
    assert saves.failed == 2
    with container.sessions() as session:
        row = session.get(models.Execution, execution_id)
        assert row is not None and row.state == "checking_pending_reboot" and row.lease_owner is None
    assert [e.kind for e in fleet.effects()] == ["maintenance_on"]

    [outbox_id] = list(dispatcher.emails)
    marks = _Blip(container.db_engine, "UPDATE OUTBOX SET", "SENT_AT=", 1)
    assert container.engine.deliver(outbox_id).sent and marks.failed == 1
    clock.advance(600)
    container.engine.tick()
    for queued in list(dispatcher.emails):
        container.engine.deliver(queued)
    assert len(mailer.sent) == 1 and _unsent(container) == 0


def test_the_tick_spaces_out_re_sends_of_a_step_stuck_behind_a_backed_up_queue(pg: str) -> None:
    """A due step nobody claims is re-sent after `redrive`, then at doubling intervals up to 8 x redrive:
    when the queue is backed up, re-sending every `redrive` only piles copies onto it."""
    clock = support.FakeClock()
    specs = build_fleet_specs(3, 1, scenarios={Scenario.NORMAL: 1})
    fleet = simulated.SimulatedFleet.create(specs, MemoryStore(), clock=clock.seconds)
    dispatcher = support.ListDispatcher()
    container = support.make_container(support.test_settings(pg, redrive_seconds=10.0), fleet, clock, dispatcher)
    support.register(container, specs)
    container.service.execute_package("OSD", [specs[0].name], PackageRequest(packageId=DEFAULT_PACKAGE_ID), "chaos")
    dispatcher.steps.clear()  # the hand-off is "lost in the queue": never run
    sent_at = []
    for second in range(0, 401):
        container.engine.tick()
        if dispatcher.steps:
            sent_at.append(second)
            dispatcher.steps.clear()
        clock.advance(1.0)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    lookahead = container.settings.short_countdown_seconds  # the tick hands off what falls due that soon
    slack = lookahead + 1  # and a tick is up to a second late
    assert gaps[0] <= 10 + slack, sent_at  # the first re-send after one redrive
    assert all(a <= b for a, b in zip(gaps, gaps[1:], strict=False)), sent_at  # then further and further apart
    assert max(gaps) == 8 * 10 + slack, sent_at  # up to 8 x redrive
    assert len(sent_at) <= 7, sent_at  # every redrive would have been 25 copies in these 400 s
