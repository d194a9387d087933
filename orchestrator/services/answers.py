"""The read side's caches and connections: the JSON answers of ended executions (`AnswerCache`), and the
AUTOCOMMIT pool the summary and detail reads use (`read_engine_for`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter

from orchestrator.persistence import db
from schemas.patching import ExecutionDetail, ExecutionSummary


class AnswerCache:
    """The JSON answers (summary item, detail) of ended executions, kept by this process.

    An ended execution never changes: the engine writes an execution only under its lease with a
    compare-and-set on `version`, and a claim requires `ended_at IS NULL`; its cycles and patches are
    inserted in the transaction of the step that recorded them; a cancel of an ended execution is refused
    (409) and reports for it are not taken. So the key is (kind, id, version, ended_at) and only ended
    executions are put: a running one is always read fresh, and any write that did reach an ended row
    would have bumped its version (a new key). Least recently used answers go first once the cache holds
    `max_bytes` (an answer larger than that is not kept)."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.size = 0  # bytes held
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return body

    def put(self, key: tuple[Any, ...], body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self._items[key] = body
            self.size += len(body)
            while self.size > self.max_bytes:
                _, gone = self._items.popitem(last=False)
                self.size -= len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0


def answer_key(kind: str, row: Any) -> tuple[Any, ...] | None:
    """The cache key of an execution's answer, None while it runs (never cached)."""
    if row.ended_at is None:
        return None
    return (kind, row.id, row.version, row.ended_at)


READ_POOL_SIZE = 10
READ_PING_AFTER_IDLE_SECONDS = 1.0


def read_engine_for(engine: Any) -> Any:
    """The engine of the REST read paths beside `engine` (PostgreSQL; elsewhere `engine` itself): its own
    pool of `READ_POOL_SIZE` connections, in AUTOCOMMIT from the start. A read there is its statements
    and nothing else: no BEGIN before the first one, no ROLLBACK when the connection goes back, and no
    isolation level switched per checkout (`execution_options(isolation_level=…)` on the shared pool cost as
    much as a statement under load: psycopg2 releases the GIL for each switch). No overflow, so no
    connection is opened and closed per burst. Statements are reported to `engine`'s cursor listeners too
    (statement counters, tracing), and disposing `engine` disposes it."""
    if engine.dialect.name != "postgresql":
        return engine
    reads = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=READ_POOL_SIZE, max_overflow=0)
    db.ping_when_idle(reads, READ_PING_AFTER_IDLE_SECONDS)

    @sa.event.listens_for(reads, "before_cursor_execute")
    def _before(*args: Any) -> None:
        engine.dispatch.before_cursor_execute(*args)

    @sa.event.listens_for(reads, "after_cursor_execute")
    def _after(*args: Any) -> None:
        engine.dispatch.after_cursor_execute(*args)

    @sa.event.listens_for(engine, "engine_disposed")
    def _disposed(_engine: Any) -> None:
        reads.dispose()

    return reads


SUMMARY_JSON = TypeAdapter(ExecutionSummary)
DETAIL_JSON = TypeAdapter(ExecutionDetail)
