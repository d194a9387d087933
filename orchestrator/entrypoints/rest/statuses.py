"""CLC queue status ids and values, derived from our executions (pure; no table needed).

A status id is the execution id lower-cased: `VA1-132457` ↔ `va1-132457` — the CLC shape (lower-case
datacenter code, dash, number), and reversible, so the status call reads the execution itself.
"""

from __future__ import annotations

from enum import StrEnum

from orchestrator.domain import machine, naming


class QueueStatus(StrEnum):
    """The CLC queue status of a queued server operation."""

    NOT_STARTED = "notStarted"  # accepted and persisted; nothing done to the server yet
    EXECUTING = "executing"  # any other state before the end (maintenance, cycles, reboots, cleanup)
    SUCCEEDED = "succeeded"  # the execution completed
    FAILED = "failed"  # the execution failed or was cancelled


def status_id_of(execution_id: str) -> str:
    """The CLC status id of an execution: `VA1-132457` → `va1-132457`."""
    return naming.check_execution_id(execution_id).lower()


def execution_id_of(status_id: str) -> str:
    """The execution behind a status id: `va1-132457` → `VA1-132457`; NamingError if it cannot be ours."""
    return naming.check_execution_id(status_id)


def queue_status_of(state: machine.State) -> QueueStatus:
    """What the CLC status call answers for an execution in `state`."""
    if state is machine.State.REQUESTED:
        return QueueStatus.NOT_STARTED
    if state is machine.State.COMPLETED:
        return QueueStatus.SUCCEEDED
    if state in machine.TERMINAL:
        return QueueStatus.FAILED
    return QueueStatus.EXECUTING
