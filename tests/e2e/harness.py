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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator.persistence import db, models
from orchestrator.services import inventory
from simulation import fleet as simulated
from simulation.mailsink import MailSink
from simulation.records import Effect
from simulation.specs import SimServerSpec
from simulation.store import SqlStore

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
    "PATCHAAS_SETTLE_SECONDS": "0.3",  # settled after a reboot: 0.3 s idle
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


def install_fleet(database_url: str, specs: list[SimServerSpec], alias: str = "OSD",
                  email: str = "ops@osd.example", seed: int = 7) -> simulated.SimulatedFleet:
    """Write the simulated fleet into PostgreSQL (shared with the workers) and register its servers."""
    fleet = simulated.SimulatedFleet.create(specs, SqlStore(database_url), simulated.SimTimings.instant(),
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


# --- throwaway services for chaos tests: restarted at will, never the machine's own ----------------


def assert_one_start_and_one_end_email(mail_sink: MailSink, execution_ids: Iterable[str], timeout: float = 30) -> None:
    """Every execution sent exactly one start and one end email (counted by the headers our emails carry)."""
    ids = list(execution_ids)
    wait_until(lambda: len(mail_sink.messages) >= 2 * len(ids), timeout=timeout,
               on_timeout=lambda: f"{len(mail_sink.messages)} emails for {len(ids)} executions")
    sent = Counter((m["X-Patchaas-Execution"], m["X-Patchaas-Kind"]) for m in mail_sink.messages)
    for execution_id in ids:
        assert sent[(execution_id, "start")] == 1 and sent[(execution_id, "end")] == 1, (execution_id, sent)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RedisServer:
    """A `redis-server` of our own on a free port, without persistence: a restart loses everything."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--maxmemory-policy", "noeviction", "--daemonize", "no", "--dir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: _port_open(self.port), timeout=10, interval=0.05,
                   on_timeout=lambda: f"redis-server did not start on {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: no save, no goodbye; every queued and unacked message is gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, downtime: float = 1.0) -> None:
        """Kill, stay down for `downtime` seconds, start empty."""
        self.kill()
        time.sleep(downtime)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        self.kill()


class PostgresServer:
    """A PostgreSQL cluster of our own (initdb in a temporary directory, run as the postgres user since
    tests run as root), on a free port; `restart` stops it with `-m immediate` (a crash: no checkpoint,
    every connection cut) and starts it again, recovering from its WAL."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        import glob
        import pwd

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bindir = Path(bins[-1]).parent
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.port = port or free_port()
        self.restarts = 0
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = pwd.getpwnam("postgres")
            workdir.mkdir(parents=True, exist_ok=True)  # its parents must be traversable (e.g. under /tmp)
            os.chown(workdir, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        else:
            workdir.mkdir(parents=True, exist_ok=True)

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_postgres, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=60, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> PostgresServer:
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        # fsync off is safe here (a killed PostgreSQL loses nothing its OS has; only an OS crash would), but
        # synchronous_commit must stay on: off, a commit returns before its WAL leaves shared memory, and the
        # `-m immediate` restart of the chaos test and the soak then loses commits (the soak caught a server
        # whose maintenance-on effect vanished from the simulator's record) - losing the database, which
        # nothing promises to survive
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=on -c full_page_writes=off -c max_connections=300")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", options,
                  "-l", str(self.workdir / "postgres.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, downtime: float = 1.0) -> None:
        """Crash-stop (immediate), stay down for `downtime` seconds, start and recover."""
        self.stop("immediate")
        time.sleep(downtime)
        self.start()
        self.restarts += 1

    def create_database(self, name: str) -> str:
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url(name)


def pool_children(pid: int) -> list[int]:
    """The direct children of `pid` (a Celery worker's prefork pool processes)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


# --- the CLC simulator as a process: the fleet over HTTP ----------------------------------------------

CLC_USER = ("patchaas", "patchaas-e2e")


def start_clc_simulator(cluster: Cluster, *flags: str, name: str = "simulator") -> str:
    """Start `patchaas simulator` (its fleet in the cluster's PATCHAAS_SIM_STATE_URL) on a free loopback
    port with `flags`, wait until it answers, and return its base URL."""
    import socket
    import urllib.request

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    cluster.start(name, "simulator", "--host", "127.0.0.1", f"--port={port}", f"--username={CLC_USER[0]}",
                  f"--password={CLC_USER[1]}", *flags)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/simulator/health", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(answers, timeout=30, interval=0.1, on_timeout=lambda: f"simulator down:\n{cluster.log(name)[-3000:]}")
    return url


def use_clc_fleet(cluster: Cluster, url: str, **settings: str) -> None:
    """Point the processes started from now on at the simulator through the `clc` driver; `settings` are
    more PATCHAAS_* variables (e.g. PATCHAAS_CLC_POLL_INTERVAL_SECONDS="0.2")."""
    cluster.env.update(
        PATCHAAS_FLEET="clc",
        PATCHAAS_CLC_BASE_URL=url,
        PATCHAAS_CLC_USERNAME=CLC_USER[0],
        PATCHAAS_CLC_PASSWORD=CLC_USER[1],
        **settings,
    )


def simulator_faults(url: str) -> dict[str, Any]:
    """The simulator's count of injected faults."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/simulator/faults", timeout=5) as response:
        counts: dict[str, Any] = json.loads(response.read())
    return counts


# --- the REST API as a process, and operator commands ----------------------------------------------


def run_cli(
    cluster: Cluster, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `patchaas <args>` to completion in the cluster's environment (account and user commands)."""
    return subprocess.run([PATCHAAS, *args], env=cluster.env, cwd=cluster.logdir, input=stdin, capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_api(cluster: Cluster, name: str = "api") -> str:
    """Start `patchaas api` on a free loopback port, wait until it serves /openapi.json, return its base URL."""
    import urllib.request

    from simulation.mailsink import free_port as free_tcp_port

    port = free_tcp_port()
    cluster.start(name, "api", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if cluster.procs[name].poll() is not None:
            raise AssertionError(f"`patchaas api` exited:\n{cluster.log(name)[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/openapi.json", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(serving, timeout=30, interval=0.1, on_timeout=lambda: f"api not serving:\n{cluster.log(name)[-3000:]}")
    return url


# --- the invariants of a patch run, checked on the database and on the simulator's own record ------------


@dataclass
class Verdict:
    """Per invariant: how many things were checked and which broke it."""

    rows: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def check(self, name: str, ok: bool, what: str) -> None:
        checked, broken = self.rows.get(name, (0, []))
        if not ok:
            broken.append(what)
        self.rows[name] = (checked + 1, broken)

    @property
    def ok(self) -> bool:
        return not any(broken for _, broken in self.rows.values())

    def failures(self) -> list[str]:
        return [f"{name}: {what}" for name, (_, broken) in self.rows.items() for what in broken]

    def table(self) -> str:
        width = max(len(name) for name in self.rows)
        lines = [f"{'invariant':<{width}}  checked  violations"]
        lines += [f"{name:<{width}}  {checked:>7}  {len(broken):>10}" for name, (checked, broken) in self.rows.items()]
        return "\n".join(lines)


def check_invariants(database_url: str, fleet: simulated.SimulatedFleet, ids: Mapping[str, str],
                     expected: Mapping[str, tuple[str, str | None]], powered_off: set[str],
                     pending_reboot: set[str], messages: list[Any]) -> Verdict:
    """For every execution (`ids`: server -> execution id): its terminal state and reason (`expected`:
    server -> (status, part of the reason)); no duplicate initiation or patch rows; on the simulator's
    record each KB installed at most once per cycle and exactly as the patch rows say, a reboot asked once
    per cycle that needed one, maintenance on once and off once, power toggled once each way only for
    `powered_off` servers; no server left in maintenance; nothing pending or leased; every email sent, one
    start and one end per execution by Message-ID (`messages`: what the SMTP server received)."""
    from collections import Counter, defaultdict

    from schemas.fleet import PowerState

    verdict = Verdict()
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(models.Execution))}
        initiations = conn.execute(sa.select(models.Initiation.execution_id, models.Initiation.cycle,
                                             models.Initiation.reboot_required)).all()
        patches = conn.execute(sa.select(models.Patch.execution_id, models.Patch.cycle, models.Patch.kb,
                                         models.Patch.status)).all()
        outbox = conn.execute(sa.select(models.Outbox.execution_id, models.Outbox.kind, models.Outbox.sent_at)).all()
    engine.dispose()
    effects: dict[str, list[Effect]] = defaultdict(list)
    for effect in fleet.effects():
        effects[effect.server].append(effect)
    init_count = Counter((i.execution_id, i.cycle) for i in initiations)
    patch_count = Counter((p.execution_id, p.cycle, p.kb) for p in patches)
    reboot_cycles: dict[str, set[int]] = defaultdict(set)
    for i in initiations:
        if i.reboot_required:
            reboot_cycles[i.execution_id].add(i.cycle)
    patch_rows: dict[str, set[tuple[int, str]]] = defaultdict(set)
    completed_kbs: dict[str, set[str]] = defaultdict(set)
    for p in patches:
        patch_rows[p.execution_id].add((p.cycle, p.kb))
        if p.status == "completed":
            completed_kbs[p.execution_id].add(p.kb)
    outbox_count = Counter((o.execution_id, o.kind) for o in outbox)
    distinct = {m["Message-ID"]: m for m in messages}
    mailed = Counter((m["X-Patchaas-Execution"], m["X-Patchaas-Kind"]) for m in distinct.values())

    for server, execution_id in ids.items():
        row = rows.get(execution_id)
        where = f"{server} {execution_id}"
        status, reason = expected[server]
        verdict.check("ended in the expected state", row is not None and row.state == status,
                      f"{where}: {row.state if row else 'missing'} ({row.failure_reason if row else ''})")
        if row is None:
            continue
        if reason is not None:
            verdict.check("failed with the expected reason", reason in (row.failure_reason or ""),
                          f"{where}: {row.failure_reason!r} lacks {reason!r}")
        verdict.check("nothing pending or leased", row.ended_at is not None and row.lease_owner is None, where)
        verdict.check("no duplicate initiation rows",
                      all(n == 1 for (e, _), n in init_count.items() if e == execution_id), where)
        verdict.check("no duplicate patch rows",
                      all(n == 1 for (e, _, _), n in patch_count.items() if e == execution_id), where)
        mine = effects.get(server, [])
        kinds = Counter(e.kind.value for e in mine)
        installs = [(int(e.key.rsplit(":", 1)[1]), e.kb or "") for e in mine if e.kind == "install"]
        verdict.check("each KB installed at most once per cycle (simulator)", len(installs) == len(set(installs)),
                      f"{where}: {sorted(installs)}")
        verdict.check("installs match the patch rows (simulator)", set(installs) == patch_rows[execution_id],
                      f"{where}: simulator {sorted(set(installs))} vs rows {sorted(patch_rows[execution_id])}")
        reboots = sorted(int(e.key.rsplit(":", 1)[1]) for e in mine if e.kind == "reboot")
        wanted = sorted(reboot_cycles[execution_id] | ({0} if server in pending_reboot else set()))
        verdict.check("one reboot per cycle that needed one (simulator)", reboots == wanted,
                      f"{where}: rebooted in cycles {reboots}, needed {wanted}")
        verdict.check("maintenance on once and off once (simulator)",
                      kinds["maintenance_on"] == 1 and kinds["maintenance_off"] == 1, f"{where}: {dict(kinds)}")
        state = fleet.status(server)
        verdict.check("no server left in maintenance", not state.in_maintenance, where)
        if server in powered_off:
            verdict.check("powered-off servers: on once, off once, stopped again",
                          kinds["power_on"] == 1 and kinds["power_off"] == 1
                          and state.power_state is PowerState.STOPPED, f"{where}: {dict(kinds)} {state.power_state}")
        else:
            verdict.check("running servers: never powered on or off",
                          kinds["power_on"] == 0 and kinds["power_off"] == 0, f"{where}: {dict(kinds)}")
        if row.state == "completed":
            verdict.check("completed KBs are installed for good (simulator)",
                          completed_kbs[execution_id] <= fleet.installed_kbs(server), where)
        verdict.check("one start and one end email queued",
                      outbox_count[(execution_id, "start")] == 1 and outbox_count[(execution_id, "end")] == 1, where)
        verdict.check("one start and one end email received (by Message-ID)",
                      mailed[(execution_id, "start")] == 1 and mailed[(execution_id, "end")] == 1,
                      f"{where}: {mailed[(execution_id, 'start')]} start, {mailed[(execution_id, 'end')]} end")
    verdict.check("every email sent", all(o.sent_at is not None for o in outbox),
                  f"{sum(o.sent_at is None for o in outbox)} unsent")
    verdict.counts = {
        "executions": len(ids), "installs": len(patches), "reboots": sum(len(c) for c in reboot_cycles.values()),
        "initiations": len(initiations), "emails": len(distinct), "smtp_repeats": len(messages) - len(distinct),
        **{f"ended_{state}": n for state, n in Counter(r.state for r in rows.values()).items()},
    }
    return verdict


# --- real Linux test hosts for the ssh driver (scripts/linux-test-hosts) ------------------------------

LINUX_TEST_HOSTS = ROOT / "scripts" / "linux-test-hosts"


def linux_hosts_unavailable() -> str | None:
    """Why real Linux test hosts cannot be built here (None when they can): root, namespaces, overlayfs."""
    import shutil

    if os.geteuid() != 0:
        return "the Linux test hosts need root (debootstrap, mount and pid namespaces)"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "the Linux test hosts need util-linux's unshare and nsenter"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the Linux test hosts need overlayfs"
    return None


@dataclass
class LinuxTestHosts:
    """Debian hosts (overlay roots on the cached debootstrap root, each with its own sshd on 127.0.0.x),
    their apt repository over HTTP on loopback, the client key and the known_hosts file pinning them."""

    dir: Path
    repo_url: str = ""
    hosts: dict[str, tuple[str, int]] = field(default_factory=dict)

    def script(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run([str(LINUX_TEST_HOSTS), *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"linux-test-hosts {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    @classmethod
    def start(cls, directory: Path, dnf: bool = False) -> LinuxTestHosts:
        """The cached root (debootstrap on first use), the test packages' repository, served on loopback;
        with `dnf`, also the dnf root and the RPMs (a dnf repository under rpm/ of the same server)."""
        hosts = cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        hosts.script("base", timeout=1800)
        hosts.script("repo", str(directory))
        if dnf:
            hosts.script("base", "dnf", timeout=1800)
            hosts.script("rpm-repo", str(directory))
        port = free_port()
        hosts.script("serve", str(directory), "127.0.0.1", str(port))
        hosts.repo_url = f"http://127.0.0.1:{port}/"
        hosts.script("keys", str(directory))
        return hosts

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def up(self, name: str, address: str, packages: list[str], dnf: bool = False) -> tuple[str, int]:
        port = free_port()
        flavour = ["--dnf"] if dnf else []
        self.script("up", *flavour, str(self.dir), name, address, str(port), self.repo_url, *packages)
        self.hosts[name] = (address, port)
        return address, port

    def exec(self, name: str, *command: str) -> str:
        """Run `command` inside host `name` (through nsenter, not its sshd): what the host really holds."""
        return self.script("exec", str(self.dir), name, *command)

    def installed(self, name: str) -> dict[str, tuple[str, str]]:
        """dpkg's view: package → (status abbreviation, version)."""
        out = self.exec(name, "dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Package}|${Version}\n")
        rows = (line.split("|") for line in out.splitlines() if line.count("|") == 2)
        return {package: (status.strip(), version) for status, package, version in rows}

    def rpm_installed(self, name: str) -> dict[str, str]:
        """rpm's view on a dnf host: package → version-release."""
        out = self.exec(name, "rpm", "-qa", "--qf", "%{NAME}|%{VERSION}-%{RELEASE}\n")
        return dict(line.split("|", 1) for line in out.splitlines() if line.count("|") == 1)

    def boots(self, name: str) -> int:
        """How many times host `name` has booted (the first start included)."""
        return self.exec(name, "cat", "/var/log/patchaas-test-boots").count(" boot ")

    def kill_sshd(self, name: str) -> None:
        self.script("kill-sshd", str(self.dir), name)

    def start_sshd(self, name: str) -> None:
        self.script("start-sshd", str(self.dir), name)

    def stop(self) -> None:
        self.script("down", str(self.dir))


def register_linux_hosts(database_url: str, hosts: LinuxTestHosts, servers: Mapping[str, str],
                         os_type: str = "Debian 12 64-bit", package_manager: str = "apt",
                         alias: str = "OSD", email: str = "ops@osd.example") -> None:
    """Servers (name → test host name) in the inventory, in group va1-0001, with their ssh_hosts rows."""
    from workers.fleet import ssh

    engine = db.create_engine_for(database_url)
    with db.session_factory(engine).begin() as session:
        now = db.utcnow()
        inventory.ensure_account(session, alias, alias, "VA1", email, now)
        inventory.ensure_group(session, alias, "va1-0001", "root")
        inventory.register_servers(
            session, alias, (inventory.ServerSpec(name, os_type, "started", "va1-0001") for name in servers)
        )
        session.flush()
        for server, host in servers.items():
            address, port = hosts.hosts[host]
            ssh.register_host(session, server, address, port, "root", hosts.key.name, package_manager, now)
    engine.dispose()


def use_ssh_fleet(cluster: Cluster, hosts: LinuxTestHosts, **settings: str) -> None:
    """Point the processes started from now on at the test hosts through the routing fleet (Linux → ssh),
    host keys pinned by the test hosts' known_hosts (RejectPolicy: nothing is accepted blindly)."""
    cluster.env.update(
        PATCHAAS_FLEET="routing",
        PATCHAAS_WINDOWS_FLEET="simulated",
        PATCHAAS_SSH_KNOWN_HOSTS=str(hosts.known_hosts),
        PATCHAAS_SSH_KEY_DIR=str(hosts.dir),
        **settings,
    )
