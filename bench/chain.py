"""The bare Celery baseline of bench/transitions.py: a chain of tasks, each doing one UPDATE + commit and
sending the next hop. Same broker, same Celery settings as the product's worker (acks_late, prefetch 1,
results ignored, task events on), no ORM, no state machine, no fleet.

Started as `celery -A bench.chain worker` with PATCHAAS_DATABASE_URL and PATCHAAS_BROKER_URL set.
"""

from __future__ import annotations

import os
import threading

import sqlalchemy as sa
from celery import Celery

from orchestrator.settings import Settings
from workers.app import celery_config

HOP = "bench.hop"
TABLE = "bench_chain"

_settings = Settings()
app = Celery("bench_chain", set_as_current=False)
_config = celery_config(_settings)
for key in ("beat_schedule", "task_queues", "task_routes"):  # the product's queues are not ours
    _config.pop(key, None)
_config["task_default_queue"] = "bench_chain"
app.conf.update(_config)

_engine: sa.Engine | None = None
_lock = threading.Lock()


def _db() -> sa.Engine:
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = sa.create_engine(os.environ["PATCHAAS_DATABASE_URL"], pool_size=2)
    return _engine


@app.task(name=HOP)
def hop(chain_id: int, left: int) -> None:
    """One hop: UPDATE + commit, then send the next hop (if any)."""
    with _db().begin() as conn:
        conn.execute(sa.text(f"UPDATE {TABLE} SET hops = hops + 1, updated_at = now() WHERE id = :id"),
                     {"id": chain_id})
    if left > 1:
        hop.apply_async((chain_id, left - 1))


def create_table(conn: sa.Connection, chains: int) -> None:
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
    conn.exec_driver_sql(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, hops integer NOT NULL DEFAULT 0, "
                         "updated_at timestamptz)")
    conn.execute(sa.text(f"INSERT INTO {TABLE} (id) SELECT generate_series(1, :n)"), {"n": chains})


def total_hops(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql(f"SELECT coalesce(sum(hops), 0) FROM {TABLE}").scalar_one())
