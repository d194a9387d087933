"""The simulated CLC control plane's bookkeeping, in this process: its users and their bearer tokens, the
queued server operations and their statuses, and idempotency (a request carrying an `Idempotency-Key`
performs its effect once per (operation, server, key) and answers the same status id again). The fleet's
own state (servers, effects, package runs) lives in the fleet's store."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orchestrator.ports import FleetError, FleetRefused
from schemas.fleet import CycleState
from simulation.clc_answers import CLC_NOT_QUEUED, datacenter
from simulation.fleet import SimulatedFleet
from workers.fleet import clc_wire

DEFAULT_TOKEN_TTL = 14 * 24 * 3600.0  # CLC: a token lives up to 2 weeks


@dataclass(frozen=True)
class SimUser:
    """A control-plane user: the login answers its account and location aliases."""

    username: str
    password: str
    account_alias: str = "OSD"
    location_alias: str = "VA1"
    roles: tuple[str, ...] = ("ServerAdmin", "AccountAdmin")


def users_from(pairs: Mapping[str, str], alias: str, location: str = "VA1") -> list[SimUser]:
    """Users of account `alias` from username -> password."""
    return [SimUser(name, password, alias.upper(), location.upper()) for name, password in pairs.items()]


@dataclass(frozen=True)
class QueuedOperation:
    """One queued server operation, kept so its status can be answered (and its key recognised)."""

    status_id: str
    operation: str
    server: str
    key: str
    boot_id_before: str | None = None
    report_to: tuple[str, str] | None = None  # (report URL, token) given to the package: part 3 posts there


@dataclass(frozen=True)
class QueueEntry:
    """One server's entry in a queued operation's answer."""

    server: str
    operation: QueuedOperation | None = None
    reason: str | None = None
    retryable: bool = True

    def as_json(self, alias: str) -> dict[str, Any]:
        """CLC's shape: a status link when queued, an errorMessage (and our reason) when not."""
        if self.operation is not None:
            href = f"/v2/operations/{alias.lower()}/status/{self.operation.status_id}"
            return {
                "server": self.server,
                "isQueued": True,
                "links": [{"rel": "status", "href": href, "id": self.operation.status_id}],
            }
        return {
            "server": self.server,
            "isQueued": False,
            "errorMessage": CLC_NOT_QUEUED,
            clc_wire.EXTENSION: {"retryable": self.retryable, "reason": self.reason},
        }


class ControlPlane:
    """Tokens, queued operations and idempotency over a simulated fleet; thread-safe.

    Calls for one server are serialized by a per-server lock, so "was this key seen? if not, act and
    remember it" is atomic within this process (the only process serving the fleet over HTTP).
    """

    def __init__(
        self,
        fleet: SimulatedFleet,
        users: Iterable[SimUser],
        token_ttl_seconds: float = DEFAULT_TOKEN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.users = {user.username.lower(): user for user in users}
        self.token_ttl = token_ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[SimUser, float]] = {}
        self._operations: dict[str, QueuedOperation] = {}
        self._by_key: dict[tuple[str, str, str], str] = {}
        self._server_locks: dict[str, threading.Lock] = {}
        self._numbers = itertools.count(10_001)
        self.expired_tokens = 0  # tokens refused because their TTL ran out (GET /simulator/faults)

    # --- authentication ------------------------------------------------------------------------

    def login(self, username: str, password: str) -> tuple[SimUser, str] | None:
        """A new bearer token for good credentials; None otherwise."""
        user = self.users.get(username.lower())
        if user is None or not secrets.compare_digest(user.password, password):
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (user, self.clock() + self.token_ttl)
        return user, token

    def authenticate(self, token: str) -> SimUser | None:
        """The user of a live token; an expired token is forgotten."""
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            user, expires_at = found
            if self.clock() >= expires_at:
                del self._tokens[token]
                self.expired_tokens += 1
                return None
            return user

    # --- queued operations ---------------------------------------------------------------------

    def queue(
        self,
        operation: str,
        server: str,
        key: str | None,
        act: Callable[[str], QueuedOperation | None] | None = None,
    ) -> QueueEntry:
        """Do `operation` on `server` once per key: `act(key)` performs the effect (the default acts by
        operation name) and may return the record to keep; refusals become unqueued entries."""
        name = server.upper()
        key = key or f"sim-{uuid.uuid4().hex}"
        with self._locked(name):
            with self._lock:
                known = self._by_key.get((operation, name, key))
                if known is not None:
                    return QueueEntry(name, self._operations[known])
            try:
                record = (act or self._default_act(operation, name))(key)
            except FleetRefused as refused:
                return QueueEntry(name, reason=str(refused), retryable=False)
            except FleetError as error:
                return QueueEntry(name, reason=str(error), retryable=True)
            status_id = f"{datacenter(name).lower()}-{next(self._numbers)}"
            done = QueuedOperation(
                status_id=status_id,
                operation=operation,
                server=name,
                key=key,
                boot_id_before=record.boot_id_before if record else None,
                report_to=record.report_to if record else None,
            )
            with self._lock:
                self._operations[status_id] = done
                self._by_key[(operation, name, key)] = status_id
            return QueueEntry(name, done)

    def status(self, status_id: str) -> str | None:
        """CLC's queue status of an operation: succeeded once its effect is complete; None if unknown."""
        with self._lock:
            done = self._operations.get(status_id)
        if done is None:
            return None
        fleet = self.fleet
        try:
            match done.operation:
                case "powerOn":
                    return "succeeded" if fleet.status(done.server).up else "executing"
                case "reboot":
                    now = fleet.status(done.server)
                    back = now.up and now.boot_id != done.boot_id_before
                    return "succeeded" if back else "executing"
                case "executePackage":
                    report = fleet.cycle_result(done.server, done.key)
                    if report is None:
                        return "failed"
                    return "succeeded" if report.state is CycleState.FINISHED else "executing"
                case _:
                    return "succeeded"  # maintenance and power off are done when queued
        except FleetError:
            return "unknown"

    def _default_act(self, operation: str, server: str) -> Callable[[str], QueuedOperation | None]:
        fleet = self.fleet

        def act(key: str) -> QueuedOperation | None:
            match operation:
                case "startMaintenance":
                    fleet.set_maintenance(server, True, key)
                case "stopMaintenance":
                    fleet.set_maintenance(server, False, key)
                case "powerOn":
                    fleet.power_on(server, key)
                case "powerOff":
                    fleet.power_off(server, key)
                case "reboot":
                    before = fleet.status(server).boot_id
                    fleet.reboot(server, key)
                    return QueuedOperation("", operation, server, key, boot_id_before=before)
                case _:
                    raise ValueError(f"no default action for {operation}")
            return None

        return act

    @contextmanager
    def _locked(self, server: str) -> Iterator[None]:
        with self._lock:
            lock = self._server_locks.setdefault(server, threading.Lock())
        with lock:
            yield
