"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives: the demo shows the emails it
got, and the tests assert on them."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.sink.lock:
            self.sink.messages.append(message)
        return "250 Message accepted for delivery"


class MailSink:
    """SMTP on 127.0.0.1:<port>; `messages` holds every email received, `url` is for PATCHAAS_SMTP_URL."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname=host, port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> MailSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def by_kind(self, execution_id: str) -> dict[str, int]:
        """How many distinct emails (by Message-ID) of each kind an execution got."""
        with self.lock:
            ids = {
                (m["X-Patchaas-Kind"], m["Message-ID"]) for m in self.messages
                if m["X-Patchaas-Execution"] == execution_id
            }
        counts: dict[str, int] = {}
        for kind, _ in ids:
            counts[kind] = counts.get(kind, 0) + 1
        return counts
