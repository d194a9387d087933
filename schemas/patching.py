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
