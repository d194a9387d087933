"""A simulated fleet of Windows Server 2012 / 2012 R2 machines that implements the `Fleet` protocol.

Deterministic from a seed, driven by an injected clock (nothing sleeps, nothing runs in the background:
reboots and package runs complete lazily when a later call sees the clock past their end), and recording
every side effect it receives so tests can assert each happened exactly once.

All mutable state lives in a store: `MemoryStore` for one process, `SqlStore` when several processes (the
workers of an end-to-end test) must share one fleet. Every call runs in one store transaction that locks
the server it touches, so concurrent callers serialize per server.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from orchestrator.db import ping_when_idle
from orchestrator.fleet import FleetError, FleetRefused
from schemas import selection
from schemas.fleet import (
    CycleReport,
    CycleState,
    PackageRun,
    PowerState,
    ResultCode,
    ServerStatus,
    UpdateResult,
)
from workers.fleet.catalog import (
    UNSUPPORTED_OS_EXAMPLES,
    WINDOWS_2012,
    WINDOWS_2012R2,
    CatalogUpdate,
    Classification,
    RebootBehavior,
    catalog_for,
    is_supported,
    waves,
)

HRESULT_FATAL_INSTALL = 0x80070643  # ERROR_INSTALL_FAILURE: the common 2012 R2 install failure
HRESULT_ALL_FAILED = 0x80240022  # WU_E_ALL_UPDATES_FAILED: the batch HRESULT when nothing installed

Document = dict[str, Any]


class Scenario(StrEnum):
    """How a simulated server behaves during a patch run."""

    NORMAL = "normal"  # 2-4 cycles of waves, every update installs
    FLAKY_KB = "flaky_kb"  # one update fails its first install and succeeds on retry
    BROKEN_KB = "broken_kb"  # one update fails every install (0x80070643)
    ROLLBACK_KB = "rollback_kb"  # one update installs, then rolls back at every reboot: an update loop
    NEVER_RETURNS = "never_returns"  # its first reboot never completes: the server stays down forever
    POWERED_OFF = "powered_off"  # starts stopped: the run must power it on (and off again)
    PENDING_REBOOT = "pending_reboot"  # a reboot is already pending before the first cycle
    UNSUPPORTED_OS = "unsupported_os"  # an OS the update package does not support
    UP_TO_DATE = "up_to_date"  # nothing to install


class Fault(StrEnum):
    """What goes wrong when one update is installed."""

    FAIL_ONCE = "fail_once"  # the first attempt fails (0x80070643), the next succeeds
    ALWAYS_FAIL = "always_fail"  # every attempt fails (0x80070643)
    ROLLBACK = "rollback"  # succeeds and needs a reboot, then reverts at that reboot and is offered again


NON_BLOCKING_FAULTS: frozenset[Fault] = frozenset({Fault.ALWAYS_FAIL, Fault.ROLLBACK})


class EffectKind(StrEnum):
    """A side effect the fleet received."""

    INSTALL = "install"
    REBOOT = "reboot"
    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    MAINTENANCE_ON = "maintenance_on"
    MAINTENANCE_OFF = "maintenance_off"


@dataclass(frozen=True)
class Effect:
    """One side effect: what was done to which server under which idempotency key, and when."""

    server: str
    kind: EffectKind
    key: str
    kb: str | None
    at: float


@dataclass(frozen=True)
class SimTimings:
    """How long the simulated operations take, in seconds of the injected clock."""

    reboot_seconds: float = 0.0
    package_seconds: float = 0.0
    power_seconds: float = 0.0

    @classmethod
    def instant(cls) -> SimTimings:
        """Everything completes as soon as the clock is read again (unit tests)."""
        return cls(0.0, 0.0, 0.0)

    @classmethod
    def demo(cls) -> SimTimings:
        """Short but visible waits (the `patchaas demo` fleet)."""
        return cls(reboot_seconds=1.5, package_seconds=1.0, power_seconds=1.0)


@dataclass(frozen=True)
class SimServerSpec:
    """What a simulated server is: name, OS, initial power state, scenario, the updates it is missing and
    the faults of some of them (KB -> fault)."""

    name: str
    os_type: str = WINDOWS_2012R2
    power_state: PowerState = PowerState.STARTED
    scenario: Scenario = Scenario.NORMAL
    updates: tuple[CatalogUpdate, ...] = ()
    faults: Mapping[str, Fault] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a server needs a name")
        object.__setattr__(self, "power_state", PowerState(self.power_state))
        object.__setattr__(self, "scenario", Scenario(self.scenario))
        object.__setattr__(self, "updates", tuple(self.updates))
        kbs = [update.kb for update in self.updates]
        if len(set(kbs)) != len(kbs):
            raise ValueError(f"{self.name}: an update is listed twice")
        unknown = set(self.faults) - set(kbs)
        if unknown:
            raise ValueError(f"{self.name}: faults for updates it does not have: {sorted(unknown)}")
        faults = {kb: Fault(fault) for kb, fault in self.faults.items()}
        object.__setattr__(self, "faults", MappingProxyType(faults))

    def update(self, kb: str) -> CatalogUpdate:
        """The update `kb` of this server."""
        for candidate in self.updates:
            if candidate.kb == kb:
                return candidate
        raise KeyError(kb)

    def to_doc(self) -> Document:
        """The spec as a JSON-able document."""
        return {
            "name": self.name,
            "os_type": self.os_type,
            "power_state": self.power_state.value,
            "scenario": self.scenario.value,
            "updates": [
                [u.kb, u.title, u.url, u.classification.value, u.wave, u.reboot_behavior, u.age_days, u.msrc_severity]
                for u in self.updates
            ],
            "faults": {kb: fault.value for kb, fault in self.faults.items()},
        }

    @classmethod
    def from_doc(cls, doc: Document) -> SimServerSpec:
        """The spec `to_doc` wrote."""
        updates = tuple(  # the age and severity (the last two) are missing from specs written before them
            CatalogUpdate(kb, title, url, Classification(classification), wave, reboot, *rest)
            for kb, title, url, classification, wave, reboot, *rest in doc["updates"]
        )
        return cls(
            name=doc["name"],
            os_type=doc["os_type"],
            power_state=PowerState(doc["power_state"]),
            scenario=Scenario(doc["scenario"]),
            updates=updates,
            faults={kb: Fault(fault) for kb, fault in doc["faults"].items()},
        )


# --- the mutable state of one server -----------------------------------------------------------


@dataclass
class _ServerState:
    """Everything about a server that changes; stored as a small JSON document."""

    seed: int
    power_state: PowerState
    in_maintenance: bool = False
    boots: int = 0
    booting_until: float | None = None  # powered on but still booting (rebooting or starting) until then
    stuck: bool = False  # a boot that never completes (NEVER_RETURNS)
    committed: list[str] = field(default_factory=list)  # installed and, if needed, rebooted since
    pending: list[str] = field(default_factory=list)  # installed, waiting for a reboot
    pending_flag: bool = False  # a reboot pending from before the simulation (PENDING_REBOOT)
    attempts: dict[str, int] = field(default_factory=dict)  # install attempts per KB
    epoch: float = 0.0  # the fleet's clock when the server was created: update release ages count back from it

    @property
    def up(self) -> bool:
        return self.power_state is PowerState.STARTED and self.booting_until is None and not self.stuck

    @property
    def pending_reboot(self) -> bool:
        return self.pending_flag or bool(self.pending)

    def boot_id(self, name: str) -> str:
        return f"{name}-boot-{self.boots}"

    @classmethod
    def initial(cls, spec: SimServerSpec, seed: int, epoch: float = 0.0) -> _ServerState:
        started = spec.power_state is PowerState.STARTED
        return cls(
            seed=seed,
            epoch=epoch,
            power_state=spec.power_state,
            boots=1 if started else 0,
            pending_flag=spec.scenario is Scenario.PENDING_REBOOT,
        )

    def to_doc(self) -> Document:
        return {
            "seed": self.seed,
            "power": self.power_state.value,
            "maint": self.in_maintenance,
            "boots": self.boots,
            "booting_until": self.booting_until,
            "stuck": self.stuck,
            "committed": self.committed,
            "pending": self.pending,
            "pending_flag": self.pending_flag,
            "attempts": self.attempts,
            "epoch": self.epoch,
        }

    @classmethod
    def from_doc(cls, doc: Document) -> _ServerState:
        return cls(
            seed=doc["seed"],
            power_state=PowerState(doc["power"]),
            in_maintenance=doc["maint"],
            boots=doc["boots"],
            booting_until=doc["booting_until"],
            stuck=doc["stuck"],
            committed=list(doc["committed"]),
            pending=list(doc["pending"]),
            pending_flag=doc["pending_flag"],
            attempts=dict(doc["attempts"]),
            epoch=doc.get("epoch", 0.0),
        )


# --- stores ------------------------------------------------------------------------------------


class StoreSession:
    """One transaction on one locked server: its spec and state, its operations by key, new effects."""

    def __init__(
        self, spec: Document, state: Document, lookup: Callable[[str, str], Document | None]
    ) -> None:
        self.spec = spec
        self.state = state
        self.new_ops: dict[tuple[str, str], Document] = {}
        self.new_effects: list[Effect] = []
        self._lookup = lookup

    def op(self, kind: str, key: str) -> Document | None:
        """The document of the operation `kind` done under `key`, or None if it was never done."""
        return self.new_ops.get((str(kind), key)) or self._lookup(str(kind), key)

    def put_op(self, kind: str, key: str, doc: Document) -> None:
        """Remember that the operation `kind` was done under `key`."""
        self.new_ops[(str(kind), key)] = doc

    def record(self, effect: Effect) -> None:
        """Record a side effect (written when the transaction commits)."""
        self.new_effects.append(effect)


class FleetStore(Protocol):
    """Where a simulated fleet keeps its state."""

    def install(self, servers: Sequence[tuple[str, Document, Document]], reset: bool) -> None:
        """Add servers (name, spec, state) that are not there yet; with `reset`, forget everything first."""
        ...

    def session(self, server: str) -> AbstractContextManager[StoreSession]:
        """A transaction that holds `server` locked; committed when the block ends without an exception.
        Raises FleetRefused for an unknown server."""
        ...

    def specs(self) -> list[Document]:
        """Every server's spec, in the order they were installed."""
        ...

    def effects(self, server: str | None, kind: str | None) -> list[Effect]:
        """The recorded effects, oldest first, optionally of one server and/or one kind."""
        ...


def _not_found(server: str) -> FleetRefused:
    return FleetRefused(f"server {server} not found")


def _copy(doc: Document) -> Document:
    copied: Document = json.loads(json.dumps(doc))
    return copied


class MemoryStore:
    """The fleet's state in this process's memory (a dict behind a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, Document] = {}
        self._states: dict[str, Document] = {}
        self._ops: dict[tuple[str, str, str], Document] = {}
        self._effects: list[Effect] = []

    def install(self, servers: Sequence[tuple[str, Document, Document]], reset: bool) -> None:
        with self._lock:
            if reset:
                self._specs.clear()
                self._states.clear()
                self._ops.clear()
                self._effects.clear()
            for name, spec, state in servers:
                if name not in self._specs:
                    self._specs[name] = _copy(spec)
                    self._states[name] = _copy(state)

    @contextmanager
    def session(self, server: str) -> Iterator[StoreSession]:
        with self._lock:
            if server not in self._specs:
                raise _not_found(server)
            session = StoreSession(
                self._specs[server],
                _copy(self._states[server]),
                lambda kind, key: self._ops.get((server, kind, key)),
            )
            yield session
            self._states[server] = session.state
            for (kind, key), doc in session.new_ops.items():
                self._ops[(server, kind, key)] = doc
            self._effects.extend(session.new_effects)

    @contextmanager
    def many(self, servers: Sequence[str]) -> Iterator[dict[str, StoreSession]]:
        """`session` for many servers at once (the known ones), in one critical section."""
        with self._lock:
            sessions = {
                name: StoreSession(self._specs[name], _copy(self._states[name]),
                                   lambda kind, key, name=name: self._ops.get((name, kind, key)))  # type: ignore[misc]
                for name in sorted(set(servers)) if name in self._specs
            }
            yield sessions
            for name, session in sessions.items():
                self._states[name] = session.state

    def specs(self) -> list[Document]:
        with self._lock:
            return [_copy(spec) for spec in self._specs.values()]

    def effects(self, server: str | None, kind: str | None) -> list[Effect]:
        with self._lock:
            return [
                effect
                for effect in self._effects
                if (server is None or effect.server == server) and (kind is None or effect.kind == kind)
            ]


class SqlStore:
    """The fleet's state in a SQL database, shared by every process pointing at the same URL.

    Tables (`<prefix>servers`, `<prefix>ops`, `<prefix>effects`) live in their own MetaData and are created
    on construction. A session locks the server's row with SELECT ... FOR UPDATE (PostgreSQL); on SQLite,
    transactions begin IMMEDIATE and are serialized within the process as well.
    """

    def __init__(self, url: str, prefix: str = "sim_", engine: Engine | None = None) -> None:
        self.prefix = prefix
        self._engine = engine if engine is not None else _engine_for(url)
        sqlite = self._engine.dialect.name == "sqlite"
        self._lock = threading.RLock()
        self._guard: Callable[[], AbstractContextManager[object]] = (
            self._lock_guard if sqlite else nullcontext
        )
        self.metadata = sa.MetaData()
        self.servers = sa.Table(
            f"{prefix}servers",
            self.metadata,
            sa.Column("name", sa.String(100), primary_key=True),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("spec", sa.Text, nullable=False),
            sa.Column("state", sa.Text, nullable=False),
        )
        self.ops = sa.Table(
            f"{prefix}ops",
            self.metadata,
            sa.Column("server", sa.String(100), primary_key=True),
            sa.Column("kind", sa.String(40), primary_key=True),
            sa.Column("key", sa.String(300), primary_key=True),
            sa.Column("doc", sa.Text, nullable=False),
        )
        self.effects_table = sa.Table(
            f"{prefix}effects",
            self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("server", sa.String(100), nullable=False, index=True),
            sa.Column("kind", sa.String(40), nullable=False),
            sa.Column("key", sa.String(300), nullable=False),
            sa.Column("kb", sa.String(20), nullable=True),
            sa.Column("at", sa.Float, nullable=False),
        )
        with self._guard(), self._engine.begin() as conn:
            self._advisory_lock(conn)
            self.metadata.create_all(conn)

    @property
    def engine(self) -> Engine:
        """The engine the store talks through."""
        return self._engine

    def _lock_guard(self) -> AbstractContextManager[object]:
        return self._lock

    def _advisory_lock(self, conn: sa.Connection) -> None:
        """Serialize schema changes and resets between processes (PostgreSQL only)."""
        if conn.dialect.name == "postgresql":
            lock_id = zlib.crc32(f"patchaas-sim:{self.prefix}".encode())
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})

    def install(self, servers: Sequence[tuple[str, Document, Document]], reset: bool) -> None:
        with self._guard(), self._engine.begin() as conn:
            self._advisory_lock(conn)
            if reset:
                for table in (self.effects_table, self.ops, self.servers):
                    conn.execute(sa.delete(table))
            existing = set(conn.execute(sa.select(self.servers.c.name)).scalars())
            start = conn.execute(sa.select(sa.func.count()).select_from(self.servers)).scalar_one()
            rows = [
                {
                    "name": name,
                    "position": start + index,
                    "spec": json.dumps(spec),
                    "state": json.dumps(state),
                }
                for index, (name, spec, state) in enumerate(servers)
                if name not in existing
            ]
            if rows:
                conn.execute(sa.insert(self.servers), rows)

    @contextmanager
    def session(self, server: str) -> Iterator[StoreSession]:
        with self._guard(), self._engine.begin() as conn:
            row = conn.execute(
                sa.select(self.servers.c.spec, self.servers.c.state)
                .where(self.servers.c.name == server)
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise _not_found(server)

            def lookup(kind: str, key: str) -> Document | None:
                text = conn.execute(
                    sa.select(self.ops.c.doc).where(
                        self.ops.c.server == server, self.ops.c.kind == kind, self.ops.c.key == key
                    )
                ).scalar_one_or_none()
                return None if text is None else json.loads(text)

            before = json.loads(row.state)
            session = StoreSession(json.loads(row.spec), _copy(before), lookup)
            yield session
            if session.state != before:
                conn.execute(
                    sa.update(self.servers)
                    .where(self.servers.c.name == server)
                    .values(state=json.dumps(session.state))
                )
            if session.new_ops:
                conn.execute(
                    sa.insert(self.ops),
                    [
                        {"server": server, "kind": kind, "key": key, "doc": json.dumps(doc)}
                        for (kind, key), doc in session.new_ops.items()
                    ],
                )
            if session.new_effects:
                conn.execute(
                    sa.insert(self.effects_table),
                    [
                        {"server": e.server, "kind": e.kind.value, "key": e.key, "kb": e.kb, "at": e.at}
                        for e in session.new_effects
                    ],
                )

    @contextmanager
    def many(self, servers: Sequence[str], ops: Sequence[tuple[str, str, str]] = ()
             ) -> Iterator[dict[str, StoreSession]]:
        """`session` for many servers in one transaction: the known ones, locked in name order (one lock
        order for every caller), their changed states written back in one statement. Only the operations
        named in `ops` (server, kind, key) can be looked up, read in one statement; none are recorded (the
        bulk reads, status and cycle results, record nothing)."""
        names = sorted(set(servers))
        with self._guard(), self._engine.begin() as conn:
            rows = conn.execute(
                sa.select(self.servers.c.name, self.servers.c.spec, self.servers.c.state)
                .where(self.servers.c.name.in_(names))
                .order_by(self.servers.c.name)
                .with_for_update()
            ).all() if names else []
            found: dict[tuple[str, str, str], Document] = {}
            if ops and rows:
                keys = sorted({key for _, _, key in ops})
                for op in conn.execute(
                    sa.select(self.ops.c.server, self.ops.c.kind, self.ops.c.key, self.ops.c.doc)
                    .where(self.ops.c.server.in_(names), self.ops.c.key.in_(keys))
                ):
                    found[(op.server, op.kind, op.key)] = json.loads(op.doc)
            before = {row.name: json.loads(row.state) for row in rows}
            sessions = {row.name: StoreSession(json.loads(row.spec), _copy(before[row.name]),
                                               lambda kind, key, name=row.name: found.get((name, kind, key)))
                        for row in rows}
            yield sessions
            changed = [{"b_name": name, "state": json.dumps(session.state)}
                       for name, session in sessions.items() if session.state != before[name]]
            if changed:
                conn.execute(
                    sa.update(self.servers).where(self.servers.c.name == sa.bindparam("b_name"))
                    .values(state=sa.bindparam("state")),
                    changed,
                )

    def specs(self) -> list[Document]:
        with self._guard(), self._engine.connect() as conn:
            texts = conn.execute(sa.select(self.servers.c.spec).order_by(self.servers.c.position)).scalars()
            return [json.loads(text) for text in texts]

    def effects(self, server: str | None, kind: str | None) -> list[Effect]:
        table = self.effects_table
        query = sa.select(table).order_by(table.c.id)
        if server is not None:
            query = query.where(table.c.server == server)
        if kind is not None:
            query = query.where(table.c.kind == str(kind))
        with self._guard(), self._engine.connect() as conn:
            return [
                Effect(row.server, EffectKind(row.kind), row.key, row.kb, row.at)
                for row in conn.execute(query)
            ]

    def drop(self) -> None:
        """Drop this store's tables (tests clean up after themselves)."""
        with self._guard(), self._engine.begin() as conn:
            self._advisory_lock(conn)
            self.metadata.drop_all(conn)

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self._engine.dispose()


def _engine_for(url: str) -> Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # a pool as large as a batch's fleet threads (8): a smaller one closes and reopens its overflow
        # connections on every round (2.4% of a worker's time in connect() under bench.fleet_scale)
        # and the same ping of idle connections only as the orchestrator's own pool (orchestrator/db.py)
        engine = sa.create_engine(url, pool_size=10, max_overflow=10)
        ping_when_idle(engine, 1.0)
        return engine
    in_memory = parsed.database in (None, "", ":memory:")
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if in_memory else None,
    )

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" below open the transaction

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks

    return engine


# --- the fleet ---------------------------------------------------------------------------------

_PACKAGE = "package"


class SimulatedFleet:
    """Simulated Windows servers behind the `Fleet` protocol.

    `create(specs, ...)` writes a fleet into a store; `SimulatedFleet(store, ...)` (or `load`) attaches to
    one that exists. The seed given to `create` decides the simulation (which "can request" updates ask
    for a reboot); the seed given to the constructor seeds this instance's transient control-plane errors.
    """

    def __init__(
        self,
        store: FleetStore | None = None,
        timings: SimTimings | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        transient_error_rate: float = 0.0,
    ) -> None:
        if not 0.0 <= transient_error_rate <= 1.0:
            raise ValueError(f"transient_error_rate {transient_error_rate} is not within [0, 1]")
        self.store: FleetStore = store if store is not None else MemoryStore()
        self.timings = timings if timings is not None else SimTimings.instant()
        self.clock = clock
        self.transient_error_rate = transient_error_rate
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        specs: Iterable[SimServerSpec],
        store: FleetStore | None = None,
        timings: SimTimings | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        transient_error_rate: float = 0.0,
        reset: bool = False,
    ) -> SimulatedFleet:
        """Write `specs` into `store` (servers already there are kept unless `reset`) and attach to it. The
        servers are created now by `clock`: their updates' release dates (catalog ages) count back from it."""
        specs = list(specs)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError("two servers have the same name")
        store = store if store is not None else MemoryStore()
        epoch = clock()
        store.install([(s.name, s.to_doc(), _ServerState.initial(s, seed, epoch).to_doc()) for s in specs], reset)
        return cls(store, timings, seed, clock, transient_error_rate)

    @classmethod
    def load(
        cls,
        store: FleetStore,
        timings: SimTimings | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        transient_error_rate: float = 0.0,
    ) -> SimulatedFleet:
        """Attach to the fleet `store` holds (written earlier by `create`, maybe by another process)."""
        return cls(store, timings, seed, clock, transient_error_rate)

    # --- the Fleet protocol --------------------------------------------------------------------

    def status(self, server: str) -> ServerStatus:
        """The server's power state, maintenance flag, boot id and pending reboot."""
        self._maybe_fail()
        with self._server(server) as (_, spec, state, _now):
            return ServerStatus(
                name=spec.name,
                os_type=spec.os_type,
                power_state=state.power_state,
                in_maintenance=state.in_maintenance,
                up=state.up,
                boot_id=state.boot_id(spec.name),
                pending_reboot=state.pending_reboot,
            )

    def statuses(self, servers: Sequence[str]) -> dict[str, ServerStatus]:
        """`status` of many servers in one store transaction (one statement to read, one to write back the
        boots completed meanwhile); unknown servers are left out (their `status` raises FleetRefused)."""
        self._maybe_fail()
        many = getattr(self.store, "many", None)
        if many is None:  # a store without bulk reads: one session each
            found: dict[str, ServerStatus] = {}
            for server in servers:
                try:
                    found[server] = self.status(server)
                except FleetRefused:
                    continue
            return found
        answers: dict[str, ServerStatus] = {}
        with many(servers) as sessions:
            now = self.clock()
            for name, session in sessions.items():
                spec = SimServerSpec.from_doc(session.spec)
                state = _ServerState.from_doc(session.state)
                _advance(spec, state, now)
                session.state = state.to_doc()
                answers[name] = ServerStatus(
                    name=spec.name, os_type=spec.os_type, power_state=state.power_state,
                    in_maintenance=state.in_maintenance, up=state.up, boot_id=state.boot_id(spec.name),
                    pending_reboot=state.pending_reboot,
                )
        return answers

    def cycle_results(self, items: Sequence[tuple[str, str]]) -> dict[tuple[str, str], CycleReport | None]:
        """`cycle_result` of many (server, key) pairs in one store transaction; unknown servers are left out
        (their `cycle_result` raises FleetRefused)."""
        self._maybe_fail()
        many = getattr(self.store, "many", None)
        if many is None:
            return {(server, key): self.cycle_result(server, key) for server, key in items}
        answers: dict[tuple[str, str], CycleReport | None] = {}
        with many([server for server, _ in items], [(server, _PACKAGE, key) for server, key in items]) as sessions:
            now = self.clock()
            for server, key in items:
                session = sessions.get(server)
                if session is None:
                    continue
                spec = SimServerSpec.from_doc(session.spec)
                state = _ServerState.from_doc(session.state)
                _advance(spec, state, now)
                session.state = state.to_doc()
                answers[(server, key)] = _report(session.op(_PACKAGE, key), key, now)
        return answers

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        """Set the maintenance flag; every call is recorded (the control plane takes it even if unchanged)."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            state.in_maintenance = on
            kind = EffectKind.MAINTENANCE_ON if on else EffectKind.MAINTENANCE_OFF
            session.record(Effect(spec.name, kind, key, None, now))

    def power_on(self, server: str, key: str) -> None:
        """Start a stopped or paused server: started now, up (with a new boot id) after `power_seconds`."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(EffectKind.POWER_ON, key) is not None:
                return
            session.put_op(EffectKind.POWER_ON, key, {"at": now})
            session.record(Effect(spec.name, EffectKind.POWER_ON, key, None, now))
            if state.power_state is not PowerState.STARTED:
                state.power_state = PowerState.STARTED
                state.booting_until = now + self.timings.power_seconds

    def power_off(self, server: str, key: str) -> None:
        """Stop the server at once."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(EffectKind.POWER_OFF, key) is not None:
                return
            session.put_op(EffectKind.POWER_OFF, key, {"at": now})
            session.record(Effect(spec.name, EffectKind.POWER_OFF, key, None, now))
            state.power_state = PowerState.STOPPED
            state.booting_until = None

    def reboot(self, server: str, key: str) -> None:
        """Reboot: down now, back after `reboot_seconds` with a new boot id and pending installs committed."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(EffectKind.REBOOT, key) is not None:
                return
            if state.power_state is not PowerState.STARTED:
                raise FleetError(f"server {spec.name} is {state.power_state.value}: cannot reboot it")
            session.put_op(EffectKind.REBOOT, key, {"at": now})
            session.record(Effect(spec.name, EffectKind.REBOOT, key, None, now))
            if spec.scenario is Scenario.NEVER_RETURNS:
                state.stuck = True
            state.booting_until = now + self.timings.reboot_seconds

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        """Run one cycle: search, install every offered update not excluded, keep the report under `key`.
        The run's selection (schemas/selection.py) is applied as the package applies it: an update it does not
        admit (release age and MSRC severity as of the fleet's clock now) is not installed, only listed in
        the report's `excluded`."""
        self._maybe_fail()
        with self._server(server) as (session, spec, state, now):
            if session.op(_PACKAGE, key) is not None:
                return
            if not is_supported(spec.os_type):
                raise FleetRefused(
                    f"server {spec.name} runs {spec.os_type}: the update package does not support it"
                )
            if not state.up:
                raise FleetError(f"server {spec.name} is not reachable")
            offered = _search(spec, state)
            wanted = selection.selection_of(run.parameters)
            skip = set(run.exclude_kbs)
            searched = _datetime(now)
            excluded = tuple(
                u.kb for u in offered
                if u.kb in skip or not wanted.admits(u.kb, str(u.classification),
                                                     _datetime(u.released_at(state.epoch)), u.msrc_severity, searched)
            )
            results: list[UpdateResult] = []
            for update in offered:
                if update.kb in excluded:
                    continue
                if wanted.scan_only:  # report what would be installed, change nothing
                    results.append(_scanned(update))
                    continue
                results.append(_install(spec, state, update))
                session.record(Effect(spec.name, EffectKind.INSTALL, key, update.kb, now))
            failed = sum(1 for result in results if result.result_code == ResultCode.FAILED)
            if wanted.scan_only:
                code, hresult = ResultCode.NOT_STARTED, 0
            elif results and failed == len(results):
                code, hresult = ResultCode.FAILED, HRESULT_ALL_FAILED
            elif failed:
                code, hresult = ResultCode.SUCCEEDED_WITH_ERRORS, 0
            else:
                code, hresult = ResultCode.SUCCEEDED, 0
            finish_at = now + self.timings.package_seconds
            report = CycleReport(
                key=key,
                state=CycleState.FINISHED,
                started_at=_datetime(now),
                finished_at=_datetime(finish_at),
                updates=tuple(results),
                result_code=code,
                hresult=hresult,
                reboot_required=state.pending_reboot,
                excluded=excluded,
            )
            session.put_op(
                _PACKAGE,
                key,
                {
                    "cycle": run.cycle,
                    "started_at": now,
                    "finish_at": finish_at,
                    "report": report.model_dump(mode="json"),
                },
            )

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        """The cycle started under `key`: None if never received, running until its end, then its report."""
        self._maybe_fail()
        with self._server(server) as (session, _spec, _state, now):
            return _report(session.op(_PACKAGE, key), key, now)

    # --- inspection (tests, demo) ------------------------------------------------------------

    def effects(self, server: str | None = None, kind: str | None = None) -> list[Effect]:
        """Every side effect received, oldest first, optionally of one server and/or one kind."""
        return self.store.effects(server, kind)

    def specs(self) -> list[SimServerSpec]:
        """The servers of the fleet, in the order they were created."""
        return [SimServerSpec.from_doc(doc) for doc in self.store.specs()]

    def installed_kbs(self, server: str) -> set[str]:
        """The KBs installed on `server` for good (installed and, if they needed one, rebooted since)."""
        with self._server(server) as (_, _spec, state, _now):
            return set(state.committed)

    def offered_kbs(self, server: str) -> list[str]:
        """What a search on `server` would offer now (before exclusions)."""
        with self._server(server) as (_, spec, state, _now):
            return [update.kb for update in _search(spec, state)]

    # --- internals ---------------------------------------------------------------------------

    def _maybe_fail(self) -> None:
        if self.transient_error_rate <= 0.0:
            return
        with self._rng_lock:
            roll = self._rng.random()
        if roll < self.transient_error_rate:
            raise FleetError("simulated control-plane error")

    @contextmanager
    def _server(self, server: str) -> Iterator[tuple[StoreSession, SimServerSpec, _ServerState, float]]:
        """One locked transaction on `server`, its state brought up to the clock first."""
        with self.store.session(server) as session:
            now = self.clock()
            spec = SimServerSpec.from_doc(session.spec)
            state = _ServerState.from_doc(session.state)
            _advance(spec, state, now)
            yield session, spec, state, now
            session.state = state.to_doc()


def _report(job: Document | None, key: str, now: float) -> CycleReport | None:
    """What `cycle_result` answers for the package job stored under `key` (None: never received)."""
    if job is None:
        return None
    if now < job["finish_at"]:
        return CycleReport(
            key=key,
            state=CycleState.RUNNING,
            started_at=_datetime(job["started_at"]),
            result_code=ResultCode.IN_PROGRESS,
        )
    return CycleReport.model_validate(job["report"])


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _advance(spec: SimServerSpec, state: _ServerState, now: float) -> None:
    """Complete a boot whose time has come: new boot id, pending installs committed or rolled back."""
    if state.stuck or state.booting_until is None or now < state.booting_until:
        return
    state.boots += 1
    state.booting_until = None
    for kb in state.pending:
        if spec.faults.get(kb) is not Fault.ROLLBACK:
            state.committed.append(kb)
    state.pending = []
    state.pending_flag = False


def _search(spec: SimServerSpec, state: _ServerState) -> list[CatalogUpdate]:
    """What WUA offers now: missing updates not waiting for a reboot, up to the first wave still blocked."""
    installed = set(state.committed) | set(state.pending)
    blocking = [
        update.wave
        for update in spec.updates
        if update.kb not in state.committed and spec.faults.get(update.kb) not in NON_BLOCKING_FAULTS
    ]
    open_wave = min(blocking, default=None)
    return sorted(
        (u for u in spec.updates if u.kb not in installed and (open_wave is None or u.wave <= open_wave)),
        key=lambda u: u.wave,
    )


def _scanned(update: CatalogUpdate) -> UpdateResult:
    """An update found by a scan-only cycle: reported, not installed."""
    return UpdateResult(
        kb=update.kb, title=update.title, url=update.url, classification=str(update.classification),
        result_code=ResultCode.NOT_STARTED, hresult=0, reboot_required=update.reboot_behavior == 1,
    )


def _install(spec: SimServerSpec, state: _ServerState, update: CatalogUpdate) -> UpdateResult:
    """Install one update: its result, and the state change it makes."""
    attempt = state.attempts.get(update.kb, 0) + 1
    state.attempts[update.kb] = attempt
    fault = spec.faults.get(update.kb)
    failed = fault is Fault.ALWAYS_FAIL or (fault is Fault.FAIL_ONCE and attempt == 1)
    reboot = False
    if not failed:
        reboot = fault is Fault.ROLLBACK or _needs_reboot(state.seed, spec.name, update)
        (state.pending if reboot else state.committed).append(update.kb)
    return UpdateResult(
        kb=update.kb,
        title=update.title,
        url=update.url,
        classification=update.classification.value,
        result_code=ResultCode.FAILED if failed else ResultCode.SUCCEEDED,
        hresult=HRESULT_FATAL_INSTALL if failed else 0,
        reboot_required=reboot,
    )


def _needs_reboot(seed: int, server: str, update: CatalogUpdate) -> bool:
    """RebootBehavior 1 always, 0 never, 2 decided once per (seed, server, KB)."""
    if update.reboot_behavior == RebootBehavior.CAN_REQUEST:
        digest = hashlib.sha256(f"{seed}:{server}:{update.kb}".encode()).digest()
        return digest[0] % 2 == 0
    return update.reboot_behavior == RebootBehavior.ALWAYS


# --- deterministic fleets ----------------------------------------------------------------------

_OTHER_SCENARIOS: tuple[Scenario, ...] = tuple(s for s in Scenario if s is not Scenario.NORMAL)


def server_name(datacenter: str, alias: str, custom: str, number: int) -> str:
    """A CLC server name: datacenter + account alias + custom name + incrementor (01..99, then 100...)."""
    if number < 1:
        raise ValueError(f"server numbers start at 1, not {number}")
    return f"{datacenter}{alias}{custom}{number:02d}".upper()


def build_fleet_specs(
    seed: int,
    count: int,
    datacenter: str = "VA1",
    alias: str = "OSD",
    custom: str = "PATCH",
    scenarios: Mapping[Scenario, int] | None = None,
) -> list[SimServerSpec]:
    """`count` servers, identical for the same arguments.

    Without `scenarios`, about two thirds are NORMAL and every other scenario gets count // 24 servers
    (none below 24 servers), shuffled by the seed. With `scenarios`, servers take them in the mapping's
    order and NORMAL fills the rest. The OS alternates 2012 / 2012 R2 (UNSUPPORTED_OS aside).
    """
    if count < 0:
        raise ValueError(f"count {count} is negative")
    if scenarios is None:
        each = count // 24
        plan = [scenario for scenario in _OTHER_SCENARIOS for _ in range(each)]
        plan += [Scenario.NORMAL] * (count - len(plan))
        random.Random(f"{seed}:plan").shuffle(plan)
    else:
        plan = [Scenario(scenario) for scenario, n in scenarios.items() for _ in range(n)]
        if len(plan) > count:
            raise ValueError(f"{len(plan)} scenarios asked for but only {count} servers")
        plan += [Scenario.NORMAL] * (count - len(plan))
    specs: list[SimServerSpec] = []
    unsupported = 0
    for index, scenario in enumerate(plan):
        name = server_name(datacenter, alias, custom, index + 1)
        os_type = WINDOWS_2012 if index % 2 == 0 else WINDOWS_2012R2
        if scenario is Scenario.UNSUPPORTED_OS:
            os_type = UNSUPPORTED_OS_EXAMPLES[unsupported % len(UNSUPPORTED_OS_EXAMPLES)]
            unsupported += 1
        specs.append(spec_for(name, scenario, os_type, random.Random(f"{seed}:{name}")))
    return specs


def spec_for(name: str, scenario: Scenario, os_type: str, rng: random.Random) -> SimServerSpec:
    """A server of `scenario`: 1 to 3 waves of updates picked from its OS's catalog, plus its fault."""
    power = PowerState.STOPPED if scenario is Scenario.POWERED_OFF else PowerState.STARTED
    if scenario in (Scenario.UNSUPPORTED_OS, Scenario.UP_TO_DATE) or not is_supported(os_type):
        return SimServerSpec(name, os_type, power, scenario)
    updates = _pick_updates(catalog_for(os_type), rng.choice((1, 2, 2, 3)), rng)
    faults: dict[str, Fault] = {}
    fault = {
        Scenario.FLAKY_KB: Fault.FAIL_ONCE,
        Scenario.BROKEN_KB: Fault.ALWAYS_FAIL,
        Scenario.ROLLBACK_KB: Fault.ROLLBACK,
    }.get(scenario)
    if fault is not None:
        candidates = [u for u in updates if u.classification is not Classification.SERVICING_STACK]
        faults[rng.choice(candidates).kb] = fault
    return SimServerSpec(name, os_type, power, scenario, updates, faults)


def _pick_updates(
    catalog: tuple[CatalogUpdate, ...], wave_count: int, rng: random.Random
) -> tuple[CatalogUpdate, ...]:
    """The first `wave_count` waves: per wave one update that always reboots plus a few others; wave 0
    also one servicing stack update. Each picked wave then costs exactly one reboot."""
    picked: list[CatalogUpdate] = []
    for wave in waves(catalog)[:wave_count]:
        pool = [u for u in catalog if u.wave == wave]
        chosen = {rng.choice([u for u in pool if u.reboot_behavior == RebootBehavior.ALWAYS]).kb}
        stacks = [u for u in pool if u.classification is Classification.SERVICING_STACK]
        if stacks:
            chosen.add(rng.choice(stacks).kb)
        rest = [u for u in pool if u.kb not in chosen]
        chosen.update(u.kb for u in rng.sample(rest, rng.randint(1, min(4, len(rest)))))
        picked.extend(u for u in pool if u.kb in chosen)
    return tuple(picked)


def demo_fleet_specs() -> list[SimServerSpec]:
    """A dozen servers for `patchaas demo`: every scenario at least once, NORMAL three times."""
    scenarios = {Scenario.NORMAL: 3, **{scenario: 1 for scenario in _OTHER_SCENARIOS}}
    return build_fleet_specs(seed=2016, count=sum(scenarios.values()), scenarios=scenarios)
