"""Engines and sessions. Nothing connects at import time: `create_engine_for(url)` is called by the
composition root (bootstrap) with the URL from settings."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on PostgreSQL and SQLite alike (SQLite forgets the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


def create_engine_for(url: str, ping_after_idle: float | None = None, **kwargs: Any) -> Engine:
    """An engine tuned for this service: pre-ping on PostgreSQL (of connections idle for `ping_after_idle`
    seconds when given, else on every checkout), WAL and a busy timeout on SQLite."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if ping_after_idle is None or "pool_pre_ping" in kwargs:
        kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 5)
    engine = sa.create_engine(url, **kwargs)
    if ping_after_idle is not None and not kwargs.get("pool_pre_ping"):
        ping_when_idle(engine, ping_after_idle)
    return engine


def ping_when_idle(engine: Engine, idle: float) -> None:
    """Pre-ping a pooled connection only when it has sat in the pool `idle` seconds or more (0: on every
    checkout, SQLAlchemy's `pool_pre_ping`). A connection in steady use is not pinged: under load that was
    one round trip per transaction (11% of a worker's time, and one per REST request). A dead connection
    that was used within `idle` fails its statement instead; the pool is then invalidated as a whole and
    the caller's retry (`Engine._tx`, the tasks' autoretry, a client after a 503) gets a fresh one."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["patchaas_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("patchaas_idle_since", None)
        if since is None or time.monotonic() - since < idle:
            return  # a new connection, or one returned a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise sa.exc.DisconnectionError(str(error)) from error
        if not alive:
            raise sa.exc.DisconnectionError("the pooled connection did not answer its ping")


def session_factory(engine: Engine) -> sessionmaker[Any]:
    """Sessions that keep loaded values readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)
