"""HTML fragments of ended executions, kept by this process: a history row, a detail's patch table and
timeline. An ended execution never changes (see orchestrator/services/answers.py), and the service hands out
the same cached JSON bytes for it on every read, so those bytes are the key: a page of 50 ended executions
is 50 dictionary look-ups instead of 50 validations and renderings. Least recently used fragments go first
once `max_bytes` are held; running executions are never kept."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class Fragments:
    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[tuple[str, bytes], tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, kind: str, body: bytes) -> Any:
        with self._lock:
            found = self._items.get((kind, body))
            if found is None:
                return None
            self._items.move_to_end((kind, body))
            return found[0]

    def put(self, kind: str, body: bytes, value: Any, size: int) -> None:
        cost = size + len(body)
        if cost > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop((kind, body), None)
            if old is not None:
                self.size -= old[1]
            self._items[(kind, body)] = (value, cost)
            self.size += cost
            while self.size > self.max_bytes:
                _, (_, gone) = self._items.popitem(last=False)
                self.size -= gone

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0
