"""Autovacuum for the benchmark's databases when the server runs without it.

This machine's PostgreSQL is configured with `autovacuum = off` (its conf.d, for the test suites' speed).
A deployment runs with it on: tables are analyzed and vacuumed as they change. Without it a benchmark's
tables, created empty and filled in the run, keep the planner's empty-table estimates and every dead row
version for the whole run, which is not what the product meets in production (at 100,000 servers the
claims by id list were planned over the due index, 220 ms each instead of 1 ms, and the outbox scan sorted
every unsent email on every tick).

`Autovacuum(urls)` does what the autovacuum daemon does, with its default thresholds, from a thread of
the benchmark process: every `naptime` seconds, in each database, `VACUUM (ANALYZE)` each table whose dead
rows exceed 50 + 20% of its live rows, `ANALYZE` each whose changes since the last analyze exceed 50 + 10%
(`autovacuum_vacuum_threshold`/`_scale_factor`, `autovacuum_analyze_threshold`/`_scale_factor`). When the
server's own autovacuum is on it does nothing. What it did is counted (`runs`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

_DUE = """
SELECT relname,
       n_dead_tup > 50 + 0.2 * greatest(n_live_tup, 1) AS vacuum,
       n_mod_since_analyze > 50 + 0.1 * greatest(n_live_tup, 1) AS analyze
FROM pg_stat_user_tables
WHERE schemaname = 'public'
"""


def server_runs_it(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SHOW autovacuum").scalar_one() == "on"
    finally:
        engine.dispose()


class Autovacuum:
    """A stand-in for the autovacuum daemon over `urls` while the block runs (see the module's doc)."""

    def __init__(self, urls: Sequence[str], naptime: float = 15.0) -> None:
        self.urls = list(urls)
        self.naptime = naptime
        self.runs: dict[str, int] = {"vacuum": 0, "analyze": 0}
        self.seconds = 0.0
        self.active = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engines: list[sa.Engine] = []

    def __enter__(self) -> Autovacuum:
        if not self.urls or server_runs_it(self.urls[0]):
            return self
        self.active = True
        self._engines = [sa.create_engine(url, isolation_level="AUTOCOMMIT") for url in self.urls]
        self._thread = threading.Thread(target=self._loop, daemon=True, name="autovacuum")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for engine in self._engines:
            engine.dispose()

    def _loop(self) -> None:
        while not self._stop.wait(self.naptime):
            for engine in self._engines:
                try:
                    self._pass(engine)
                except sa.exc.SQLAlchemyError as error:  # a dropped database at the end of a run
                    log.warning("autovacuum stand-in: %s", str(error).splitlines()[0])

    def _pass(self, engine: sa.Engine) -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            due: list[Any] = conn.exec_driver_sql(_DUE).all()
            for row in due:
                if self._stop.is_set():
                    return
                if not (row.vacuum or row.analyze):
                    continue
                started = time.monotonic()
                conn.exec_driver_sql(f'{"VACUUM (ANALYZE)" if row.vacuum else "ANALYZE"} "{row.relname}"')
                self.seconds += time.monotonic() - started
                self.runs["vacuum" if row.vacuum else "analyze"] += 1
