"""The patch summary and detail, field for field as the original REST service answered them, plus the
plain fields users asked for (counts, KB, result code, HRESULT, reboot flag)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ExecutionStatus = Literal["pending", "completed", "failed", "cancelled"]
PatchStatus = Literal["pending", "completed", "failed"]


class InitMessage(BaseModel):
    """One cycle ("initiation") of an execution in the summary."""

    start_time: datetime
    end_time: datetime | None
    init_begin_message: str
    init_end_message: str | None
    cycle: int
    updates_found: int
    reboot_required: bool


class ExecutionSummary(BaseModel):
    """One execution in a server's patch history."""

    execution_id: str
    status: ExecutionStatus
    start_time: datetime
    end_time: datetime | None
    init_messages: list[InitMessage]
    state: str = Field(description="the state machine's state (finer than status)")
    server: str


class PatchDetail(BaseModel):
    """One update attempted in one cycle."""

    start_time: datetime
    end_time: datetime | None
    patch_begin_message: str
    patch_end_message: str | None
    status: PatchStatus
    kb: str
    title: str
    url: str
    classification: str
    cycle: int
    result_code: int
    hresult: str = Field(description="HRESULT as 0x-prefixed hex")
    reboot_required: bool


class HookRunDetail(BaseModel):
    """One pre/post hook run of an execution (docs/HOOKS.md): at most one per (point, cycle, hook)."""

    name: str
    point: str
    cycle: int
    kind: str
    status: str = Field(description="running | ok | failed | unknown (an HTTP call interrupted: not re-sent)")
    on_failure: str
    exit_code: int | None = Field(description="the command's exit code, or the HTTP status")
    output: str | None
    attempts: int
    start_time: datetime
    end_time: datetime | None


class HealthCheckDetail(BaseModel):
    """One attempt of one health check of an execution (docs/HOOKS.md "Health checks")."""

    name: str
    kind: str = Field(description="http | tcp | service | command")
    target: str = Field(description="what it looks at, e.g. GET https://… → 200, tcp host:port, service W3SVC")
    phase: str = Field(description="baseline (before maintenance) | after_reboot | final (after the last cycle)")
    cycle: int
    attempt: int
    status: str = Field(description="running | ok | retrying (another attempt follows) | failed (no attempt left)")
    output: str | None
    start_time: datetime
    end_time: datetime | None


class ExecutionDetail(BaseModel):
    """One execution with every patch it attempted."""

    execution_id: str
    status: ExecutionStatus
    start_time: datetime
    end_time: datetime | None
    duration: str
    begin_message: str
    end_message: str | None
    patches: list[PatchDetail]
    server: str
    state: str
    cycles: int
    installed_count: int
    failed_count: int
    failure_reason: str | None
    quarantined: dict[str, str]
    cancelled_by: str | None = None
    cancel_reason: str | None = None
    hooks: list[HookRunDetail] = Field(default_factory=list, description="its pre/post hook runs, oldest first")
    health_checks: list[HealthCheckDetail] = Field(
        default_factory=list, description="every attempt of its health checks, oldest first")


class PackageRequest(BaseModel):
    """The `package` object of Execute Package: a package id and its parameters."""

    model_config = ConfigDict(populate_by_name=True)

    package_id: str = Field(alias="packageId", min_length=1, max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict)


class QueuedServer(BaseModel):
    """What an execute-package request did for one server."""

    server: str
    is_queued: bool
    execution_id: str | None = None
    error_message: str | None = None
