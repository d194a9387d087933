"""The Windows update package (workers/fleet/packages/windows-update.ps1), tested as far as this Linux
machine allows. No PowerShell runtime installs from the registries we reach (PyPI, Debian, npm), so the
script is never *run* here. What is proven:

- it parses: tree-sitter's PowerShell grammar (an independent grammar, not Microsoft's parser) finds no
  syntax error, and does find one in a broken copy;
- the report-building functions build exactly the fields of CycleReport / UpdateResult, in order, and the
  script takes a parameter for each patchaas.* package parameter the clc driver sends;
- a report of the shape those functions build (the sample kept beside the script, with WUA's signed
  HRESULTs) validates against the model and the exported JSON Schema, which is up to date.

What is not proven: the WUA COM calls, the scheduled task, ConvertTo-Json's output on Windows PowerShell.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import jsonschema_rs
import pytest
import tree_sitter
import tree_sitter_powershell

from schemas.fleet import CycleReport, CycleState, ResultCode, UpdateResult
from workers.fleet import clc_wire

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "workers" / "fleet" / "packages" / "windows-update.ps1"
SAMPLE = ROOT / "workers" / "fleet" / "packages" / "windows-update.sample-report.json"
SCHEMA = ROOT / "schemas" / "cycle_report.schema.json"


def cycle_report_schema() -> dict[str, object]:
    """The JSON Schema of CycleReport, as schemas/cycle_report.schema.json holds it.
    Regenerate the file with: PATCHAAS_WRITE_SCHEMAS=1 pytest tests/unit/test_windows_update_package.py"""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **CycleReport.model_json_schema()}


def parse(source: bytes) -> tree_sitter.Tree:
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    return parser.parse(source)


def nodes(node: tree_sitter.Node, kind: str) -> Iterator[tree_sitter.Node]:
    if node.type == kind:
        yield node
    for child in node.children:
        yield from nodes(child, kind)


def text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode()


def function(tree: tree_sitter.Tree, name: str) -> tree_sitter.Node:
    for statement in nodes(tree.root_node, "function_statement"):
        if any(text(n) == name for n in nodes(statement, "function_name")):
            return statement
    raise AssertionError(f"no function {name} in {SCRIPT.name}")


def hash_keys(node: tree_sitter.Node) -> list[str]:
    """The keys of the (single) hash literal a report-building function returns, in order."""
    (literal,) = [n for n in nodes(node, "hash_literal_expression")]
    return [text(entry.children[0]) for entry in nodes(literal, "hash_entry")]


@pytest.fixture(scope="module")
def script() -> tree_sitter.Tree:
    return parse(SCRIPT.read_bytes())


def syntax_errors(tree: tree_sitter.Tree) -> list[str]:
    found: list[str] = []

    def visit(node: tree_sitter.Node) -> None:
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            found.append(f"{line + 1}:{column + 1}: {text(node)[:60]!r}")
        for child in node.children:
            visit(child)

    visit(tree.root_node)
    return found


def test_the_script_parses(script: tree_sitter.Tree) -> None:
    assert syntax_errors(script) == []


def test_the_parser_would_see_a_broken_script() -> None:
    broken = SCRIPT.read_bytes().replace(b"function New-CycleReport {", b"function New-CycleReport {{ (", 1)
    assert syntax_errors(parse(broken))


def test_the_update_result_block_builds_exactly_the_schemas_fields(script: tree_sitter.Tree) -> None:
    assert hash_keys(function(script, "New-UpdateResult")) == list(UpdateResult.model_fields)


def test_the_cycle_report_block_builds_exactly_the_schemas_fields(script: tree_sitter.Tree) -> None:
    report = function(script, "New-CycleReport")
    assert hash_keys(report) == list(CycleReport.model_fields)
    (state,) = [e for e in nodes(report, "hash_entry") if text(e.children[0]) == "state"]
    assert f"'{CycleState.FINISHED.value}'" in text(state)


def test_the_script_takes_every_package_parameter_the_driver_sends(script: tree_sitter.Tree) -> None:
    (top,) = [block for block in script.root_node.children if block.type == "param_block"]
    declared = {text(v).removeprefix("$").lower() for v in nodes(top, "variable") if text(v) not in ("$true", "$false")}
    sent = [
        clc_wire.PARAM_EXECUTION_ID,
        clc_wire.PARAM_CYCLE,
        clc_wire.PARAM_EXCLUDE_KBS,
        clc_wire.PARAM_IDEMPOTENCY_KEY,
        clc_wire.PARAM_REPORT_URL,
        clc_wire.PARAM_REPORT_TOKEN,
    ]
    assert {name.removeprefix("patchaas.").lower() for name in sent} <= declared


def test_the_script_uses_the_wua_chain_and_system_task_it_documents(script: tree_sitter.Tree) -> None:
    strings = {text(n).strip("'\"") for n in nodes(script.root_node, "expandable_string_literal")}
    strings |= {text(n).strip("'\"") for n in nodes(script.root_node, "verbatim_string_characters")}
    for expected in (
        "IsInstalled=0 and Type='Software' and IsHidden=0",
        "Microsoft.Update.Session",
        "Microsoft.Update.SystemInfo",
        "NT AUTHORITY\\SYSTEM",
    ):
        assert expected in strings, expected


def test_the_sample_report_has_the_scripts_keys(script: tree_sitter.Tree) -> None:
    sample = json.loads(SAMPLE.read_text())
    assert list(sample) == hash_keys(function(script, "New-CycleReport"))
    for update in sample["updates"]:
        assert list(update) == hash_keys(function(script, "New-UpdateResult"))


def test_the_sample_report_validates_against_the_model() -> None:
    report = CycleReport.model_validate_json(SAMPLE.read_text())
    assert report.state is CycleState.FINISHED and report.result_code is ResultCode.SUCCEEDED_WITH_ERRORS
    failed = [u for u in report.updates if u.result_code is ResultCode.FAILED]
    assert [hex(u.hresult) for u in failed] == ["0x80070643"]  # WUA's signed HRESULT, stored unsigned


def test_the_sample_report_validates_against_the_json_schema() -> None:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    validator.validate(json.loads(SAMPLE.read_text()))


def test_the_json_schema_rejects_a_report_without_a_key() -> None:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    sample = json.loads(SAMPLE.read_text())
    del sample["key"]
    assert not validator.is_valid(sample)


def test_the_json_schema_file_is_up_to_date() -> None:
    expected = json.dumps(cycle_report_schema(), indent=2) + "\n"
    if os.environ.get("PATCHAAS_WRITE_SCHEMAS") == "1":
        SCHEMA.write_text(expected)
    assert SCHEMA.read_text() == expected, "regenerate: PATCHAAS_WRITE_SCHEMAS=1 pytest " + __file__


def test_the_script_applies_the_patch_baseline_rules_of_the_selection(script: tree_sitter.Tree) -> None:
    """approveAfterDays and severities (and includeKbs, which exempts from both) reach the script as parameters,
    travel to the SYSTEM worker, and are checked against each found update's release date and MSRC severity."""
    (top,) = [block for block in script.root_node.children if block.type == "param_block"]
    declared = {text(v).removeprefix("$").lower() for v in nodes(top, "variable")}
    assert {"approveafterdays", "severities", "includekbs", "classifications"} <= declared
    read = [text(v).lower() for v in nodes(script.root_node, "variable") if not _within(v, top)]
    assert "$approveafterdays" in read and "$severities" in read and "$includekbs" in read
    on_update = {
        text(access.children[-1])
        for access in nodes(script.root_node, "member_access")
        if text(access.children[0]).lower() == "$update"
    }
    assert {"LastDeploymentChangeTime", "MsrcSeverity"} <= on_update
    selected = function(script, "Test-UpdateSelected")
    calls = {text(n) for n in nodes(selected, "command_name")}
    assert {"Get-UpdateSeverity", "Get-UpdateReleaseDate"} <= calls
    assert "Test-UpdateSelected" in {text(n) for n in nodes(function(script, "Invoke-UpdateCycle"), "command_name")}


def _within(node: tree_sitter.Node, ancestor: tree_sitter.Node) -> bool:
    return ancestor.start_byte <= node.start_byte and node.end_byte <= ancestor.end_byte
