"""The mailers behind the `Mailer` port: SMTP to a relay, one connection per batch; in memory (tests, runs
without SMTP); and the one that refuses while no SMTP server is configured."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from urllib.parse import urlparse


class SmtpMailer:
    """Delivers over SMTP to `smtp://host:port` (no auth, no TLS: a relay on the private network)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("smtp", "") or not parsed.hostname:
            raise ValueError(f"SMTP URL {url!r} must look like smtp://host:port")
        self.host = parsed.hostname
        self.port = parsed.port or 25
        self.timeout = timeout

    def send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.send_message(message)

    @contextmanager
    def session(self) -> Iterator[Callable[[EmailMessage], None]]:
        """`send` for many messages over one SMTP connection (`handoff.deliver_many`): opened at the first
        send, dropped after any failure (the next send opens a new one), closed at the end. Each message is
        still sent, and fails, on its own."""
        smtp: smtplib.SMTP | None = None

        def send(message: EmailMessage) -> None:
            nonlocal smtp
            if smtp is None:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                smtp.send_message(message)
            except Exception:
                _close(smtp)
                smtp = None
                raise

        try:
            yield send
        finally:
            if smtp is not None:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    _close(smtp)


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.close()
    except OSError:
        pass


class MemoryMailer:
    """Keeps what it was asked to send (`sent`); for tests and for runs without SMTP."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self._lock = threading.Lock()

    def send(self, message: EmailMessage) -> None:
        with self._lock:
            self.sent.append(message)


class UnconfiguredMailer:
    """No SMTP configured: delivery fails with a clear reason and the row stays queued."""

    def send(self, message: EmailMessage) -> None:
        raise RuntimeError("no SMTP server configured (set PATCHAAS_SMTP_URL)")
