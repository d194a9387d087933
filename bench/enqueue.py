"""A group action on N servers (default 10,000): the time to accept and persist every execution, beside a
plain bulk INSERT of the same rows, in the same run.

The product: `PatchService.execute_package_on_groups` on a root group whose nested groups hold the
servers, with a no-op dispatcher (what is measured is accepting and persisting: the executions and their
start emails in the outbox, in the service's transaction). The baseline: the very rows the product wrote
(executions and outbox), deleted and written again with one multi-row INSERT per table in one transaction.

    .venv/bin/python -m bench.enqueue [--servers 10000] [--write-docs]
"""

from __future__ import annotations

import gc
import hashlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

if __package__ in (None, ""):  # `python bench/enqueue.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

ALIAS = "OSD"
ROOT_GROUP = "va1-0001"


class NoDispatch:
    """Accepts ids and does nothing: only accepting and persisting is measured."""

    def __init__(self) -> None:
        self.steps = 0
        self.emails = 0

    def advance(self, execution_id: str, delay: float) -> None:
        self.steps += 1

    def deliver(self, outbox_id: int) -> None:
        self.emails += 1

    def advance_many(self, execution_ids: list[str]) -> None:
        self.steps += len(execution_ids)


def install(url: str, servers: int) -> None:
    """Account OSD; a root group with 4 subgroups (one nested once more); `servers` servers spread over them."""
    from orchestrator.persistence import db
    from orchestrator.services import inventory
    from simulation import catalog
    from simulation.specs import server_name

    engine = db.create_engine_for(url)
    groups = [ROOT_GROUP, "va1-0002", "va1-0003", "va1-0004", "va1-0005", "va1-0006"]
    with db.session_factory(engine).begin() as session:
        inventory.ensure_account(session, ALIAS, "bench", "VA1", "ops@osd.example", db.utcnow())
        inventory.ensure_group(session, ALIAS, ROOT_GROUP, "root")
        for gid in groups[1:5]:
            inventory.ensure_group(session, ALIAS, gid, gid, ROOT_GROUP)
        inventory.ensure_group(session, ALIAS, groups[5], "nested", groups[4])
        inventory.register_servers(
            session, ALIAS,
            (inventory.ServerSpec(server_name("VA1", ALIAS, "PATCH", i + 1),
                                  catalog.WINDOWS_2012R2 if i % 2 else catalog.WINDOWS_2012,
                                  "started", groups[i % len(groups)])
             for i in range(servers)),
        )
    engine.dispose()


class PeakRss:
    """This process's RSS (MiB) when the block starts and its peak during it (sampled every 10 ms)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.start = self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> float:
        return float(self._process.memory_info().rss) / 2**20

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.start = self.peak = self._rss()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=loop, daemon=True, name="rss")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())


def answer_encoding(answers: list[Any]) -> dict[str, Any]:
    """The REST answer of the action: streamed as orchestrator/entrypoints/rest/streaming.py writes it, and
    built whole as FastAPI did before it (the models, `serialize_response`, one JSONResponse): the time and
    the peak RSS above the start of each, and whether their bytes are the same."""
    import asyncio

    from fastapi import Response
    from fastapi.routing import serialize_response
    from fastapi.utils import create_model_field

    from orchestrator.entrypoints.rest import bodies, streaming

    out: dict[str, Any] = {}
    digest = hashlib.sha256()
    size = 0
    with PeakRss() as memory:
        t0 = time.perf_counter()
        for piece in streaming.queued_json(ALIAS.lower(), answers):
            digest.update(piece)  # what a server does with each piece: write it to the socket, drop it
            size += len(piece)
        out["stream"] = {"seconds": time.perf_counter() - t0, "rss": memory}
    streamed = digest.hexdigest()
    field = create_model_field("answer", list[bodies.QueuedAnswer], mode="serialization")
    with PeakRss() as memory:
        t0 = time.perf_counter()
        models = [bodies.queued_answer(ALIAS.lower(), a) for a in answers]
        content = asyncio.run(serialize_response(field=field, response_content=models, exclude_none=True,
                                                 dump_json=True))  # FastAPI 0.165's path for a response_model
        body = Response(content=content, media_type="application/json").body
        out["list"] = {"seconds": time.perf_counter() - t0, "rss": memory}
    out["same_bytes"] = hashlib.sha256(body).hexdigest() == streamed and len(body) == size
    out["bytes"] = size
    del models, content, body
    return out


def group_action(engine: sa.Engine, servers: int, bulk_from: int, profile: str | None) -> dict[str, Any]:
    """One timed group action on every server; the service accepts in bulk from `bulk_from` servers."""
    from orchestrator.persistence import db
    from orchestrator.services.patching import PatchService
    from orchestrator.settings import DEFAULT_PACKAGE_ID
    from schemas.patching import PackageRequest

    dispatcher = NoDispatch()
    service = PatchService(sessions=db.session_factory(engine), dispatcher=dispatcher, clock=db.utcnow)
    service.bulk_from = bulk_from
    package = PackageRequest(packageId=DEFAULT_PACKAGE_ID, parameters={})
    with engine.connect() as conn:  # warm the pool: the first connection is not the action's cost
        conn.exec_driver_sql("SELECT 1")
    counter = common.QueryCounter(engine)
    memory = PeakRss()
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    t0 = time.perf_counter()
    with memory:
        answers = service.execute_package_on_groups(ALIAS, [ROOT_GROUP], package, "bench")
    seconds = time.perf_counter() - t0
    if profiler is not None:
        profiler.stop()
        Path(profile).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        print(f"profile: {profile}")
    counter.close()
    queued = sum(1 for a in answers if a.is_queued)
    if queued != servers:
        refused = next(a for a in answers if not a.is_queued)
        raise RuntimeError(f"only {queued} of {servers} queued; e.g. {refused.server}: {refused.error_message}")
    return {
        "queued": queued,
        "seconds": seconds,
        "per_second": queued / seconds if seconds else 0.0,
        "statements": counter.count,
        "statements_per_server": counter.count / servers if servers else 0.0,
        "top_statements": counter.by_statement.most_common(8),
        "dispatched": (dispatcher.steps, dispatcher.emails),
        "rss_start": memory.start, "rss_peak": memory.peak,
        "answer": answer_encoding(answers),
    }


def _empty(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE outbox, executions CASCADE")


def run(url: str, servers: int, profile: str | None, one_by_one: bool) -> dict[str, Any]:
    from orchestrator.persistence import db, models

    install(url, servers)
    engine = db.create_engine_for(url)
    product = group_action(engine, servers, 2, profile)
    executions = models.Execution.__table__
    outbox = models.Outbox.__table__
    with engine.connect() as conn:
        execution_rows = [r._asdict() for r in conn.execute(sa.select(executions))]
        outbox_rows = [{k: v for k, v in r._asdict().items() if k != "id"} for r in conn.execute(sa.select(outbox))]
    _empty(engine)
    before = None
    if one_by_one:  # the same action through the one-server-at-a-time path (before orchestrator/services/bulk.py)
        before = group_action(engine, servers, 10**9, None)
        _empty(engine)
    # the baseline: the same rows, one multi-row INSERT per table, one transaction
    counter = common.QueryCounter(engine)
    t1 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.insert(executions), execution_rows)
        if outbox_rows:
            conn.execute(sa.insert(outbox), outbox_rows)
    bulk_seconds = time.perf_counter() - t1
    counter.close()
    engine.dispose()
    return {
        "servers": servers,
        **product,
        "outbox": len(outbox_rows),
        "one_by_one": before,
        "bulk_seconds": bulk_seconds,
        "bulk_rows": len(execution_rows) + len(outbox_rows),
        "bulk_statements": counter.count,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0], size=10_000, tiny=20)
    p.add_argument("--profile", metavar="FILE", help="write a pyinstrument profile of the group action to FILE")
    p.add_argument("--skip-one-by-one", action="store_true",
                   help="do not also time the one-server-at-a-time path (the service before services/bulk.py;"
                        " skipped anyway above 20,000 servers: minutes of per-server round trips)")
    args = common.parse(p, argv)
    info = common.machine(args.pg_admin_url, args.redis_url)
    load_before = common.load()
    with common.bench_database(args.pg_admin_url, "enqueue", args.keep_db) as url:
        result = run(url, args.size, args.profile, not args.skip_one_by_one and args.size <= 20_000)
    load = (load_before, common.load())
    base = result["bulk_seconds"]
    ratio = result["seconds"] / base if base else 0.0
    rows = [
        [f"patchaas: group action on {result['servers']} servers (nested groups), no-op dispatcher",
         f"{result['queued']} executions + {result['outbox']} emails", result["seconds"], result["per_second"],
         f"{ratio:.1f}×", result["statements"]],
    ]
    before = result["one_by_one"]
    if before:
        rows.append(["the same, one server at a time (the service before orchestrator/services/bulk.py)",
                     f"{before['queued']} executions + {before['queued']} emails", before["seconds"],
                     before["per_second"], f"{before['seconds'] / base:.1f}×" if base else "n/a",
                     before["statements"]])
    rows.append(["baseline: plain bulk INSERT of the same rows, one transaction", f"{result['bulk_rows']} rows",
                 base, result["queued"] / base if base else 0.0, "1.0×", result["bulk_statements"]])
    result_table = common.table(["run", "rows", "seconds", "executions/s", "time ÷ baseline", "statements"], rows)
    stmts = common.table(["statements of the group action (bulk)", "count"],
                         [["total", result["statements"]], ["per server", result["statements_per_server"]]]
                         + [[s, n] for s, n in result["top_statements"]])
    enc = result["answer"]
    memory_table = common.table(
        ["memory and the REST answer", "seconds", "RSS at start, MiB", "peak RSS, MiB", "peak − start, MiB"],
        [["the group action (service: every row, every answer)", result["seconds"], result["rss_start"],
          result["rss_peak"], result["rss_peak"] - result["rss_start"]]]
        + [[label, enc[key]["seconds"], enc[key]["rss"].start, enc[key]["rss"].peak,
            enc[key]["rss"].peak - enc[key]["rss"].start]
           for label, key in ((f"its answer streamed, {enc['bytes'] / 2**20:.1f} MiB in chunks of "
                               "1,000 entries (REST, orchestrator/entrypoints/rest/streaming.py)", "stream"),
                              ("its answer built whole (REST before: models, FastAPI's serialize_response)", "list"))])
    same = "the same bytes" if enc["same_bytes"] else "DIFFERENT bytes"
    print(result_table)
    print()
    print(stmts)
    print()
    print(memory_table)
    print(f"streamed and whole answers: {same}; load average {load[0]} → {load[1]}")
    if args.write_docs:
        body = "\n\n".join([
            f"Command: `{common.command_line(argv, 'bench.enqueue')}`",
            "Machine:\n\n" + common.machine_lines(info),
            f"Load average {load[0]} → {load[1]}.",
            result_table,
            stmts,
            memory_table,
            f"Ratio: the group action takes **{ratio:.1f}×** the time of a plain bulk INSERT of its rows. The "
            f"streamed answer and the answer built whole are {same}.",
        ])
        common.write_section("bench/enqueue.py", "Enqueue a group action (bench/enqueue.py)", body)
    result["ratio"] = ratio
    result["table"] = result_table
    return result


if __name__ == "__main__":
    main()
