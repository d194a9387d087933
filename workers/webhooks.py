"""The senders behind the `WebhookSender` port: httpx with timeouts (one pooled client per process), and one
in memory (tests, runs without receivers); and the same two behind `HttpCaller`, for HTTP hooks.

The httpx sender never follows redirects (a 3xx is a failure: a receiver that moved gets a new URL), reads no
response body, and by default refuses receivers on loopback, private, link-local or otherwise reserved
addresses, so a subscription cannot make the workers call into their own network
(PATCHAAS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true for tests and private deployments). The address check is made
when the request is sent, on every address the name resolves to.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from orchestrator.ports import HttpAnswer


class BlockedAddress(Exception):
    """The receiver's host resolves to an address webhooks may not reach."""


def check_public(host: str, port: int) -> None:
    """Raise BlockedAddress if `host` is, or resolves to, a non-public address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BlockedAddress(f"cannot resolve {host}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise BlockedAddress(f"{host} resolves to {address}, a non-public address: webhooks may not call it "
                                 "(PATCHAAS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES)")


class HttpxWebhookSender:
    """POSTs over HTTP(S) with connect and read timeouts."""

    def __init__(self, timeout: float = 10.0, connect_timeout: float = 5.0, allow_private: bool = False) -> None:
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.allow_private = allow_private
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        if self._client is None:  # made on first use: after a prefork worker forked
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False,
                                                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8))
        return self._client

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://…")
        if not self.allow_private:
            check_public(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        with self._http().stream("POST", url, content=body, headers=dict(headers)) as answer:
            return answer.status_code  # the body is not read: receivers answer what they like

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclass(frozen=True)
class Sent:
    url: str
    body: bytes
    headers: Mapping[str, str]


class MemoryWebhookSender:
    """Keeps what it was asked to send (`sent`) and answers `status` (or what `answer(url)` says)."""

    def __init__(self, status: int = 204, answer: Callable[[str], int] | None = None) -> None:
        self.sent: list[Sent] = []
        self.status = status
        self.answer = answer
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        with self._lock:
            self.sent.append(Sent(url, body, dict(headers)))
        return self.answer(url) if self.answer is not None else self.status


class HttpxHookCaller:
    """HTTP hooks (orchestrator/engine/hook_runs.py) over httpx: the hook's method, headers and body, its own timeout,
    no redirects, the first 4,000 characters of the answer kept; the same address rule as webhooks."""

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        if self._client is None:  # made on first use: after a prefork worker forked
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(follow_redirects=False, trust_env=False,
                                                limits=httpx.Limits(max_connections=16, max_keepalive_connections=4))
        return self._client

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                timeout: float) -> HttpAnswer:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://…")
        if not self.allow_private:
            check_public(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        with self._http().stream(method, url, content=body, headers=dict(headers),
                                 timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))) as answer:
            text = b""
            for chunk in answer.iter_bytes():
                text += chunk
                if len(text) >= 4000:
                    break
            return HttpAnswer(answer.status_code, text[:4000].decode("utf-8", "replace"))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclass(frozen=True)
class Called:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


class MemoryHookCaller:
    """Keeps the HTTP hook requests it was asked to make (`calls`) and answers `status` (or `answer(url)`)."""

    def __init__(self, status: int = 200, answer: Callable[[str], HttpAnswer] | None = None) -> None:
        self.calls: list[Called] = []
        self.status = status
        self.answer = answer
        self._lock = threading.Lock()

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                timeout: float) -> HttpAnswer:
        with self._lock:
            self.calls.append(Called(method, url, dict(headers), body))
        return self.answer(url) if self.answer is not None else HttpAnswer(self.status, "")
