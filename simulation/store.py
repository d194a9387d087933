"""Where a simulated fleet keeps its state: the `FleetStore` protocol and its one-transaction-per-server
`StoreSession`; `MemoryStore` for one process, `SqlStore` when several processes (the workers of an
end-to-end test) must share one fleet."""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from orchestrator.persistence.db import ping_when_idle
from orchestrator.ports import FleetRefused
from simulation.records import Document, Effect, EffectKind


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
    def many(self, servers: Sequence[str], ops: Sequence[tuple[str, str, str]] = ()
             ) -> Iterator[dict[str, StoreSession]]:
        """`session` for many servers at once (the known ones), in one critical section (every operation can
        be looked up: `ops` is for SqlStore's one read); what the sessions record is kept."""
        with self._lock:
            sessions = {
                name: StoreSession(self._specs[name], _copy(self._states[name]),
                                   lambda kind, key, name=name: self._ops.get((name, kind, key)))  # type: ignore[misc]
                for name in sorted(set(servers)) if name in self._specs
            }
            yield sessions
            for name, session in sessions.items():
                self._states[name] = session.state
                for (kind, key), doc in session.new_ops.items():
                    self._ops[(name, kind, key)] = doc
                self._effects.extend(session.new_effects)

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
        named in `ops` (server, kind, key) can be looked up, read in one statement; the operations and
        effects the sessions record (the bulk effects of simulation/bulk_effects.py; the bulk reads record
        none) are written in one statement each."""
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
            if changed and conn.dialect.name == "postgresql":  # one statement (executemany is one per row)
                conn.execute(sa.text(
                    f"UPDATE {self.servers.name} AS s SET state = v.state FROM jsonb_to_recordset(CAST(:rows AS "
                    "jsonb)) AS v(b_name text, state text) WHERE s.name = v.b_name"), {"rows": json.dumps(changed)})
            elif changed:
                conn.execute(
                    sa.update(self.servers).where(self.servers.c.name == sa.bindparam("b_name"))
                    .values(state=sa.bindparam("state")),
                    changed,
                )
            new_ops = [{"server": name, "kind": kind, "key": key, "doc": json.dumps(doc)}
                       for name, session in sessions.items() for (kind, key), doc in session.new_ops.items()]
            if new_ops:
                conn.execute(sa.insert(self.ops), new_ops)
            new_effects = [{"server": e.server, "kind": e.kind.value, "key": e.key, "kb": e.kb, "at": e.at}
                           for session in sessions.values() for e in session.new_effects]
            if new_effects:
                conn.execute(sa.insert(self.effects_table), new_effects)

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
        # and the same ping of idle connections only as the orchestrator's own pool (orchestrator/persistence/db.py)
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
