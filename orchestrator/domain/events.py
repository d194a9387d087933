"""Events (facts: what happened when a command ran) and the decision `decide` (machine.py) makes of one:
the next view and the records the persistence layer writes with the transition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain.execution import (
    ExecutionView,
    Outcome,
)
from schemas.fleet import CycleReport, ServerStatus

# --- events: what happened (facts) -------------------------------------------------------------


@dataclass(frozen=True)
class ServerInspected:
    """The server's status was read."""

    status: ServerStatus


@dataclass(frozen=True)
class PowerOnRequested:
    """The control plane accepted (or had already done) the power-on."""


@dataclass(frozen=True)
class MaintenanceSet:
    """Maintenance mode is now `on`."""

    on: bool


@dataclass(frozen=True)
class PackageInvoked:
    """The cycle is running on the server."""


@dataclass(frozen=True)
class CycleReported:
    """The package's report for the current cycle (running or finished)."""

    report: CycleReport


@dataclass(frozen=True)
class RebootRequested:
    """The reboot was asked for; the server had `boot_id_before` until then."""

    boot_id_before: str


@dataclass(frozen=True)
class PowerOffRequested:
    """The server is stopped again."""


@dataclass(frozen=True)
class Abandoned:
    """The run leaves the normal path with `outcome` for `reason`."""

    outcome: Outcome
    reason: str


Event = (
    ServerInspected
    | PowerOnRequested
    | MaintenanceSet
    | PackageInvoked
    | CycleReported
    | RebootRequested
    | PowerOffRequested
    | Abandoned
)


# --- records the decision asks the persistence layer to write -------------------------------


@dataclass(frozen=True)
class PatchRecord:
    """One update attempted in one cycle."""

    kb: str
    title: str
    url: str
    classification: str
    result_code: int
    hresult: int
    reboot_required: bool
    status: str  # completed | failed
    begin_message: str
    end_message: str
    from_version: str | None = None  # Linux packages: the version before the cycle
    to_version: str | None = None  # … and the one offered / installed
    output: str | None = None  # the package manager's output when the install failed


@dataclass(frozen=True)
class InitiationRecord:
    """One cycle of the update package ("initiation" in the original service)."""

    cycle: int
    started_at: datetime
    ended_at: datetime
    begin_message: str
    end_message: str
    updates_found: int
    reboot_required: bool
    result_code: int
    hresult: int
    patches: tuple[PatchRecord, ...]


@dataclass(frozen=True)
class Decision:
    """The next view of the execution, when to act on it, and what to record with the transition."""

    view: ExecutionView
    next_run_at: datetime | None
    note: str
    initiation: InitiationRecord | None = None
    emails: tuple[str, ...] = ()


class TransitionError(Exception):
    """An event arrived that the current state cannot take: a bug, never a normal path."""
