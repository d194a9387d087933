"""REST bodies and answers: input rules, error messages, and the CLC shapes built from service values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.entrypoints.rest import bodies, clc_shapes, errors
from orchestrator.services import inventory
from schemas.patching import QueuedServer

PACKAGE = {"packageId": "94bd395f-9b54-4693-94ae-4f3aa93fc239"}


@pytest.mark.parametrize("server", ["VA1OSD\x00PATCH01", "\ud800", ""])
def test_server_names_that_no_column_or_answer_could_carry_are_refused(server: str) -> None:
    with pytest.raises(ValidationError):
        bodies.ExecutePackageRequest.model_validate({"servers": [server], "package": PACKAGE})


def test_group_ids_follow_the_clc_format() -> None:
    body = bodies.GroupExecuteRequest.model_validate({"groups": ["VA1-0001"], "package": PACKAGE})
    assert body.groups == ["VA1-0001"]
    with pytest.raises(ValidationError):
        bodies.GroupExecuteRequest.model_validate({"groups": ["group one"], "package": PACKAGE})


def test_a_cancel_reason_is_optional_and_bounded() -> None:
    assert bodies.CancelRequest.model_validate({}).reason is None
    with pytest.raises(ValidationError):
        bodies.CancelRequest.model_validate({"reason": "x" * 2001})


def test_validation_errors_become_one_sentence_naming_the_rule() -> None:
    message = errors.validation_message([
        {"loc": ("path", "serverId"), "type": "string_pattern_mismatch", "msg": "String should match pattern"},
        {"loc": ("query", "limit"), "type": "greater_than_equal", "msg": "Input should be >= 1"},
    ])
    assert message == ("path parameter serverId: must be a server name like VA1OSDPATCH33; "
                       "query parameter limit: Input should be >= 1")


def test_a_missing_or_broken_body_is_said_plainly() -> None:
    assert errors.validation_message([{"loc": ("body",), "type": "missing", "msg": "Field required"}]) == (
        "the request needs a JSON body")
    assert errors.validation_message([{"loc": ("body", 3), "type": "json_invalid", "msg": "JSON decode error"}]) == (
        "the body is not valid JSON")


def test_list_items_name_their_field_and_rule() -> None:
    message = errors.validation_message(
        [{"loc": ("body", "groups", 0), "type": "string_pattern_mismatch", "msg": "String should match"}])
    assert message == "body field groups.0: must be group ids like va1-0001"


def test_a_queued_server_gets_a_status_link_and_its_execution_id() -> None:
    queued = QueuedServer(server="VA1OSDPATCH01", is_queued=True, execution_id="VA1-132457")
    answer = bodies.queued_answer("OSD", queued)
    assert answer.model_dump(exclude_none=True) == {
        "server": "VA1OSDPATCH01", "isQueued": True, "executionId": "VA1-132457",
        "links": [{"rel": "status", "href": "/v2/operations/osd/status/va1-132457", "id": "va1-132457"}],
    }


def test_a_refused_server_gets_only_the_error_message() -> None:
    answer = bodies.queued_answer("OSD", QueuedServer(server="X", is_queued=False, error_message="no"))
    assert answer.model_dump(exclude_none=True) == {"server": "X", "isQueued": False, "errorMessage": "no"}


def test_a_server_links_to_its_group_its_summary_and_its_running_execution() -> None:
    info = inventory.ServerInfo("VA1OSDPATCH01", "OSD", "va1-0001", "VA1", "Windows 2012R2 Datacenter 64-bit",
                              "stopped", True, "VA1-132457")
    answer = clc_shapes.server_answer(info).model_dump()
    assert answer["details"]["inMaintenanceMode"] is True and answer["details"]["powerState"] == "stopped"
    assert answer["details"]["ipAddresses"] == []
    ours = [(link["rel"], link["href"]) for link in answer["links"]
            if link["rel"] in ("self", "group", "patchSummary", "patchExecution")]
    assert ours == [
        ("self", "/v2/servers/osd/VA1OSDPATCH01"),
        ("group", "/v2/groups/osd/va1-0001"),
        ("patchSummary", "/rest/servers/osd/server/VA1OSDPATCH01/patch"),
        ("patchExecution", "/rest/servers/osd/server/VA1OSDPATCH01/patch/VA1-132457"),
    ]


def test_a_group_nests_its_groups_in_full_and_links_each_server() -> None:
    leaf = inventory.GroupInfo("va1-0002", "child", "VA1", "va1-0001", ("VA1OSDPATCH02",), ())
    root = inventory.GroupInfo("va1-0001", "root", "VA1", None, ("VA1OSDPATCH01", "VA1OSDPATCH03"), (leaf,))
    answer = clc_shapes.group_answer("OSD", root).model_dump()
    assert answer["serversCount"] == 2 and answer["type"] == "default" and answer["status"] == "active"
    assert [link["id"] for link in answer["links"] if link["rel"] == "server"] == ["VA1OSDPATCH01", "VA1OSDPATCH03"]
    child = answer["groups"][0]
    assert child["id"] == "va1-0002" and child["serversCount"] == 1 and child["groups"] == []
    assert {"rel": "parentGroup", "href": "/v2/groups/osd/va1-0001", "id": "va1-0001"} in child["links"]
