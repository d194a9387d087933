"""Status ids and queue statuses: pure translations of execution ids and machine states."""

from __future__ import annotations

import pytest

from orchestrator.domain import machine, naming
from orchestrator.entrypoints.rest import statuses
from orchestrator.entrypoints.rest.statuses import QueueStatus


def test_a_status_id_is_the_execution_id_lower_cased() -> None:
    assert statuses.status_id_of("VA1-132457") == "va1-132457"


def test_a_status_id_leads_back_to_its_execution() -> None:
    for execution_id in ("VA1-132457", "WA1-100000", "GB3-999999"):
        assert statuses.execution_id_of(statuses.status_id_of(execution_id)) == execution_id


@pytest.mark.parametrize("status_id", ["va1-12345", "va1-1234567", "va1132457", "", "va1-13245x"])
def test_a_status_id_that_cannot_be_ours_is_refused(status_id: str) -> None:
    with pytest.raises(naming.NamingError):
        statuses.execution_id_of(status_id)


def test_a_requested_execution_has_not_started() -> None:
    assert statuses.queue_status_of(machine.State.REQUESTED) is QueueStatus.NOT_STARTED


def test_a_completed_execution_succeeded() -> None:
    assert statuses.queue_status_of(machine.State.COMPLETED) is QueueStatus.SUCCEEDED


@pytest.mark.parametrize("state", [machine.State.FAILED, machine.State.CANCELLED])
def test_failed_and_cancelled_executions_failed(state: machine.State) -> None:
    assert statuses.queue_status_of(state) is QueueStatus.FAILED


def test_every_other_state_is_executing() -> None:
    others = set(machine.State) - machine.TERMINAL - {machine.State.REQUESTED}
    assert others and {statuses.queue_status_of(s) for s in others} == {QueueStatus.EXECUTING}


def test_queue_statuses_are_the_clc_words() -> None:
    assert [s.value for s in QueueStatus] == ["notStarted", "executing", "succeeded", "failed"]
