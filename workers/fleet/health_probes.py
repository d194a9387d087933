"""The health checks that run from the orchestrator (ports.HealthProber, docs/HOOKS.md "Health checks"): an HTTP(S)
GET over httpx, a TCP connect over a socket. Unlike webhooks and HTTP hooks, private and loopback addresses are
allowed: a health check looks at the operator's own servers."""

from __future__ import annotations

import socket
import threading

import httpx

from orchestrator.ports import HttpAnswer

MAX_BODY = 65536  # bytes of the body read for the regex


class HttpxProber:
    """One httpx client (made on first use: after a prefork worker forked), no redirects, no proxies from env."""

    def __init__(self, verify: bool = True) -> None:
        self.verify = verify
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(follow_redirects=False, trust_env=False, verify=self.verify,
                                                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8))
        return self._client

    def http(self, url: str, timeout: float) -> HttpAnswer:
        with self._http().stream("GET", url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                 headers={"User-Agent": "patchaas-health-check"}) as answer:
            body = b""
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) >= MAX_BODY:
                    break
            return HttpAnswer(answer.status_code, body[:MAX_BODY].decode("utf-8", "replace"))

    def tcp(self, host: str, port: int, timeout: float) -> None:
        with socket.create_connection((host, port), timeout=timeout):
            return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
