"""Commands: what the current state wants done (orders), one per step; `command_for` (machine.py) picks it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain.execution import (
    Outcome,
)

# --- commands: what the current state wants done (orders) -------------------------------------


@dataclass(frozen=True)
class InspectServer:
    """Read the server's status (power, maintenance, pending reboot)."""


@dataclass(frozen=True)
class PowerOn:
    """Start the stopped server."""

    key: str


@dataclass(frozen=True)
class PollServer:
    """Read the server's status while waiting for it to boot."""


@dataclass(frozen=True)
class CheckSettled:
    """Read whether the server, back from a reboot, has finished servicing (read-only: no intent, no key)."""


@dataclass(frozen=True)
class RunHealthChecks:
    """Run one attempt of each health check still due in `phase` (read-only; each attempt's intent is recorded in
    `health_checks` first, its result with the transition): `due` is (check name, attempt number)."""

    phase: str
    cycle: int
    key: str
    due: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class SetMaintenance:
    """Turn maintenance mode on or off, unless it already is."""

    on: bool
    key: str


@dataclass(frozen=True)
class InvokeUpdatePackage:
    """Start cycle `cycle` of the update package, skipping quarantined KBs; tell it when the engine stops waiting
    for the cycle (`deadline`: no install starts too close to it) and how often to send heartbeats."""

    cycle: int
    key: str
    exclude_kbs: tuple[str, ...]
    deadline: datetime | None = None
    heartbeat_seconds: int = 0


@dataclass(frozen=True)
class FetchCycleResult:
    """Read the report of the running cycle."""

    key: str


@dataclass(frozen=True)
class RebootServer:
    """Reboot the server (intent recorded first: the boot id seen before)."""

    key: str


@dataclass(frozen=True)
class PowerOff:
    """Stop the server again (it was stopped before the run)."""

    key: str


@dataclass(frozen=True)
class RunHooks:
    """Run the next hook of `point` (for `cycle`) that has no outcome yet; `key` prefixes each hook's idempotency
    key (`<key>:<hook name>`): the engine records a hook run's intent before it calls out (engine/hook_runs.py)."""

    point: str
    cycle: int
    key: str


@dataclass(frozen=True)
class Abandon:
    """No I/O: leave the normal path (cancelled, deadline passed, too many attempts)."""

    outcome: Outcome
    reason: str


Command = (
    InspectServer
    | PowerOn
    | PollServer
    | CheckSettled
    | RunHealthChecks
    | SetMaintenance
    | InvokeUpdatePackage
    | FetchCycleResult
    | RebootServer
    | PowerOff
    | RunHooks
    | Abandon
)
