"""What every benchmark shares: its own PostgreSQL database, Redis DB 9, real `patchaas worker`/`beat`
processes with RSS sampling, statement counting, the machine's description, tables, and the script's
section of docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("PATCHAAS_BENCH_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PATCHAAS_BENCH_REDIS", "redis://127.0.0.1:6379/9")
DOC = ROOT / "docs" / "BENCHMARKS.md"
BIN = Path(sys.executable).parent


# --- arguments ---------------------------------------------------------------------------------


def parser(description: str, size: int, tiny: int) -> argparse.ArgumentParser:
    """The flags every script takes; `--servers`/`--size` default to `size` (or `tiny` with --tiny)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--servers", "--size", dest="size", type=int, default=None,
                   help=f"how many servers/executions (default {size}; {tiny} with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a few seconds' run (the test suite's smoke test)")
    p.add_argument("--write-docs", action="store_true", help=f"update this benchmark's section of {DOC.name}")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="a PostgreSQL URL allowed to CREATE DATABASE")
    p.add_argument("--redis-url", default=REDIS_URL, help="the Redis database the broker uses (flushed)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the benchmark's database at the end")
    p.set_defaults(default_size=size, tiny_size=tiny)
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.size is None:
        args.size = args.tiny_size if args.tiny else args.default_size
    return args


def command_line(argv: Sequence[str] | None, module: str) -> str:
    """The command that reproduces this run."""
    shown = list(sys.argv[1:] if argv is None else argv)
    shown = [a for a in shown if a != "--write-docs"]
    return " ".join([".venv/bin/python -m", module, *shown])


# --- databases ---------------------------------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def bench_database(admin_url: str, label: str, keep: bool = False, migrate: bool = True) -> Iterator[str]:
    """A fresh `patchaas_bench_<label>_<pid>` database migrated to head; dropped afterwards."""
    name = f"patchaas_bench_{label}_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = database_url(admin_url, name)
    try:
        if migrate:
            from orchestrator.persistence import migrate as migrate_mod

            migrate_mod.upgrade(url)
        yield url
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


# --- the machine -------------------------------------------------------------------------------


def machine(pg_admin_url: str = PG_ADMIN_URL, redis_url: str | None = REDIS_URL) -> dict[str, str]:
    """nproc, memory, CPU model, PostgreSQL and Redis versions, Python."""
    info: dict[str, str] = {"nproc": str(os.cpu_count())}
    try:
        info["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        free = subprocess.run(["free", "-g"], capture_output=True, text=True, check=True).stdout.splitlines()
        mem = next(line for line in free if line.startswith("Mem:")).split()
        info["memory"] = f"{mem[1]} GiB total ({mem[-1]} GiB available) [free -g]"
    except (OSError, subprocess.CalledProcessError, StopIteration, IndexError):
        info["memory"] = "?"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu"] = found.group(1).strip() if found else platform.processor() or "?"
    except OSError:
        info["cpu"] = platform.processor() or "?"
    try:
        engine = sa.create_engine(pg_admin_url)
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar_one()
            sync = conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()
            fsync = conn.exec_driver_sql("SHOW fsync").scalar_one()
        engine.dispose()
        info["postgresql"] = f"{str(version).split()[0]} (fsync={fsync}, synchronous_commit={sync})"
    except Exception as exc:  # noqa: BLE001 - described, not fatal
        info["postgresql"] = f"? ({exc})"
    if redis_url:
        try:
            import redis

            client = redis.Redis.from_url(redis_url)
            info["redis"] = str(client.info("server")["redis_version"])
            client.close()
        except Exception as exc:  # noqa: BLE001
            info["redis"] = f"? ({exc})"
    info["python"] = platform.python_version()
    return info


# --- output ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_lines(info: Mapping[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


def write_section(script: str, title: str, body: str) -> None:
    """Replace (or append) the section of `script` in docs/BENCHMARKS.md."""
    begin, end = f"<!-- BEGIN {script} -->", f"<!-- END {script} -->"
    block = f"{begin}\n## {title}\n\n{body.rstrip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(f"updated {DOC.relative_to(ROOT)} ({script})")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


# --- statement counting ------------------------------------------------------------------------


@dataclass
class QueryCounter:
    """Counts the statements an SQLAlchemy engine sends (and how long they took), while enabled."""

    engine: sa.Engine
    count: int = 0
    seconds: float = 0.0
    by_statement: Counter[str] = field(default_factory=Counter)
    enabled: bool = True
    _starts: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sa.event.listen(self.engine, "before_cursor_execute", self._before)
        sa.event.listen(self.engine, "after_cursor_execute", self._after)
        sa.event.listen(self.engine, "commit", self._commit)
        sa.event.listen(self.engine, "begin", self._begin)

    def _before(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if self.enabled:
            self._starts[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if not self.enabled:
            return
        self.count += 1
        self.seconds += time.perf_counter() - self._starts.pop(id(cursor), time.perf_counter())
        self.by_statement[_shape(statement)] += 1

    def _begin(self, conn: Any) -> None:
        if self.enabled:
            self.by_statement["BEGIN"] += 1

    def _commit(self, conn: Any) -> None:
        if self.enabled:
            self.by_statement["COMMIT"] += 1

    def reset(self) -> None:
        self.count, self.seconds = 0, 0.0
        self.by_statement.clear()

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._before)
        sa.event.remove(self.engine, "after_cursor_execute", self._after)
        sa.event.remove(self.engine, "commit", self._commit)
        sa.event.remove(self.engine, "begin", self._begin)


def _shape(statement: str) -> str:
    """A statement's first words and table, enough to tell the hot ones apart."""
    text = " ".join(statement.split())
    match = re.match(r"(SELECT|UPDATE|INSERT INTO|DELETE FROM|SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)"
                     r"\b(.*?)(\bFROM\b\s+(\w+)|$)", text, re.I)
    if not match:
        return text[:60]
    verb = match.group(1).upper()
    if verb in ("UPDATE", "INSERT INTO", "DELETE FROM"):
        target = text[len(match.group(1)):].split()[0] if len(text) > len(match.group(1)) else ""
        return f"{verb} {target}"
    if verb.endswith("SAVEPOINT"):
        return verb
    return f"SELECT … FROM {match.group(4) or '?'}"


# --- processes ---------------------------------------------------------------------------------


def service_env(database_url: str, broker_url: str, smtp_url: str | None, extra: Mapping[str, str] | None = None
                ) -> dict[str, str]:
    """The environment of a worker/beat: this run's database, broker and SMTP sink, instant fleet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHAAS_")}
    env.update(
        PATCHAAS_DATABASE_URL=database_url,
        PATCHAAS_BROKER_URL=broker_url,
        PATCHAAS_SIM_STATE_URL=database_url,
        PATCHAAS_SIM_TIMINGS="instant",
        PATCHAAS_SETTLE_SECONDS="0",  # a reboot settles at the first idle look (issue 14; production: 60 s)
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    if smtp_url:
        env["PATCHAAS_SMTP_URL"] = smtp_url
    env.update(extra or {})
    return env


class Processes:
    """Subprocesses this benchmark started (each its own process group), with RSS sampling."""

    def __init__(self, env: Mapping[str, str], logdir: Path) -> None:
        self.env = dict(env)
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.rss: dict[str, list[tuple[float, int]]] = {}
        self._sampling: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        with open(self.logdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(list(argv), env=self.env, cwd=self.logdir, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str = "worker", concurrency: int = 2, app: str | None = None,
                     loglevel: str = "WARNING") -> None:
        """`patchaas worker` (or `celery -A <app> worker` for a baseline app) with `concurrency` processes."""
        common = [f"--concurrency={concurrency}", f"--loglevel={loglevel}", f"--hostname={name}@%h"]
        if app is None:
            self.start(name, [str(BIN / "patchaas"), "worker", *common])
        else:
            self.start(name, [str(BIN / "celery"), "-A", app, "worker", *common, "-E", "--without-gossip",
                              "--without-mingle"])

    def start_beat(self, name: str = "beat", loglevel: str = "WARNING") -> None:
        self.start(name, [str(BIN / "patchaas"), "beat", f"--loglevel={loglevel}",
                          f"--schedule={self.logdir / 'beat-schedule'}"])

    def sample_rss(self, interval: float = 0.5) -> None:
        """Sample each process tree's RSS (the process and its children) every `interval` seconds."""
        import psutil

        def loop() -> None:
            while not self._stop.wait(interval):
                now = time.monotonic()
                for name, proc in list(self.procs.items()):
                    try:
                        root = psutil.Process(proc.pid)
                        total = root.memory_info().rss + sum(
                            c.memory_info().rss for c in root.children(recursive=True))
                    except psutil.Error:
                        continue
                    self.rss.setdefault(name, []).append((now, total))

        self._sampling = threading.Thread(target=loop, daemon=True, name="rss")
        self._sampling.start()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)  # the group this benchmark created for the process
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        self._stop.set()
        if self._sampling is not None:
            self._sampling.join(timeout=5)
        for name in list(self.procs):
            self.stop(name)


def wait_for_workers(app: Any, count: int = 1, timeout: float = 60.0, procs: Processes | None = None) -> None:
    """Until `count` Celery workers answer a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs is not None:
            procs.check_alive()
        replies = app.control.ping(timeout=0.5) or []
        if len(replies) >= count:
            return
    raise RuntimeError(f"fewer than {count} workers answered within {timeout}s")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2,
               procs: Processes | None = None, what: str = "condition") -> float:
    """Poll `predicate`; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        if procs is not None:
            procs.check_alive()
        time.sleep(interval)
    raise RuntimeError(f"{what} not reached within {timeout}s")


def rss_summary(samples: Sequence[tuple[float, int]]) -> tuple[float, float, float]:
    """(first, max, last) RSS in MiB, ignoring the first two seconds of start-up."""
    if not samples:
        return 0.0, 0.0, 0.0
    start = samples[0][0]
    steady = [s for s in samples if s[0] - start >= 2.0] or list(samples)
    mib = [s[1] / 2**20 for s in steady]
    return mib[0], max(mib), mib[-1]


def load() -> float:
    """The 1-minute load average (the machine may be shared: reported beside each measurement)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait (up to `timeout` s) until the 1-minute load average is below `limit`; returns it."""
    deadline = time.monotonic() + timeout
    value = load()
    while value >= limit and time.monotonic() < deadline:
        time.sleep(5)
        value = load()
    return value


def tool(name: str) -> str | None:
    return shutil.which(name)
