"""Real processes for end-to-end tests: `patchaas worker` and `patchaas beat` subprocesses on the test's
PostgreSQL and Redis, a simulated fleet shared through PostgreSQL, emails to a real SMTP server.

A cluster's processes can be SIGKILLed and restarted: durability is proven by killing, not mocking.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from orchestrator import db, inventory, models
from workers.fleet import simulated

ROOT = Path(__file__).resolve().parents[2]
PATCHAAS = str(Path(sys.executable).parent / "patchaas")

FAST_ENV = {
    "PATCHAAS_SIM_TIMINGS": "instant",
    "PATCHAAS_POLL_INTERVAL_SECONDS": "0.3",
    "PATCHAAS_TICK_SECONDS": "0.5",
    "PATCHAAS_REDRIVE_SECONDS": "3",
    "PATCHAAS_LEASE_SECONDS": "5",
    "PATCHAAS_RETRY_BACKOFF_SECONDS": "0.3",
    "PATCHAAS_REBOOT_TIMEOUT_SECONDS": "6",
    "PATCHAAS_PACKAGE_TIMEOUT_SECONDS": "30",
    "PATCHAAS_POWER_TIMEOUT_SECONDS": "10",
}


@dataclass
class Cluster:
    """Worker and beat processes sharing one environment; `logs` keeps each process's output file."""

    env: dict[str, str]
    logdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def for_test(cls, database_url: str, broker_url: str, smtp_url: str, logdir: Path,
                 extra: Mapping[str, str] | None = None) -> Cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHAAS_")}
        env.update(FAST_ENV)
        env.update(
            PATCHAAS_DATABASE_URL=database_url,
            PATCHAAS_BROKER_URL=broker_url,
            PATCHAAS_SIM_STATE_URL=database_url,
            PATCHAAS_SMTP_URL=smtp_url,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra or {})
        logdir.mkdir(parents=True, exist_ok=True)
        return cls(env, logdir)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `patchaas <args>` as process `name` (its own process group, so kill takes its children)."""
        with open(self.logdir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([PATCHAAS, *args], env=self.env, cwd=self.logdir, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self.start(name, "worker", f"--concurrency={concurrency}", "--loglevel=WARNING",
                          f"--hostname={name}@%h")

    def start_beat(self, name: str = "beat") -> subprocess.Popen[bytes]:
        return self.start(name, "beat", "--loglevel=WARNING", f"--schedule={self.logdir / 'beat-schedule'}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group of `name` (a worker's pool children die with it)."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
            self.procs.pop(name, None)

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def install_fleet(database_url: str, specs: list[simulated.SimServerSpec], alias: str = "OSD",
                  email: str = "ops@osd.example", seed: int = 7) -> simulated.SimulatedFleet:
    """Write the simulated fleet into PostgreSQL (shared with the workers) and register its servers."""
    fleet = simulated.SimulatedFleet.create(specs, simulated.SqlStore(database_url), simulated.SimTimings.instant(),
                                            seed=seed, reset=True)
    engine = db.create_engine_for(database_url)
    with db.session_factory(engine).begin() as session:
        now = db.utcnow()
        inventory.ensure_account(session, alias, alias, "VA1", email, now)
        inventory.ensure_group(session, alias, "va1-0001", "root")
        inventory.ensure_group(session, alias, "va1-0002", "child", "va1-0001")
        inventory.ensure_group(session, alias, "va1-0003", "grandchild", "va1-0002")
        groups = ["va1-0001", "va1-0002", "va1-0003"]
        inventory.register_servers(
            session, alias,
            (inventory.ServerSpec(s.name, s.os_type, s.power_state.value, groups[i % 3]) for i, s in enumerate(specs)),
        )
    engine.dispose()
    return fleet


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25,
               on_timeout: Callable[[], str] | None = None) -> None:
    """Poll `predicate` until true; fail with `on_timeout()`'s text after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(on_timeout() if on_timeout else f"condition not met within {timeout}s")


def active_executions(database_url: str) -> list[tuple[str, str, str]]:
    """(id, server, state) of executions that have not ended."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(models.Execution.id, models.Execution.server_name, models.Execution.state).where(
                models.Execution.ended_at.is_(None))
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]
