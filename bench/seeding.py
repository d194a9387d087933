"""Fast seeding for the benchmarks: rows written with PostgreSQL's COPY instead of INSERTs, so that a
fleet of 100,000 servers is ready in seconds and the measured part keeps its full size.

`fleet_scale` seeds its waiting executions and simulated servers with their times *parked* far in the
future (nothing is due, no server comes back), starts the worker and beat, then `arm`s the fleet: two
UPDATEs shift every timer and every boot by the same amount, so the first row falls due `lead` seconds
after the shift however long the COPY took.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

PARKED = datetime(2999, 1, 1, tzinfo=UTC)  # timers are written relative to this, then shifted (`arm`)
PARKED_EPOCH = PARKED.timestamp()


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def copy_rows(engine: sa.Engine, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
              chunk: int = 20_000) -> int:
    """COPY `rows` (tuples in `columns` order; None is NULL) into `table`, in one transaction; how many."""
    count = 0
    quoted = ", ".join(f'"{c}"' for c in columns)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        buffer = io.StringIO()
        writer = csv.writer(buffer)

        def flush() -> None:
            buffer.seek(0)
            cursor.copy_expert(f"COPY {table} ({quoted}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)
            buffer.seek(0)
            buffer.truncate()

        pending = 0
        for row in rows:
            writer.writerow(["\\N" if (c := _cell(v)) is None else c for v in row])
            pending += 1
            count += 1
            if pending >= chunk:
                flush()
                pending = 0
        if pending:
            flush()
        raw.commit()
    finally:
        raw.close()
    return count


def register_servers(url: str, alias: str, group: str, names: Sequence[str], os_type: str | None = None) -> None:
    """The account, its group and `names` (Windows Server 2012 R2 by default) in the inventory (servers by
    COPY)."""
    from orchestrator.persistence import db
    from orchestrator.services import inventory
    from simulation import catalog

    os_type = os_type or catalog.WINDOWS_2012R2

    engine = db.create_engine_for(url)
    with db.session_factory(engine).begin() as session:
        inventory.ensure_account(session, alias, "bench", "VA1", "ops@osd.example", db.utcnow())
        inventory.ensure_group(session, alias, group, "bench")
    with engine.connect() as conn:
        existing = set(conn.execute(sa.text("SELECT name FROM servers")).scalars())
    copy_rows(engine, "servers", ["name", "account_alias", "group_id", "datacenter", "os_type", "power_state",
                                  "in_maintenance"],
              ((n, alias, group, n[:3], os_type, "started", False) for n in names if n not in existing))
    engine.dispose()


def install_rebooting(sim_url: str, names: Sequence[str], seed: int, come_back: float, reset: bool,
                      base: float = PARKED_EPOCH) -> None:
    """Simulated servers rebooting, in maintenance mode, nothing left to install; each back at `base` plus a
    random moment of the next `come_back` seconds (`base` parked by default: see `arm`)."""
    from schemas.fleet import PowerState
    from simulation import catalog
    from simulation.server_state import ServerState
    from simulation.specs import Scenario, SimServerSpec
    from simulation.store import SqlStore

    rng = random.Random(seed + len(names))
    store = SqlStore(sim_url)  # creates its tables
    with store.engine.begin() as conn:
        if reset:
            for table in (store.effects_table, store.ops, store.servers):
                conn.execute(sa.delete(table))
        start = conn.execute(sa.select(sa.func.count()).select_from(store.servers)).scalar_one()

    def rows() -> Iterable[tuple[Any, ...]]:
        for i, name in enumerate(names):
            spec = SimServerSpec(name, catalog.WINDOWS_2012R2, PowerState.STARTED, Scenario.UP_TO_DATE)
            state = ServerState(seed=seed, power_state=PowerState.STARTED, in_maintenance=True, boots=1,
                                booting_until=base + rng.uniform(0.0, come_back))
            yield name, start + i, json.dumps(spec.to_doc()), json.dumps(state.to_doc())

    copy_rows(store.engine, store.servers.name, ["name", "position", "spec", "state"], rows())
    store.dispose()


def waiting_executions(url: str, names: Sequence[str], alias: str, spread: float,
                       base: datetime = PARKED) -> list[str]:
    """One execution per server in `awaiting_boot` (cycle 1, its reboot asked), due at `base` + i/N of
    `spread` seconds (parked by default: see `arm`), written by COPY; their ids."""
    from orchestrator.domain import machine, messages, naming, packages
    from orchestrator.persistence import db
    from orchestrator.settings import DEFAULT_PACKAGE_ID

    engine = db.create_engine_for(url)
    with engine.connect() as conn:
        taken = set(conn.execute(sa.text("SELECT id FROM executions")).scalars())
    pkg = packages.get(DEFAULT_PACKAGE_ID)
    now = db.utcnow()
    columns = ["id", "server_name", "account_alias", "package_id", "parameters", "requested_by", "state",
               "version", "cycle", "attempts", "next_run_at", "prior_power_state", "boot_id_before",
               "reboot_reason", "deadline_at", "kb_failures", "installed_kbs", "quarantined", "installed_count",
               "cancel_requested", "created_at", "started_at", "updated_at", "begin_message"]
    ids: list[str] = []
    rows = []
    total = max(1, len(names))
    for i, name in enumerate(names):
        eid = naming.new_execution_id(name[:3])
        while eid in taken:
            eid = naming.new_execution_id(name[:3])
        taken.add(eid)
        ids.append(eid)
        rows.append((eid, name, alias, pkg.id, {}, "bench", machine.State.AWAITING_BOOT.value, 5, 1, 0,
                     base + timedelta(seconds=spread * i / total), "started", f"{name}-boot-1",
                     "cycle 1 requires a reboot", now + timedelta(minutes=20), {}, [], {}, 3, False, now, now, now,
                     messages.EXECUTION_BEGIN))
    copy_rows(engine, "executions", columns, rows)
    engine.dispose()
    return ids


def arm(url: str, sim_url: str, lead: float) -> tuple[float, float]:
    """Shift the parked timers and boots so the first falls due `lead` seconds from now (the servers' boots
    by the same amount, on the wall clock the simulated fleet reads); (the shift's epoch, its duration s)."""
    started = time.monotonic()
    base = time.time() + lead
    shift = base - PARKED_EPOCH
    sim = sa.create_engine(sim_url)
    with sim.begin() as conn:
        conn.execute(sa.text(
            "UPDATE sim_servers SET state = jsonb_set(state::jsonb, '{booting_until}', "
            "to_jsonb((state::jsonb->>'booting_until')::float8 + :shift))::text "
            "WHERE (state::jsonb->>'booting_until')::float8 >= :parked"), {"shift": shift, "parked": PARKED_EPOCH})
    sim.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE executions SET next_run_at = next_run_at + make_interval(secs => :shift), "
                             "deadline_at = now() + interval '20 minutes' WHERE next_run_at >= :parked"),
                     {"shift": shift, "parked": PARKED})
    engine.dispose()
    analyze(url, "executions")  # within the lead: the first timer is still `lead` s after the shift
    analyze(sim_url, "sim_servers")
    return base, time.monotonic() - started


def analyze(url: str, table: str) -> None:
    """`ANALYZE` of a table just written by COPY and shifted: statistics as autovacuum would have them
    (bench/autovacuum.py: this machine's PostgreSQL runs without it). A table created empty and filled by
    the seeding would otherwise start the run with the planner's empty-table estimate, and the claims by
    id list would be planned over the due index (220 ms each at 100,000 rows instead of 1 ms)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE {table}")
    engine.dispose()
