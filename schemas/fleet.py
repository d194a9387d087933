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

    @field_validator("hresult", mode="before")
    @classmethod
    def _hresult(cls, value: int | str | None, info: ValidationInfo) -> int:
        return _hresult_of(value, info)
