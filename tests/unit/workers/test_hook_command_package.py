"""The hook script package (workers/fleet/packages/hook-command.ps1, Execute Package `patchaas-hook-command`),
tested as far as this Linux machine allows: no PowerShell runs here, so what is proven is on tree-sitter's
parse of the script, like tests/unit/workers/test_windows_update_package.py:

- it parses; hook-command.manifest.json binds exactly the parameters the clc driver sends
  (workers/fleet/clc_hooks.py, names from clc_wire.py), each to its own string parameter of the script;
- the key's dedupe path (a saved result answered again, a repeat waiting for the first run) comes before the
  command runs, and the intent (the running marker) is written before the effect;
- the timeout is enforced (the child's process tree stopped), the output is bounded to schemas/hooks.py
  MAX_OUTPUT, the command never reaches a command line, the state folder is locked down with the very checks
  of the Windows update package;
- the result it prints has the fields the driver reads, and the driver reads the checked-in sample.

What is not proven: the child process, its pipes and the CIM calls on a real Windows PowerShell.
tests/unit/workers/test_powershell_compat.py checks the script is PowerShell 3.0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tree_sitter
import tree_sitter_powershell

from schemas import health, hooks
from tests.unit.workers.test_powershell_compat import problems
from workers.fleet import clc_wire
from workers.fleet.clc_hooks import ClcCommands

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ROOT / "workers" / "fleet" / "packages"
SCRIPT = PACKAGES / "hook-command.ps1"
MANIFEST = PACKAGES / "hook-command.manifest.json"
SAMPLE = PACKAGES / "hook-command.sample-result.json"
UPDATE_SCRIPT = PACKAGES / "windows-update.ps1"
ENTRY = "# --- entry point"
LOCAL_PARAMETERS = {"statedirectory"}  # overrides for a local run, never sent by the driver


def parse(source: bytes) -> tree_sitter.Tree:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language())).parse(source)


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
    raise AssertionError(f"no function {name}")


def commands(node: tree_sitter.Node, name: str) -> list[tree_sitter.Node]:
    return [c for c in nodes(node, "command")
            if any(n.type == "command_name" and text(n).lower() == name.lower() for n in c.children)]


def members(node: tree_sitter.Node) -> set[str]:
    return {text(m) for m in nodes(node, "member_name")}


def hash_keys(node: tree_sitter.Node) -> list[str]:
    (literal,) = list(nodes(node, "hash_literal_expression"))
    return [text(entry.children[0]) for entry in nodes(literal, "hash_entry")]


def script_parameters(tree: tree_sitter.Tree) -> dict[str, str]:
    (block,) = [b for b in tree.root_node.children if b.type == "param_block"]
    declared: dict[str, str] = {}
    for parameter in nodes(block, "script_parameter"):
        variable = next(n for n in parameter.children if n.type == "variable")
        declared[text(variable).removeprefix("$").lower()] = text(parameter)
    return declared


def assigned_value(source: str, variable: str) -> str:
    found = re.search(rf"^\{variable} = (\S+)", source, re.MULTILINE)
    assert found, f"no top-level assignment of {variable}"
    return found.group(1)


def walk(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def syntax_errors(tree: tree_sitter.Tree) -> list[str]:
    return [f"{n.start_point[0] + 1}: {text(n)[:60]!r}" for n in walk(tree.root_node)
            if n.type == "ERROR" or n.is_missing]


def main_section() -> str:
    return SCRIPT.read_text().split(ENTRY, 1)[1]


class Recording(ClcCommands):
    """The clc driver's hook mixin over canned HTTP: records what it queues, answers `commandRuns` with
    `answer` once something was queued (404 commandRunNotFound before)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.config = type("Config", (), {"poll_interval": 0.0})()
        self.queued: list[tuple[str, Any]] = []
        self.answer = answer
        self._clock = lambda: 0.0
        self._sleep = lambda _seconds: None
        self._ensure_alias = lambda: "VA1"
        self._check = lambda _response, _what: None

        def call(method: str, path: str, **_kwargs: Any) -> httpx.Response:
            assert method == "GET" and "/commandRuns/" in path
            if not self.queued:
                return httpx.Response(404, json={"message": "no", "code": clc_wire.COMMAND_RUN_NOT_FOUND})
            return httpx.Response(200, json=self.answer)

        def queue(operation: str, body: object, _server: str, _key: str) -> str:
            self.queued.append((operation, body))
            return "status-1"

        self._call = call
        self._queue = queue


@pytest.fixture(scope="module")
def script() -> tree_sitter.Tree:
    return parse(SCRIPT.read_bytes())


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def sample() -> dict[str, Any]:
    return json.loads(SAMPLE.read_text())


def driver_call(answer: dict[str, Any]) -> tuple[dict[str, Any], hooks.CommandResult]:
    """What the driver queues for one hook command, and what it makes of `answer`."""
    driver = Recording(answer)
    result = driver.run_command("VA1OSDWEB01", "VA1-132457:hook:pre_cycle:1:drain", "exit 0", 60)
    ((operation, body),) = driver.queued
    assert operation == "executePackage"
    return body, result


# --- the script -----------------------------------------------------------------------------------


def test_the_script_parses(script: tree_sitter.Tree) -> None:
    assert syntax_errors(script) == []
    assert problems(SCRIPT.read_text()) == []


def test_the_parser_would_see_a_broken_script() -> None:
    broken = SCRIPT.read_bytes().replace(b"function New-CommandResult {", b"function New-CommandResult {{ (", 1)
    assert syntax_errors(parse(broken))


# --- the manifest binds what the driver sends -----------------------------------------------------------


def test_the_manifest_binds_every_parameter_the_driver_sends(
        script: tree_sitter.Tree, manifest: dict[str, Any], sample: dict[str, Any]) -> None:
    body, _ = driver_call(sample)
    assert body["package"]["packageId"] == clc_wire.HOOK_PACKAGE_ID == manifest["package"]["id"]
    sent = body["package"]["parameters"]
    assert all(isinstance(value, str) for value in sent.values()), sent
    names = [p["name"] for p in manifest["parameters"]]
    assert len(names) == len(set(names)), "a parameter is listed twice"
    assert set(sent) == set(names), (sorted(set(sent) - set(names)), sorted(set(names) - set(sent)))
    assert {clc_wire.HOOK_COMMAND, clc_wire.HOOK_TIMEOUT_SECONDS, clc_wire.PARAM_IDEMPOTENCY_KEY} == set(names)
    bound = [p["script"].lower() for p in manifest["parameters"]]
    assert len(bound) == len(set(bound)), "two package parameters bind to one script parameter"
    declared = script_parameters(script)
    assert set(declared) - LOCAL_PARAMETERS == set(bound), "a script parameter no package parameter binds"
    for parameter in manifest["parameters"]:
        declaration = declared[parameter["script"].lower()]
        assert declaration.startswith("[string]") and "Mandatory" not in declaration, declaration
        assert parameter["type"] == "string"
    assert manifest["package"]["script"] == SCRIPT.name and manifest["commandLine"].endswith(f"-File {SCRIPT.name}")
    required = {p["name"] for p in manifest["parameters"] if p["required"]}
    assert required == {clc_wire.HOOK_COMMAND, clc_wire.PARAM_IDEMPOTENCY_KEY}


def test_the_timeout_range_is_the_schemas_and_the_driver_sends_one_inside_it(
        manifest: dict[str, Any], sample: dict[str, Any]) -> None:
    source = SCRIPT.read_text()
    assert assigned_value(source, "$MaxTimeoutSeconds") == str(hooks.MAX_COMMAND_TIMEOUT)
    assert assigned_value(source, "$MinTimeoutSeconds") == "1"
    (timeout,) = [p for p in manifest["parameters"] if p["name"] == clc_wire.HOOK_TIMEOUT_SECONDS]
    assert timeout["format"] == f"integer 1-{hooks.MAX_COMMAND_TIMEOUT}"
    body, _ = driver_call(sample)
    assert 1 <= int(body["package"]["parameters"][clc_wire.HOOK_TIMEOUT_SECONDS]) <= hooks.MAX_COMMAND_TIMEOUT


# --- the result: what the driver reads ---------------------------------------------------------------------


def test_the_result_has_the_fields_the_driver_reads(
        script: tree_sitter.Tree, manifest: dict[str, Any], sample: dict[str, Any]) -> None:
    keys = hash_keys(function(script, "New-CommandResult"))
    assert keys == manifest["result"]["fields"] == list(sample)
    assert {"state", "exitCode", "output", "timedOut"} <= set(keys)  # the simulator's commandRuns answer
    assert "state      = 'finished'" in text(function(script, "New-CommandResult"))
    _, result = driver_call(sample)
    assert result == hooks.CommandResult(exit_code=1, output="service W3SVC is Stopped", timed_out=False)


def test_the_result_is_the_only_thing_on_standard_output(script: tree_sitter.Tree) -> None:
    assert not commands(script.root_node, "Write-Host") and not commands(script.root_node, "Out-Host")
    outputs = commands(script.root_node, "Write-Output")
    assert outputs and all("ConvertTo-ResultJson" in text(c) or "$files.result" in text(c) for c in outputs)
    log = text(function(script, "Write-Log"))
    assert "Add-Content -LiteralPath $LogPath" in log and "try" in log


# --- once per key ----------------------------------------------------------------------------------------------


def test_the_key_dedupe_path_comes_before_the_command_runs(script: tree_sitter.Tree) -> None:
    main = main_section()
    runs = [c for c in commands(script.root_node, "Invoke-HookCommand")]
    assert len(runs) == 1, "the command is started in one place only"
    assert main.index("Get-RunStem") < main.index("Test-Path -LiteralPath $files.result") < main.index(
        "Invoke-HookCommand")
    repeat = main.split("} elseif (-not $claimed.first) {", 1)[1].split("} else {", 1)[0]
    assert "Wait-FirstRun" in repeat and "Invoke-HookCommand" not in repeat
    first = main.split("} elseif (-not $claimed.first) {", 1)[1].split("} else {", 1)[1]
    assert first.index("Write-TextFile -Path $files.running") < first.index("Invoke-HookCommand")
    assert first.index("Invoke-HookCommand") < first.index("Save-ResultOnce")
    stem = text(function(script, "Get-RunStem"))
    assert "[System.IO.FileMode]::CreateNew" in stem and "first = $true" in stem and "first = $false" in stem
    assert "Move" in members(function(script, "Save-ResultOnce"))  # the first result saved wins


def test_a_repeat_whose_first_run_died_answers_it_interrupted_and_runs_nothing(script: tree_sitter.Tree) -> None:
    wait = function(script, "Wait-FirstRun")
    assert commands(wait, "Test-RunAlive") and commands(wait, "Save-ResultOnce")
    assert not commands(wait, "Invoke-HookCommand")
    assert "interrupted" in text(wait) and "-ExitCode -1" in text(wait)
    alive = text(function(script, "Test-RunAlive"))
    assert "Get-Process -Id" in alive and "StartTime" in alive  # a reused process id is not the first run


# --- timeout, bounded output, no secret on a command line ------------------------------------------------------


def test_the_timeout_is_enforced_on_the_whole_process_tree(script: tree_sitter.Tree) -> None:
    run = function(script, "Invoke-HookCommand")
    body = text(run)
    assert "$stopAt = [DateTime]::UtcNow.AddSeconds($Seconds)" in body
    assert "[DateTime]::UtcNow -ge $stopAt" in body and "$timedOut = $true" in body
    assert commands(run, "Stop-ProcessTree") and "WaitForExit" in members(run)
    assert "if (-not $timedOut) { $code = [int] $process.ExitCode }" in body and "$code = -1" in body
    tree = text(function(script, "Get-ProcessTree"))
    assert "Win32_Process" in tree and "ParentProcessId" in tree
    assert "Stop-Process -Id $id -Force" in text(function(script, "Stop-ProcessTree"))
    assert "StandardInput.Close" in body  # a command reading its input does not hang until the timeout


def test_the_output_is_bounded_to_the_schemas_limit(script: tree_sitter.Tree) -> None:
    assert assigned_value(SCRIPT.read_text(), "$MaxOutput") == str(hooks.MAX_OUTPUT)
    chunk = text(function(script, "Receive-OutputChunk"))
    assert "$room = $MaxOutput - $Stream.text.Length" in chunk and "[Math]::Min($room, $count)" in chunk
    assert "ReadAsync" in chunk  # the rest is read and dropped: a full pipe would block the child
    assert "output     = Limit-Text $Output $MaxOutput" in text(function(script, "New-CommandResult"))
    assert "(Limit-Text $output $MaxOutput)" in text(function(script, "Invoke-HookCommand"))


def test_the_command_never_reaches_a_command_line(script: tree_sitter.Tree) -> None:
    run = function(script, "Invoke-HookCommand")
    arguments = "$info.Arguments = '-NoProfile -NonInteractive -ExecutionPolicy Bypass -File \"{0}\"' -f $ScriptPath"
    assert arguments in text(run)
    assert not [v for v in nodes(run, "variable") if text(v).lower() == "$command"]
    assert "Write-TextFile -Path $files.command -Text $Command" in main_section()
    source = SCRIPT.read_text().lower()
    for banned in ("invoke-expression", "start-process", "-encodedcommand", "-command "):
        assert banned not in source.split("#>", 1)[1], banned
    assert "Remove-Item -LiteralPath $files.command" in main_section()


# --- the state folder: the Windows update package's checks ----------------------------------------------------


def test_the_state_folder_is_locked_down_with_the_update_packages_checks(script: tree_sitter.Tree) -> None:
    update = parse(UPDATE_SCRIPT.read_bytes())
    for name in ("New-StateDirectorySecurity", "Test-StateDirectory", "Get-SafeName", "New-RandomName"):
        assert body_lines(function(script, name)) == body_lines(function(update, name)), name
    for name in ("$SystemSid", "$AdministratorsSid"):
        assert assigned_value(SCRIPT.read_text(), name) == assigned_value(UPDATE_SCRIPT.read_text(), name)
    main = main_section()
    assert main.index("Initialize-StateDirectory -Path $StateDirectory") < main.index(
        "Initialize-StateDirectory -Path $hookDirectory") < main.index("Get-RunStem")
    assert "$hookDirectory = Join-Path $StateDirectory 'hooks'" in main
    initialize = text(function(script, "Initialize-StateDirectory"))
    assert "[System.IO.Directory]::CreateDirectory($Path, (New-StateDirectorySecurity))" in initialize
    refused = main.split("} catch {", 1)[1].split("}", 1)[0]
    assert "exit 1" in refused and "Get-RunFiles" not in refused  # no file is written in a refused folder
    for entry in nodes(function(script, "Get-RunFiles"), "hash_entry"):
        assert "$Stem" in text(entry)


def body_lines(node: tree_sitter.Node) -> list[str]:
    """A function's code lines, comments and blank lines left out."""
    return [line.strip() for line in text(node).splitlines() if line.strip() and not line.strip().startswith("#")]


# --- a service check is a command the package runs ------------------------------------------------------------


def test_a_service_checks_command_is_powershell_3_and_ends_with_its_exit_code() -> None:
    command = health.service_command("W3SVC", "windows")
    assert problems(command) == []
    assert "Get-Service -Name 'W3SVC'" in command and "exit 1" in command and "exit 2" in command
    quoted = health.service_command("it's", "windows")
    assert problems(quoted) == [] and health.service_of_command(quoted) == "it's"
