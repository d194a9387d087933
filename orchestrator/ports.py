"""The one interface between the orchestrator and the cloud + its servers.

Every call that changes something takes an idempotency key (`<execution_id>:<step>:<cycle>`): a driver
whose far side accepts one passes it on; the orchestrator additionally checks the far side's state before
repeating an effect, so a retried step never does the work twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

from schemas.fleet import CycleReport, PackageRun, ServerStatus, SettleStatus
from schemas.hooks import CommandResult


class FleetError(Exception):
    """A transient failure talking to the fleet (timeout, 5xx, server busy): the step is retried."""


class FleetRefused(FleetError):
    """A permanent refusal (unknown server, unsupported OS): retrying cannot help; the run fails."""


class Fleet(Protocol):
    """What the orchestrator asks of the cloud and the servers."""

    def status(self, server: str) -> ServerStatus:
        """The server's power state, maintenance flag, boot id and whether a reboot is pending."""
        ...

    def set_maintenance(self, server: str, on: bool, key: str) -> None:
        """Turn maintenance mode on or off (control-plane flag; works while the server is down)."""
        ...

    def power_on(self, server: str, key: str) -> None:
        """Ask the control plane to start a stopped or paused server."""
        ...

    def power_off(self, server: str, key: str) -> None:
        """Ask the control plane to stop a server."""
        ...

    def reboot(self, server: str, key: str) -> None:
        """Reboot the server; its boot id changes when it is back."""
        ...

    def invoke_package(self, server: str, key: str, run: PackageRun) -> None:
        """Start one cycle of the update package (search + install). Idempotent per key."""
        ...

    def cycle_result(self, server: str, key: str) -> CycleReport | None:
        """The cycle started under `key`: None if the server never received it, else running or finished."""
        ...

    def settled(self, server: str) -> SettleStatus:
        """Whether the server, back from a reboot, has finished servicing (read-only; asked while settling). A
        driver without this method is read as `settled_by_status` (boot id only): engine/steps.py."""
        ...

    def run_command(self, server: str, key: str, command: str, timeout: float) -> CommandResult:
        """Run a hook's command on the server (PowerShell on Windows, sh on Linux) and wait for it, at most
        `timeout` seconds. Idempotent per key: a repeat with a key the far side knows answers that run's result
        instead of running it again. A driver without this method refuses command hooks (engine/hook_runs.py)."""
        ...


def settled_by_status(status: ServerStatus) -> SettleStatus:
    """What a driver that cannot see the servicing stack answers: idle as soon as the server is up."""
    return SettleStatus(up=status.up, boot_id=status.boot_id, idle=status.up, detail="" if status.up else "not up")


class Dispatcher(Protocol):
    """Hands ids to workers (Celery in production; a list in unit tests)."""

    def advance(self, execution_id: str, delay: float) -> None: ...

    def deliver(self, outbox_id: int) -> None: ...


class Hooks(Protocol):
    """Points between intent, effect and commit where chaos tests crash a worker on purpose."""

    def reached(self, point: str, execution_id: str, step: str) -> None: ...


class Mailer(Protocol):
    """Sends one email or raises."""

    def send(self, message: EmailMessage) -> None: ...


class WebhookSender(Protocol):
    """POSTs one webhook request (workers/webhooks.py: httpx with timeouts; an in-memory one for tests)."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The HTTP status the receiver answered; raises on a transport failure (refused, timeout, TLS)."""
        ...


@dataclass(frozen=True)
class HttpAnswer:
    """What an HTTP hook's receiver answered: the status and the start of the body."""

    status: int
    body: str = ""


class HttpCaller(Protocol):
    """Makes one HTTP hook request (workers/webhooks.py: httpx, no redirects; an in-memory one for tests)."""

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                timeout: float) -> HttpAnswer:
        """The receiver's answer; raises on a transport failure (refused, timeout, TLS, a blocked address)."""
        ...


class HealthProber(Protocol):
    """The health checks that run from the orchestrator (workers/fleet/health_probes.py: httpx and sockets)."""

    def http(self, url: str, timeout: float) -> HttpAnswer:
        """GET `url` (no redirects followed): the status and the start of the body; raises on a transport failure."""
        ...

    def tcp(self, host: str, port: int, timeout: float) -> None:
        """Open a TCP connection and close it; raises OSError when it cannot be opened within `timeout`."""
        ...


Clock = Callable[[], datetime]  # the time now, timezone-aware (tests pass a fake clock)
