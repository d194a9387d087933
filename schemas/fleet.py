"""What the fleet tells the orchestrator: a server's status and one update cycle's report.

The cycle report is also the body the update package posts to the report channel, so it is the
contract between the orchestrator and whatever runs on the server (simulated or real PowerShell).
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator


class PowerState(StrEnum):
    """CLC's `details.powerState`."""

    STARTED = "started"  # running
    STOPPED = "stopped"  # powered off
    PAUSED = "paused"  # suspended


class ResultCode(IntEnum):
    """WUA `OperationResultCode`: only SUCCEEDED is clean success."""

    NOT_STARTED = 0
    IN_PROGRESS = 1
    SUCCEEDED = 2
    SUCCEEDED_WITH_ERRORS = 3
    FAILED = 4
    ABORTED = 5


def normalize_hresult(value: int | str | None) -> int:
    """Return an HRESULT as its unsigned 32-bit value, whether it arrived signed, unsigned or hex."""
    if value is None:
        return 0
    if isinstance(value, str):
        text = value.strip().lower()
        number = int(text, 16) if text.startswith(("0x", "-0x")) else int(text)
    else:
        number = int(value)
    if not -(2**31) <= number < 2**32:
        raise ValueError(f"HRESULT {value!r} is not a 32-bit value")
    return number & 0xFFFFFFFF


HRESULT_MIN, HRESULT_MAX = -(2**31), 2**32 - 1  # signed or unsigned 32-bit, as WUA and PowerShell write it
WIRE = "wire"
WIRE_CONTEXT = {WIRE: True}
"""Validation context of a report that arrived over the wire (the report channel, with `strict=True`): the
JSON Schema's rules exactly, so an HRESULT must be a JSON integer (in-process callers may pass hex strings)."""


def _hresult_of(value: int | str | None, info: ValidationInfo) -> int:
    wire = isinstance(info.context, dict) and bool(info.context.get(WIRE))
    if wire and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError("an HRESULT must be an integer")
    return normalize_hresult(value)


class ServerStatus(BaseModel):
    """A server as the control plane and the server itself report it right now."""

    model_config = ConfigDict(frozen=True)

    name: str
    os_type: str
    power_state: PowerState
    in_maintenance: bool
    up: bool = Field(description="booted and answering (not rebooting, not powered off)")
    boot_id: str = Field(description="changes at every boot; how we know a reboot happened")
    pending_reboot: bool = Field(description="WUA SystemInfo.RebootRequired")


class SettleStatus(BaseModel):
    """Whether a server back from a reboot has finished servicing (issue 14, `Fleet.settled`): up, with which
    boot id, and whether its servicing stack is idle. On Windows: no pending Component Based Servicing /
    TrustedInstaller operation ("configuring updates"); on Linux: `systemctl is-system-running` says running (or
    degraded, when the driver accepts it). The engine waits until it stays idle for the settle period."""

    model_config = ConfigDict(frozen=True)

    up: bool = Field(description="booted and answering")
    boot_id: str = Field(description="the boot id now: a change while settling restarts the settle period")
    idle: bool = Field(description="the servicing stack is idle (nothing configuring, every unit started)")
    reboot_required: bool = Field(default=False, description="WUA SystemInfo.RebootRequired (Windows) after the boot")
    detail: str = Field(default="", max_length=500, description="what the servicing stack is doing, in words")


class PackageRun(BaseModel):
    """What one invocation of the update package is asked to do (one cycle)."""

    model_config = ConfigDict(frozen=True)

    package_id: str
    execution_id: str
    cycle: int = Field(ge=1)
    exclude_kbs: tuple[str, ...] = ()
    parameters: dict[str, object] = Field(default_factory=dict)
    report_url: str | None = Field(default=None, description="where the package posts this cycle's report")
    report_token: SecretStr | None = Field(default=None, description="the bearer token of the report channel")
    deadline: datetime | None = Field(
        default=None, description="when the engine stops waiting for this cycle (its package timeout): the package "
                                  "starts no install too close to it (patchaas.deadline)",
    )
    heartbeat_seconds: int | None = Field(
        default=None, ge=0, le=3600, description="how often the package posts a running report (0: never; None: "
                                                 "the package's default)",
    )


GUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"


class UpdateResult(BaseModel):
    """One update found by the search and what its install did."""

    model_config = ConfigDict(frozen=True)

    kb: str = Field(pattern=r"^KB\d{6,8}$")
    title: str = Field(min_length=1, max_length=500)
    url: str = ""
    classification: str = "Security Updates"
    result_code: ResultCode
    hresult: int = Field(default=0, ge=HRESULT_MIN, le=HRESULT_MAX)
    reboot_required: bool = False
    update_id: str | None = Field(
        default=None, pattern=GUID_PATTERN,
        description="WUA IUpdate.Identity.UpdateID: with revision_number, what identifies the update (a KB can be "
                    "shared by several updates, or be re-released under a new revision)",
    )
    revision_number: int | None = Field(default=None, ge=0, description="WUA IUpdate.Identity.RevisionNumber")

    @field_validator("hresult", mode="before")
    @classmethod
    def _hresult(cls, value: int | str | None, info: ValidationInfo) -> int:
        return _hresult_of(value, info)

    @property
    def ident(self) -> str:
        """What identifies this update in the run's ledger (failures, loops, quarantine): its KB."""
        return str(self.kb)


class PackageUpdate(UpdateResult):
    """One Linux package (apt or dnf/yum) offered for upgrade and what its upgrade did.

    A subclass, so the Windows contract is untouched: `CycleReport.updates` still holds `UpdateResult`s
    (and its JSON Schema, which the PowerShell package writes, is unchanged); a Linux driver puts these
    in it. The package name, not a KB, identifies the update (`ident`); `kb` stays empty.
    """

    kb: str | None = None  # type: ignore[assignment]
    package: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9+._~@-]{0,99}$", description="apt/rpm package name")
    from_version: str | None = Field(default=None, max_length=100, description="installed before the cycle")
    to_version: str | None = Field(default=None, max_length=100, description="offered / installed after")
    output: str = Field(default="", description="the package manager's output when the upgrade failed")
    url: str = ""
    classification: str = "Package Upgrades"

    @property
    def ident(self) -> str:
        return self.package


class CycleState(StrEnum):
    """Where a cycle of the package is."""

    RUNNING = "running"  # search/download/install still going
    FINISHED = "finished"  # the report below is final


class BlockedBy(StrEnum):
    """Why a cycle stopped installing (CycleReport.blocked_by): the updates it did not attempt are in
    `remaining`, none of them is counted as failed."""

    REBOOT_PENDING = "reboot_pending"  # a reboot was pending before Install() (or Install() said 0x80240016)
    INSTALLER_BUSY = "installer_busy"  # IUpdateInstaller.IsBusy, or Install() said 0x80240024
    ANOTHER_RUN = "another_run"  # another execution holds the server's install lock
    DEADLINE = "deadline"  # too close to the cycle's deadline to start another install


class SkippedUpdate(BaseModel):
    """An update the search found and the cycle left alone, and why (excluded, not selected, optional, no KB)."""

    model_config = ConfigDict(frozen=True)

    update_id: str | None = Field(default=None, pattern=GUID_PATTERN, description="IUpdate.Identity.UpdateID")
    revision_number: int | None = Field(default=None, ge=0, description="IUpdate.Identity.RevisionNumber")
    kb: str | None = Field(default=None, pattern=r"^KB\d{6,8}$", description="None: the update has no KB article")
    title: str = Field(min_length=1, max_length=500)
    reason: str = Field(min_length=1, max_length=200)


class CycleReport(BaseModel):
    """One cycle of the update package: search + install, the batch result and one result per update."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="idempotency key of the invocation: <execution_id>:cycle:<n>")
    state: CycleState
    started_at: datetime
    finished_at: datetime | None = None
    updates: tuple[UpdateResult, ...] = ()
    result_code: ResultCode = ResultCode.SUCCEEDED
    hresult: int = Field(default=0, ge=HRESULT_MIN, le=HRESULT_MAX)
    reboot_required: bool = False
    excluded: tuple[str, ...] = Field(default=(), description="KBs found but skipped by request")
    blocked_by: BlockedBy | None = Field(
        default=None, description="set when the cycle stopped installing before it was done: why (see `remaining`)"
    )
    remaining: tuple[str, ...] = Field(
        default=(),
        description="KBs selected but not attempted this cycle (blocked, behind an update that must be installed "
                    "alone, or the deadline): the next cycle offers them again, so this is not 'nothing left'",
    )
    search_result_code: ResultCode | None = Field(
        default=None,
        description="WUA ISearchResult.ResultCode; anything but 2 means the update list is incomplete (3) or "
                    "absent (4, 5): never read it as 'nothing left'. None: the reporter does not say",
    )
    search_warnings: tuple[str, ...] = Field(
        default=(), max_length=50, description="ISearchResult.Warnings, as '0x<HRESULT>: message (context n)'"
    )
    skipped: tuple[SkippedUpdate, ...] = Field(
        default=(), description="every update found and left alone, with the reason (including those without a KB)"
    )
    phase: str | None = Field(
        default=None, max_length=200, description="a running (heartbeat) report: what the package is doing now"
    )
    error: str | None = Field(
        default=None, max_length=1000, description="why the cycle failed, in words, when the package knows"
    )

    @field_validator("hresult", mode="before")
    @classmethod
    def _hresult(cls, value: int | str | None, info: ValidationInfo) -> int:
        return _hresult_of(value, info)


class HeartbeatReport(CycleReport):
    """A running cycle that is known to be alive: the orchestrator heard its package's last heartbeat at
    `heard_at` (the report channel's clock, or the simulated fleet's). Not part of the wire contract: the package
    posts a CycleReport with `state: running`; the report channel (orchestrator/services/reports.py) answers this
    to the engine, which extends the cycle's deadline while heartbeats arrive (machine.py)."""

    heard_at: datetime
    beats: int = Field(default=1, ge=1, description="heartbeats heard for this cycle")
