"""A real webhook receiver on loopback (http.server in a thread) that verifies every request's signature as
docs/HOOKS.md tells operators to, and records what it got: the demo's receiver (it prints what it got) and the
tests'. It can answer an error (`status`) or go away entirely (`stop`, then `start` again on the same port)
to play an outage. `on_event` is called for every request whose signature verified."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from orchestrator.domain import webhooks


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    valid: bool  # the signature verified with the receiver's secret, within the tolerance

    @property
    def event_id(self) -> str:
        return self.headers.get(webhooks.EVENT_ID_HEADER.lower(), "")

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Receiver:
    """POST /hook: verify, record, answer `status` (200 unless told otherwise)."""

    def __init__(self, secret: str, now: Callable[[], float] = time.time, port: int = 0,
                 on_event: Callable[[Received], None] | None = None) -> None:
        self.secret = secret
        self.on_event = on_event
        self.now = now
        self.port = port
        self.status = 200
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: a broken connection, not a delivery
                    self.close_connection = True
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                valid = webhooks.verify(receiver.secret, body, headers.get("x-patchaas-signature", ""),
                                        now=int(receiver.now()))
                got = Received(headers, body, valid)
                with receiver._lock:
                    receiver.received.append(got)
                    status = receiver.status if valid else 400
                if valid and status < 300 and receiver.on_event is not None:
                    receiver.on_event(got)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver").start()
        return self

    def stop(self) -> None:
        """Go away: connections are refused until `start` again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def got(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def ids(self) -> Counter[str]:
        """How many copies of each event id were received with a valid signature."""
        return Counter(r.event_id for r in self.got() if r.valid)

    def kinds(self) -> list[str]:
        return [r.doc["kind"] for r in self.got() if r.valid]
