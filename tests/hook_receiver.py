"""A real HTTP hook receiver on loopback (http.server in a thread): it answers 401 unless the request carries the
expected `Authorization` header (the hook's secret header), records every request (method, path, headers, body),
and answers `status` otherwise."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    authorized: bool

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


class HookReceiver:
    """Any method on any path: check the Authorization header, record, answer."""

    def __init__(self, authorization: str) -> None:
        self.authorization = authorization
        self.status = 200
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> HookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                authorized = headers.get("authorization") == receiver.authorization
                with receiver._lock:
                    receiver.calls.append(Call(self.command, self.path, headers, body, authorized))
                    status = receiver.status if authorized else 401
                answer = b'{"ok": true}' if status < 300 else b'{"error": "refused"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _any  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="hook-receiver").start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def got(self) -> list[Call]:
        with self._lock:
            return list(self.calls)
