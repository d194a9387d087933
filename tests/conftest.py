"""Shared fixtures. Tests that need PostgreSQL or Redis fail (never skip) when the service is down:
`make test` starts both, and a silently skipped durability test is worse than a red one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from orchestrator.persistence import migrate, models
from simulation.mailsink import MailSink

PG_ADMIN_URL = os.environ.get("PATCHAAS_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PATCHAAS_TEST_REDIS", "redis://127.0.0.1:6379")
# Under pytest-xdist each worker process (gw0, gw1, …) takes a Redis database of its own, counting down from
# PATCHAAS_TEST_REDIS_DB; its PostgreSQL database is named after its pid (`pg_url`).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
REDIS_DB = int(os.environ.get("PATCHAAS_TEST_REDIS_DB", "15")) - int(_WORKER.removeprefix("gw") or 0)


def _pg_database_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    name = f"patchaas_test_{os.getpid()}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (`make test` starts it): {exc}")
    url = _pg_database_url(name)
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


def truncate_all(url: str) -> None:
    """Empty every table of the schema (and the simulator's tables, if any)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = [t.name for t in models.Base.metadata.sorted_tables]
        sim = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'sim_%'")
        ).scalars().all()
        conn.exec_driver_sql(f"TRUNCATE {', '.join(names + list(sim))} RESTART IDENTITY CASCADE")
    engine.dispose()


@pytest.fixture
def pg(pg_url: str) -> str:
    """The session database, emptied before the test."""
    truncate_all(pg_url)
    return pg_url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of our own (PATCHAAS_TEST_REDIS_DB, default 15), flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{REDIS_DB}")
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (run `make test`, which starts it): {exc}")
    yield f"{REDIS_URL}/{REDIS_DB}"
    client.flushdb()
    client.close()


@pytest.fixture
def mail_sink() -> Iterator[MailSink]:
    """A real SMTP server (aiosmtpd) on loopback."""
    with MailSink() as sink:
        yield sink
