"""The Windows update package (workers/fleet/packages/windows-update.ps1), tested as far as this Linux
machine allows. No PowerShell runtime installs from the registries we reach (PyPI, Debian, npm), so the
script is never *run* here. What is proven, on tree-sitter's parse of the script (an independent grammar, not
Microsoft's parser):

- it parses, and the report-building functions build exactly the fields of CycleReport / UpdateResult /
  SkippedUpdate, in order; the sample report kept beside the script validates against the model and the
  exported JSON Schema, which is up to date;
- windows-update.manifest.json binds every parameter the engine sends (workers/fleet/clc.py and the selection
  fields of schemas/selection.py) to its own string parameter of the script, and lists every selection field
  as honoured or refused;
- the structure behind each hardening of issue 12: a scan never reaches the downloader or installer, the
  checks before Install() (pending reboot, busy installer, the server-wide lock), exclusive updates installed
  alone, the deadline and heartbeats, the search's ResultCode, the locked state folder, a report always
  posted, and the smaller ones (the script copy, 408/429 with Retry-After, update ids, skipped updates,
  AllowSourcePrompts, the update service, TLS 1.2).

What is not proven: the WUA COM calls, the scheduled task, ConvertTo-Json's output on Windows PowerShell.
tests/unit/workers/test_powershell_compat.py checks the script is PowerShell 3.0.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import tree_sitter
import tree_sitter_powershell
from pydantic import SecretStr

from schemas import selection
from schemas.fleet import BlockedBy, CycleReport, CycleState, PackageRun, ResultCode, SkippedUpdate, UpdateResult
from workers.fleet import clc, clc_wire

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ROOT / "workers" / "fleet" / "packages"
SCRIPT = PACKAGES / "windows-update.ps1"
MANIFEST = PACKAGES / "windows-update.manifest.json"
SAMPLE = PACKAGES / "windows-update.sample-report.json"
SCHEMA = ROOT / "schemas" / "cycle_report.schema.json"


def cycle_report_schema() -> dict[str, object]:
    """The JSON Schema of CycleReport, as schemas/cycle_report.schema.json holds it.
    Regenerate the file with: PATCHAAS_WRITE_SCHEMAS=1 pytest tests/unit/workers/test_windows_update_package.py"""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **CycleReport.model_json_schema()}


# --- reading the parse ---------------------------------------------------------------------------


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


def commands(node: tree_sitter.Node, name: str) -> list[tree_sitter.Node]:
    """The calls of command `name` (a cmdlet or one of the script's functions) under `node`."""
    return [c for c in nodes(node, "command")
            if any(n.type == "command_name" and text(n).lower() == name.lower() for n in c.children)]


def invocations(node: tree_sitter.Node, member: str) -> list[tree_sitter.Node]:
    """The method calls `.member(...)` under `node`."""
    return [i for i in nodes(node, "invokation_expression")
            if any(m.type == "member_name" and text(m).lower() == member.lower() for m in i.children)]


def members(node: tree_sitter.Node) -> set[str]:
    """Every property or method name accessed under `node`."""
    return {text(m) for m in nodes(node, "member_name")}


def strings(node: tree_sitter.Node) -> set[str]:
    found = {text(n).strip("'\"") for n in nodes(node, "expandable_string_literal")}
    return found | {text(n).strip("'\"") for n in nodes(node, "verbatim_string_characters")}


def within(node: tree_sitter.Node, ancestor: tree_sitter.Node) -> bool:
    return ancestor.start_byte <= node.start_byte and node.end_byte <= ancestor.end_byte


def ancestors(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    while node.parent is not None:
        node = node.parent
        yield node


def enclosing_function(node: tree_sitter.Node) -> str | None:
    for parent in ancestors(node):
        if parent.type == "function_statement":
            return next(text(n) for n in parent.children if n.type == "function_name")
    return None


def param_block(tree: tree_sitter.Tree) -> tree_sitter.Node:
    (top,) = [block for block in tree.root_node.children if block.type == "param_block"]
    return top


def script_parameters(tree: tree_sitter.Tree) -> dict[str, str]:
    """The script's parameters: lower-case name -> the declaration's text (attributes, type, default)."""
    declared: dict[str, str] = {}
    for parameter in nodes(param_block(tree), "script_parameter"):
        variable = next(n for n in parameter.children if n.type == "variable")
        declared[text(variable).removeprefix("$").lower()] = text(parameter)
    return declared


def assigned_value(tree: tree_sitter.Tree, variable: str) -> str:
    """The right-hand side of the top-level `$variable = ...` assignment."""
    for assignment in nodes(tree.root_node, "assignment_expression"):
        left = text(assignment.children[0]).strip()
        if left.lower() == variable.lower() and enclosing_function(assignment) is None:
            operator = next(i for i, c in enumerate(assignment.children) if c.type == "assignement_operator")
            return text(assignment.children[operator + 1]).strip()
    raise AssertionError(f"no assignment of {variable}")


def wire_constants() -> dict[str, str]:
    """The PARAM_* names of the driver's wire contract (in workers/fleet/clc.py, or clc_wire.py beside it)."""
    modules: list[Any] = [clc]
    try:
        modules.append(importlib.import_module("workers.fleet.clc_wire"))
    except ImportError:
        pass
    return {name: getattr(m, name) for m in modules for name in dir(m) if name.startswith("PARAM_")}


def signed(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


@pytest.fixture(scope="module")
def script() -> tree_sitter.Tree:
    return parse(SCRIPT.read_bytes())


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


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


# --- the script and its report ------------------------------------------------------------------------


def test_the_script_parses(script: tree_sitter.Tree) -> None:
    assert syntax_errors(script) == []


def test_the_parser_would_see_a_broken_script() -> None:
    broken = SCRIPT.read_bytes().replace(b"function New-CycleReport {", b"function New-CycleReport {{ (", 1)
    assert syntax_errors(parse(broken))


def test_the_update_result_block_builds_exactly_the_schemas_fields(script: tree_sitter.Tree) -> None:
    assert hash_keys(function(script, "New-UpdateResult")) == list(UpdateResult.model_fields)


def test_the_skipped_update_block_builds_exactly_the_schemas_fields(script: tree_sitter.Tree) -> None:
    assert hash_keys(function(script, "New-SkippedUpdate")) == list(SkippedUpdate.model_fields)


def test_the_cycle_report_block_builds_exactly_the_schemas_fields(script: tree_sitter.Tree) -> None:
    report = function(script, "New-CycleReport")
    assert hash_keys(report) == list(CycleReport.model_fields)
    (state,) = [p for p in nodes(report, "script_parameter") if "$State" in text(p)]
    assert f"'{CycleState.FINISHED.value}'" in text(state)  # the default: a final report
    assert {f"'{s.value}'" for s in CycleState} <= set(re.findall(r"'\w+'", text(state)))  # ValidateSet


def test_the_script_uses_the_wua_chain_and_system_task_it_documents(script: tree_sitter.Tree) -> None:
    for expected in (
        "IsInstalled=0 and Type='Software' and IsHidden=0",
        "Microsoft.Update.Session",
        "Microsoft.Update.SystemInfo",
        "NT AUTHORITY\\SYSTEM",
    ):
        assert expected in strings(script.root_node), expected


def test_the_sample_report_has_the_scripts_keys(script: tree_sitter.Tree) -> None:
    sample = json.loads(SAMPLE.read_text())
    assert list(sample) == hash_keys(function(script, "New-CycleReport"))
    for update in sample["updates"]:
        assert list(update) == hash_keys(function(script, "New-UpdateResult"))
    for skipped in sample["skipped"]:
        assert list(skipped) == hash_keys(function(script, "New-SkippedUpdate"))


def test_the_sample_report_validates_against_the_model() -> None:
    report = CycleReport.model_validate_json(SAMPLE.read_text())
    assert report.state is CycleState.FINISHED and report.result_code is ResultCode.SUCCEEDED_WITH_ERRORS
    failed = [u for u in report.updates if u.result_code is ResultCode.FAILED]
    assert [hex(u.hresult) for u in failed] == ["0x80070643"]  # WUA's signed HRESULT, stored unsigned
    assert all(u.update_id and u.revision_number is not None for u in report.updates)
    assert report.search_result_code is ResultCode.SUCCEEDED and report.blocked_by is None
    assert [s.reason for s in report.skipped if s.kb is None] == ["no KB article id"]


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
    top = param_block(script)
    assert {"approveafterdays", "severities", "includekbs", "classifications"} <= set(script_parameters(script))
    read = [text(v).lower() for v in nodes(script.root_node, "variable") if not within(v, top)]
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
    assert commands(function(script, "Invoke-UpdateCycle"), "Test-UpdateSelected")


# --- 1. scan only, and every selection field honoured or refused ----------------------------------------

INSTALLING_METHODS = ("CreateUpdateDownloader", "CreateUpdateInstaller", "Download", "Install", "BeginDownload",
                      "BeginInstall", "AcceptEula")


def test_a_scan_never_creates_or_calls_the_downloader_or_installer(script: tree_sitter.Tree) -> None:
    """Every call that downloads or installs (or accepts a EULA) is in Install-PlannedUpdates; that function is
    called once, in the else branch of `if ($scan)`, and refuses to run for a scan-only job itself."""
    calls = [i for method in INSTALLING_METHODS for i in invocations(script.root_node, method)]
    assert calls, "no download or install call found"
    assert {enclosing_function(i) for i in calls} == {"Install-PlannedUpdates"}
    (call,) = commands(script.root_node, "Install-PlannedUpdates")
    assert enclosing_function(call) == "Invoke-UpdateCycle"
    guard = next(p for p in ancestors(call) if p.type == "if_statement")
    condition = next(c for c in guard.children if c.type == "pipeline")
    assert text(condition).strip().lower() == "$scan"
    first_block = next(c for c in guard.children if c.type == "statement_block")
    assert not within(call, first_block)  # in the elseif/else, never in the scan branch
    assert '$scan = [bool] $Job.scanOnly' in text(function(script, "Invoke-UpdateCycle"))
    body = text(function(script, "Install-PlannedUpdates"))
    assert re.search(r"if \(\[bool\] \$Job\.scanOnly\) \{ throw ", body)
    assert body.index("scanOnly") < body.index(".CreateUpdateInstaller(")


def test_a_scan_reports_updates_as_not_started(script: tree_sitter.Tree) -> None:
    scan = function(script, "Get-ScanResults")
    assert "-ResultCode $ResultNotStarted" in text(scan)
    assert not [i for m in INSTALLING_METHODS for i in invocations(scan, m)]
    assert "if ($Scan) { return $ResultNotStarted }" in text(function(script, "Get-OutcomeCode"))


def test_every_selection_field_is_honoured_by_the_script_or_refused(
    script: tree_sitter.Tree, manifest: dict[str, Any]
) -> None:
    fields = {field.alias or name for name, field in selection.PatchSelection.model_fields.items()}
    assert set(manifest["selection"]) == fields == set(selection.FIELDS)
    by_name = {p["name"]: p for p in manifest["parameters"]}
    declared = script_parameters(script)
    top = param_block(script)
    read = {text(v).lower() for v in nodes(script.root_node, "variable") if not within(v, top)}
    for field, entry in manifest["selection"].items():
        if entry["honoured"]:
            bound = by_name[entry["parameter"]]["script"]
            assert bound.lower() in declared, field
            assert f"${bound.lower()}" in read, f"{field}: -{bound} is declared but never read"
        else:
            assert entry["reason"] and field not in by_name, field
    assert not manifest["selection"]["packageExclusions"]["honoured"]  # Linux package globs only
    assert manifest["selection"]["scanOnly"]["honoured"]


# --- 2. a pending reboot or a busy installer blocks the cycle, and nothing counts as failed ----------------


def test_install_is_preceded_by_the_pending_reboot_and_busy_checks(script: tree_sitter.Tree) -> None:
    reasons = function(script, "Get-PendingRebootReasons")
    assert "Microsoft.Update.SystemInfo" in strings(reasons) and "RebootRequired" in members(reasons)
    assert {"$CbsRebootPendingKey", "$WuRebootRequiredKey"} <= {text(v) for v in nodes(reasons, "variable")}
    keys = {assigned_value(script, "$CbsRebootPendingKey"), assigned_value(script, "$WuRebootRequiredKey")}
    assert keys == {
        "'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending'",
        "'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired'",
    }
    blocker = function(script, "Get-InstallBlocker")
    assert commands(blocker, "Get-PendingRebootReasons")
    assert {"RebootRequiredBeforeInstallation", "IsBusy", "RebootRequired"} <= members(blocker)
    install = function(script, "Install-PlannedUpdates")
    (check,) = commands(install, "Get-InstallBlocker")
    (first_install,) = invocations(install, "Install")
    assert check.start_byte < first_install.start_byte


def test_install_hresults_that_mean_not_now_block_the_cycle(script: tree_sitter.Tree) -> None:
    assert int(assigned_value(script, "$HResultInstallNotAllowed")) == signed(0x80240016)
    assert int(assigned_value(script, "$HResultOperationInProgress")) == signed(0x80240024)
    mapping = text(function(script, "Get-BlockerOfHResult"))
    assert "$HResultInstallNotAllowed" in mapping and "$HResultOperationInProgress" in mapping
    install = function(script, "Install-PlannedUpdates")
    (first_install,) = invocations(install, "Install")
    try_statement = next(p for p in ancestors(first_install) if p.type == "try_statement")
    (catch,) = list(nodes(try_statement, "catch_clause"))
    assert commands(catch, "Get-BlockerOfHResult") and commands(catch, "Set-Blocked")
    # and the batch's own HResult when Install() returns instead of throwing
    assert len(commands(install, "Get-BlockerOfHResult")) == 2
    assert commands(function(script, "Invoke-UpdateCycle"), "Get-BlockerOfHResult")  # Download() too


def test_a_blocked_cycle_reports_remaining_updates_and_counts_none_failed(script: tree_sitter.Tree) -> None:
    blocked = function(script, "Set-Blocked")
    assert not commands(blocked, "New-ResultOf") and not commands(blocked, "New-UpdateResult")
    assert invocations(blocked, "Add") and "$Outcome.remaining" in text(blocked)
    assert "$Outcome.reboot = $true" in text(blocked)  # reboot_pending: the engine reboots before the next cycle
    outcome = text(function(script, "Get-OutcomeCode"))
    assert "if ($Outcome.blockedBy -eq 'reboot_pending') { return $ResultNotStarted }" in outcome
    assert "if ($Outcome.blockedBy) { return $ResultAborted }" in outcome
    used = set(re.findall(r"-Reason '(\w+)'", SCRIPT.read_text()))
    used |= set(re.findall(r"return '(\w+)'", text(function(script, "Get-InstallBlocker"))))
    used |= set(re.findall(r"return '(\w+)'", text(function(script, "Get-BlockerOfHResult"))))
    assert used == {b.value for b in BlockedBy}
    report = CycleReport.model_validate({
        "key": "VA1-132457:package:1", "state": "finished", "started_at": "2016-04-12T09:14:03Z",
        "result_code": 0, "hresult": signed(0x80240016), "reboot_required": True,
        "blocked_by": "reboot_pending", "remaining": ["KB3135998"],
    })
    assert report.blocked_by is BlockedBy.REBOOT_PENDING and not report.updates


# --- 3. an update that requires exclusive handling is installed alone -------------------------------------


def test_an_exclusive_update_is_installed_alone(script: tree_sitter.Tree) -> None:
    body = text(function(script, "Install-PlannedUpdates"))
    assert "[int] $_.update.InstallationBehavior.Impact -eq 2" in body
    assert "$queue = @($exclusive[0])" in body
    assert "[void] $Outcome.remaining.Add($info.kb)" in body
    # the queue is what the installer gets: the exclusive update and nothing else
    assert body.index("$queue = @($exclusive[0])") < body.index(".CreateUpdateInstaller(")
    assert "foreach ($info in $queue)" in body


# --- 4. the deadline, heartbeats, the server-wide lock ----------------------------------------------------


def test_the_deadline_is_a_parameter_and_no_install_starts_too_close_to_it(
    script: tree_sitter.Tree, manifest: dict[str, Any]
) -> None:
    (deadline,) = [p for p in manifest["parameters"] if p["name"] == "patchaas.deadline"]
    assert deadline["script"] == "Deadline" and "deadline" in script_parameters(script)
    parsing = text(function(script, "ConvertTo-Deadline"))
    assert "1970" in parsing and "AddSeconds" in parsing and "TryParse" in parsing  # epoch seconds or ISO-8601
    install = function(script, "Install-PlannedUpdates")
    body = text(install)
    assert "-lt $StopInstallsMinutes" in body and "-lt $NearDeadlineMinutes) { $size = 1 }" in body
    stops = [c for c in commands(install, "Set-Blocked") if "'deadline'" in text(c)]
    (first_install,) = invocations(install, "Install")
    assert len(stops) == 2 and all(s.start_byte < first_install.start_byte for s in stops)  # before download, each call
    assert commands(install, "Get-MinutesLeft")


def test_the_task_time_limit_follows_the_deadline(script: tree_sitter.Tree) -> None:
    assert not re.search(r"\b240\b", SCRIPT.read_text())
    assert "TaskTimeoutMinutes" not in SCRIPT.read_text()
    limit = text(function(script, "Get-TaskTimeLimit"))
    assert "$Deadline - [DateTime]::UtcNow" in limit and "$TaskGraceMinutes" in limit
    (settings,) = commands(function(script, "Start-SystemTask"), "New-ScheduledTaskSettingsSet")
    assert "-ExecutionTimeLimit (Get-TaskTimeLimit $Deadline)" in text(settings)
    assert int(assigned_value(script, "$DefaultCycleMinutes")) < 60  # the engine's default package timeout


def test_heartbeats_are_running_reports_posted_while_waiting(
    script: tree_sitter.Tree, manifest: dict[str, Any]
) -> None:
    beat = function(script, "Send-Heartbeat")
    (build,) = commands(beat, "New-CycleReport")
    assert "-State 'running'" in text(build) and "-ResultCode $ResultInProgress" in text(build)
    assert commands(beat, "Send-CycleReport")
    assert commands(function(script, "Wait-SystemTask"), "Send-Heartbeat")
    assert any(p["name"] == "patchaas.heartbeatSeconds" and p["script"] == "HeartbeatSeconds"
               for p in manifest["parameters"])
    keys = hash_keys(function(script, "New-CycleReport"))
    running = dict.fromkeys(keys)
    running.update(key="VA1-132457:package:2", state="running", started_at="2016-04-12T09:14:03.127Z",
                   updates=[], result_code=1, hresult=0, reboot_required=False, excluded=[], remaining=[],
                   search_warnings=[], skipped=[], phase="installing KB3135998")
    jsonschema_rs.validator_for(json.loads(SCHEMA.read_text())).validate(running)
    assert CycleReport.model_validate(running).state is CycleState.RUNNING


def test_a_server_wide_lock_guards_the_installer(script: tree_sitter.Tree) -> None:
    assert assigned_value(script, "$LockName") == "'Global\\patchaas-windows-update'"
    lock = function(script, "Enter-InstallLock")
    assert "System.Threading.Mutex" in text(lock) and invocations(lock, "WaitOne")
    assert "AbandonedMutexException" in text(lock)
    assert invocations(function(script, "Exit-InstallLock"), "ReleaseMutex")
    install = function(script, "Install-PlannedUpdates")
    (enter,) = commands(install, "Enter-InstallLock")
    (create,) = invocations(install, "CreateUpdateInstaller")
    assert enter.start_byte < create.start_byte
    (release,) = commands(install, "Exit-InstallLock")
    assert any(p.type == "finally_clause" for p in ancestors(release))


# --- 5. the search's ResultCode and warnings ----------------------------------------------------------


def test_a_search_that_did_not_succeed_is_never_nothing_left(script: tree_sitter.Tree) -> None:
    cycle = function(script, "Invoke-UpdateCycle")
    body = text(cycle)
    assert "$searchCode = [int] $found.ResultCode" in body
    assert commands(cycle, "Get-SearchWarnings") and "Warnings" in members(function(script, "Get-SearchWarnings"))
    failed_search = [i for i in nodes(cycle, "if_statement")
                     if "$searchCode -ne $ResultSucceeded" in text(next(c for c in i.children if c.type == "pipeline"))]
    assert len(failed_search) == 2  # no list at all (4, 5); a partial list (3) with nothing in it
    for branch in failed_search:
        (report,) = commands(branch, "New-CycleReport")
        assert "-ResultCode $ResultFailed" in text(report) and "-SearchResultCode $searchCode" in text(report)
        assert "return" in text(branch)
    assert "-SearchResultCode $searchCode" in text(commands(cycle, "New-CycleReport")[-1])
    assert "search_result_code" in CycleReport.model_fields and "search_warnings" in CycleReport.model_fields


# --- 6. the state folder, file names, the token ------------------------------------------------------


def test_the_state_folder_is_created_locked_down_and_refused_otherwise(script: tree_sitter.Tree) -> None:
    security = function(script, "New-StateDirectorySecurity")
    body = text(security)
    assert "System.Security.AccessControl.DirectorySecurity" in body
    assert "$security.SetAccessRuleProtection($true, $false)" in body  # inheritance off, nothing copied
    assert "FileSystemAccessRule" in body and "FullControl" in body and invocations(security, "SetOwner")
    assert assigned_value(script, "$SystemSid") == "'S-1-5-18'"
    assert assigned_value(script, "$AdministratorsSid") == "'S-1-5-32-544'"
    check = function(script, "Test-StateDirectory")
    assert {"GetOwner", "AreAccessRulesProtected", "GetAccessRules", "IdentityReference",
            "AccessControlType", "ReparsePoint"} <= members(check)
    initialize = text(function(script, "Initialize-StateDirectory"))
    assert "[System.IO.Directory]::CreateDirectory($Path, (New-StateDirectorySecurity))" in initialize
    assert "Test-StateDirectory $Path" in initialize and "throw" in initialize
    assert not [c for c in commands(script.root_node, "New-Item") if "Directory" in text(c)]
    main = SCRIPT.read_text().split("# the outer run, as the control plane's account", 1)[1]
    assert main.index("Initialize-StateDirectory") < main.index("Write-TextFile")


def test_run_files_have_an_unguessable_name(script: tree_sitter.Tree) -> None:
    assert "RNGCryptoServiceProvider" in text(function(script, "New-RandomName"))
    assert commands(function(script, "Get-RunStem"), "New-RandomName")
    for entry in nodes(function(script, "Get-RunFiles"), "hash_entry"):
        assert "$Stem" in text(entry)  # every file of a run: <key>.<128 random bits>.<kind>
    assert not re.search(r"Join-Path \$StateDirectory \"\$safe\.", SCRIPT.read_text())


def test_the_report_token_never_reaches_a_command_line(script: tree_sitter.Tree) -> None:
    start = function(script, "Start-SystemTask")
    assert not [v for v in nodes(start, "variable") if "token" in text(v).lower()]
    (action,) = commands(start, "New-ScheduledTaskAction")
    assert "-Argument $arguments" in text(action)
    assert "-AsSystemWorker -JobPath" in text(start)
    job = SCRIPT.read_text().split("$job = [ordered]@{", 1)[1].split("}", 1)[0]
    assert re.search(r"reportToken\s+= \$ReportToken", job)
    worker = SCRIPT.read_text().split("if ($PSCmdlet.ParameterSetName -eq 'Worker') {", 1)[1]
    assert "-Token ([string] $job.reportToken)" in worker


# --- 7. a result is always posted ------------------------------------------------------------------


def test_the_outer_run_reports_a_task_that_died(script: tree_sitter.Tree) -> None:
    wait = text(function(script, "Wait-SystemTask"))
    assert "Get-ScheduledTaskInfo" in wait and "LastTaskResult" in wait and "Stop-ScheduledTask" in wait
    main = SCRIPT.read_text().split("# the outer run, as the control plane's account", 1)[1]
    assert "if ($null -eq $waited.result) {" in main
    died = main.split("if ($null -eq $waited.result) {", 1)[1].split("Publish-Result", 1)[0]
    assert "New-FailureReport" in died and "Save-ResultOnce" in died
    assert "Invoke-OrphanSweep" in main  # a run killed with the server is reported by the next invocation
    sweep = function(script, "Invoke-OrphanSweep")
    assert commands(sweep, "New-FailureReport") and commands(sweep, "Send-CycleReport")
    assert commands(sweep, "Get-LastBootTime")
    assert "Move" in members(function(script, "Save-ResultOnce"))  # the first result wins, the other is dropped
    log = function(script, "Write-Log")
    (append,) = commands(log, "Add-Content")
    assert any(p.type == "try_statement" for p in ancestors(append))  # a log write error ends nothing
    (insecure,) = [c for c in commands(script.root_node, "Publish-MemoryReport") if enclosing_function(c) is None]
    assert any(p.type == "catch_clause" for p in ancestors(insecure))


# --- 8. parameter binding: the manifest ------------------------------------------------------------


def engine_parameters() -> dict[str, Any]:
    """Every parameter the engine can send: clc.package_parameters for a run with the report channel and a
    selection that sets every field."""
    chosen = selection.PatchSelection(
        include_kbs=("KB3045685",), exclude_kbs=("KB3146723",), classifications=("Security Updates",),
        reboot_policy="never", scan_only=True, package_exclusions=("kernel*",), approve_after_days=7,
        severities=("Critical",),
    )
    run = PackageRun(package_id="94bd395f-9b54-4693-94ae-4f3aa93fc239", execution_id="VA1-132457", cycle=2,
                     exclude_kbs=("KB3135998",), parameters=chosen.as_parameters(),
                     report_url="https://patchaas.example/v2/patchaas/executions/VA1-132457/reports",
                     report_token=SecretStr("t"))
    return clc.package_parameters(run, "VA1-132457:package:2")


def test_the_manifest_binds_every_parameter_the_engine_sends(
    script: tree_sitter.Tree, manifest: dict[str, Any]
) -> None:
    names = [p["name"] for p in manifest["parameters"]]
    assert len(names) == len(set(names))
    refused = {field for field, entry in manifest["selection"].items() if not entry["honoured"]}
    sent = set(engine_parameters()) | {clc_wire.SELECTION_WIRE_NAMES.get(f, f) for f in selection.FIELDS}
    sent |= set(wire_constants().values())
    assert sent - refused <= set(names), sorted(sent - refused - set(names))
    declared = script_parameters(script)
    bound = [p["script"].lower() for p in manifest["parameters"]]
    assert len(bound) == len(set(bound)), "two package parameters bind to one script parameter"
    for parameter in manifest["parameters"]:
        declaration = declared.get(parameter["script"].lower())
        assert declaration is not None, f"{parameter['name']}: no -{parameter['script']} in the script"
        assert "[string]" in declaration and "'Run'" in declaration, declaration
        assert parameter["type"] == "string"


def test_every_parameter_the_engine_can_send_is_a_string_of_the_run(script: tree_sitter.Tree) -> None:
    for name, declaration in script_parameters(script).items():
        if "'Worker'" in declaration:
            continue
        assert "[string]" in declaration and "Mandatory" not in declaration, name
        assert "[int]" not in declaration and "[string[]]" not in declaration and "Validate" not in declaration


def test_the_quarantined_and_the_selections_exclusions_are_two_parameters(manifest: dict[str, Any]) -> None:
    by_name = {p["name"]: p["script"] for p in manifest["parameters"]}
    assert by_name[wire_constants()["PARAM_EXCLUDE_KBS"]] == "QuarantinedKbs" and by_name["excludeKbs"] == "ExcludeKbs"
    main = SCRIPT.read_text().split("# the outer run, as the control plane's account", 1)[1]
    assert "ConvertTo-KbList -Text $QuarantinedKbs" in main and "ConvertTo-KbList -Text $ExcludeKbs" in main


def test_the_manifest_choices_are_the_schemas_and_the_scripts(
    script: tree_sitter.Tree, manifest: dict[str, Any]
) -> None:
    by_name = {p["name"]: p for p in manifest["parameters"]}
    assert by_name["classifications"]["choices"] == [c.value for c in selection.Classification]
    assert by_name["severities"]["choices"] == [s.value for s in selection.MsrcSeverity]
    assert by_name["rebootPolicy"]["choices"] == [r.value for r in selection.RebootPolicy]
    for variable, parameter in (("$RebootPolicies", "rebootPolicy"), ("$MsrcSeverities", "severities"),
                                ("$UpdateServices", "patchaas.updateService")):
        assert re.findall(r"'([^']+)'", assigned_value(script, variable)) == by_name[parameter]["choices"]
    assert manifest["package"]["id"] == "94bd395f-9b54-4693-94ae-4f3aa93fc239"
    assert manifest["package"]["script"] == SCRIPT.name and SCRIPT.name in manifest["commandLine"]


def test_list_parameters_tolerate_commas_json_lists_and_null(script: tree_sitter.Tree) -> None:
    split = text(function(script, "ConvertTo-StringList"))
    assert "StartsWith('[')" in split and "'null'" in split and "-split '[,;]'" in split
    assert "throw" in text(function(script, "ConvertTo-KbList"))  # a bad KB fails; it is never dropped
    assert "'^(|null|none|false|0|no|off|\\$false)$'" in text(function(script, "ConvertTo-Flag"))


# --- 9. the smaller ones -------------------------------------------------------------------------


def test_the_system_task_runs_a_copy_of_the_script_in_the_locked_folder(script: tree_sitter.Tree) -> None:
    start = text(function(script, "Start-SystemTask"))
    assert "$PSCommandPath" not in start and "$ScriptCopy" in start
    assert "$MyInvocation.MyCommand.ScriptBlock.ToString()" in SCRIPT.read_text()
    assert commands(function(script, "Copy-ScriptToState"), "Write-TextFile")
    main = SCRIPT.read_text().split("# the outer run, as the control plane's account", 1)[1]
    assert "$copy = Copy-ScriptToState -Path $files.script" in main and "-ScriptCopy $copy" in main


def test_posting_retries_408_and_429_honouring_retry_after(script: tree_sitter.Tree) -> None:
    send = function(script, "Send-CycleReport")
    body = text(send)
    assert "$status -eq 408" in body and "$status -eq 429" in body and "$status -ge 500" in body
    assert commands(send, "Get-RetryAfterSeconds") and "$retryAfter" in body
    assert "'Retry-After'" in text(function(script, "Get-RetryAfterSeconds"))


def test_updates_are_identified_by_update_id_and_revision(script: tree_sitter.Tree) -> None:
    info = text(function(script, "Get-UpdateInfo"))
    assert "$Update.Identity.UpdateID" in info and "$Update.Identity.RevisionNumber" in info
    assert {"update_id", "revision_number"} <= set(hash_keys(function(script, "New-UpdateResult")))
    assert "-UpdateId $Info.id -RevisionNumber $Info.revision" in text(function(script, "New-ResultOf"))


def test_updates_without_a_kb_and_optional_ones_are_skipped_with_a_reason(script: tree_sitter.Tree) -> None:
    cycle = function(script, "Invoke-UpdateCycle")
    assert {"no KB article id", "optional update (BrowseOnly)"} <= strings(cycle)
    assert "BrowseOnly" in members(cycle) and commands(cycle, "New-SkippedUpdate")


def test_the_installer_never_prompts_for_a_source(script: tree_sitter.Tree) -> None:
    assert "$installer.AllowSourcePrompts = $false" in text(function(script, "Install-PlannedUpdates"))


def test_the_update_service_is_chosen_explicitly(script: tree_sitter.Tree) -> None:
    service = text(function(script, "Set-UpdateService"))
    for value in (0, 1, 2, 3):
        assert f"$Searcher.ServerSelection = {value}" in service
    assert "$Searcher.ServiceID = $MicrosoftUpdateServiceId" in service
    assert assigned_value(script, "$MicrosoftUpdateServiceId") == "'7971f918-a847-4430-9279-4a52d1efe18d'"
    assert invocations(function(script, "Register-MicrosoftUpdate"), "AddService2")
    assert commands(function(script, "Invoke-UpdateCycle"), "Set-UpdateService")


def test_tls_1_2_is_forced_before_either_entry_point(script: tree_sitter.Tree) -> None:
    (body,) = [c for c in script.root_node.children if c.type == "statement_list"]
    statements = [s for s in body.children if s.type != "comment"]
    tls = next(i for i, s in enumerate(statements) if "SecurityProtocol" in text(s) and "Tls12" in text(s))
    worker = next(i for i, s in enumerate(statements) if "ParameterSetName -eq 'Worker'" in text(s))
    assert tls < worker
