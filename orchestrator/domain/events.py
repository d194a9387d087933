"""Events (facts: what happened when a command ran) and the decision `decide` (machine.py) makes of one:
the next view and the records the persistence layer writes with the transition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain.execution import (
    ExecutionView,
    Outcome,
)
from schemas.fleet import CycleReport, ServerStatus, SettleStatus

# --- events: what happened (facts) -------------------------------------------------------------


@dataclass(frozen=True)
class ServerInspected:
    """The server's status was read."""

    status: ServerStatus


@dataclass(frozen=True)
class SettleChecked:
    """Whether the server back from a reboot has finished servicing was read."""

    status: SettleStatus


@dataclass(frozen=True)
class CheckResult:
    """One attempt of one health check, as the engine ran it."""

    name: str
    attempt: int
    ok: bool
    output: str
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True)
class HealthChecked:
    """The attempts of a RunHealthChecks command."""

    results: tuple[CheckResult, ...]


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


@dataclass(frozen=True)
class HookRan:
    """One hook of the current hook point ran (or had run before a crash): ok or not, whether its failure stops
    the run (its `onFailure`), what it said, and how many hooks of the point are still to run (hook_points.py)."""

    name: str
    ok: bool
    stops: bool
    detail: str
    remaining: int


Event = (
    ServerInspected
    | SettleChecked
    | HealthChecked
    | PowerOnRequested
    | MaintenanceSet
    | PackageInvoked
    | CycleReported
    | RebootRequested
    | PowerOffRequested
    | Abandoned
    | HookRan
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
class HealthRecord:
    """One health check attempt to record (`health_checks`, with the transition): `status` ok | failed (no attempt
    left: `health_check.failed` is emitted) | retrying (another attempt follows)."""

    phase: str
    cycle: int
    name: str
    kind: str
    target: str
    attempt: int
    status: str
    output: str
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True)
class Decision:
    """The next view of the execution, when to act on it, and what to record with the transition."""

    view: ExecutionView
    next_run_at: datetime | None
    note: str
    initiation: InitiationRecord | None = None
    emails: tuple[str, ...] = ()
    audit: bool = False  # record the note in the execution's history even though the state stays (settle waits)
    health: tuple[HealthRecord, ...] = ()  # health check attempts to record with the transition


class TransitionError(Exception):
    """An event arrived that the current state cannot take: a bug, never a normal path."""
