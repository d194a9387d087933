"""Windows PowerShell 3.0 compatibility of every .ps1 under workers/ (Windows Server 2012 ships 3.0 and .NET 4.5).

No PowerShell runs on this machine, so a checker reads tree-sitter's parse of each script and refuses:

- syntax newer than 3.0: `class` and `enum` (5.0), `using` statements (5.0), `[T]::new(...)` (5.0), the
  `.Where(...)` / `.ForEach(...)` collection methods (4.0), pipeline chains `&&` / `||` (7.0), the ternary
  `? :`, `??` and `??=` (7.0), `?.` / `?[` (7.1) — the grammar parses the 7.x operators as errors, so any parse
  error is refused too, with the operator named when it is one of those;
- `#Requires -Version` above 3;
- a command that is neither one of the script's own functions nor on `PS3_COMMANDS`, the cmdlets of the
  modules Windows Server 2012 ships with PowerShell 3.0 (aliases are refused as well: spell cmdlets out);
- parameters added to those cmdlets after 3.0 (`NEWER_PARAMETERS`), and .NET members newer than 4.5
  (`NEWER_DOTNET_MEMBERS`).

Each banned construct has a snippet test, so the checker cannot pass vacuously.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = sorted((ROOT / "workers").rglob("*.ps1"))

# The commands of the modules that Windows Server 2012 ships with Windows PowerShell 3.0 (Get-Command on a fresh
# 2012 install), restricted to the modules a package may rely on. Nothing from 4.0 or later (Get-FileHash,
# Test-NetConnection, Debug-Process, New-Guid, New-TemporaryFile, Get-Clipboard, Compress-Archive, ...).
PS3_COMMANDS: dict[str, frozenset[str]] = {
    "Microsoft.PowerShell.Core": frozenset({
        "Add-History", "Add-PSSnapin", "Clear-History", "Connect-PSSession", "Disable-PSRemoting",
        "Disable-PSSessionConfiguration", "Disconnect-PSSession", "Enable-PSRemoting", "Enable-PSSessionConfiguration",
        "Enter-PSSession", "Exit-PSSession", "Export-Console", "Export-ModuleMember", "ForEach-Object", "Get-Command",
        "Get-Help", "Get-History", "Get-Job", "Get-Module", "Get-PSSession", "Get-PSSessionConfiguration",
        "Get-PSSnapin", "Import-Module", "Invoke-Command", "Invoke-History", "New-Module", "New-ModuleManifest",
        "New-PSSession", "New-PSSessionConfigurationFile", "New-PSSessionOption", "New-PSTransportOption",
        "Out-Default", "Out-Host", "Out-Null", "Receive-Job", "Receive-PSSession", "Register-PSSessionConfiguration",
        "Remove-Job", "Remove-Module", "Remove-PSSession", "Remove-PSSnapin", "Resume-Job", "Save-Help",
        "Set-PSDebug", "Set-PSSessionConfiguration", "Set-StrictMode", "Start-Job", "Stop-Job", "Suspend-Job",
        "Test-ModuleManifest", "Test-PSSessionConfigurationFile", "Unregister-PSSessionConfiguration",
        "Update-Help", "Wait-Job", "Where-Object",
    }),
    "Microsoft.PowerShell.Utility": frozenset({
        "Add-Member", "Add-Type", "Clear-Variable", "Compare-Object", "ConvertFrom-Csv", "ConvertFrom-Json",
        "ConvertFrom-StringData", "ConvertTo-Csv", "ConvertTo-Html", "ConvertTo-Json", "ConvertTo-Xml",
        "Disable-PSBreakpoint", "Enable-PSBreakpoint", "Export-Alias", "Export-Clixml", "Export-Csv",
        "Export-FormatData", "Export-PSSession", "Format-Custom", "Format-List", "Format-Table", "Format-Wide",
        "Get-Alias", "Get-Culture", "Get-Date", "Get-Event", "Get-EventSubscriber", "Get-FormatData", "Get-Host",
        "Get-Member", "Get-PSBreakpoint", "Get-PSCallStack", "Get-Random", "Get-TraceSource", "Get-TypeData",
        "Get-UICulture", "Get-Unique", "Get-Variable", "Group-Object", "Import-Alias", "Import-Clixml", "Import-Csv",
        "Import-LocalizedData", "Import-PSSession", "Invoke-Expression", "Invoke-RestMethod", "Invoke-WebRequest",
        "Measure-Command", "Measure-Object", "New-Alias", "New-Event", "New-Object", "New-TimeSpan", "New-Variable",
        "Out-File", "Out-GridView", "Out-Printer", "Out-String", "Read-Host", "Register-EngineEvent",
        "Register-ObjectEvent", "Remove-Event", "Remove-PSBreakpoint", "Remove-TypeData", "Remove-Variable",
        "Select-Object", "Select-String", "Select-Xml", "Send-MailMessage", "Set-Alias", "Set-Date",
        "Set-PSBreakpoint", "Set-TraceSource", "Set-Variable", "Show-Command", "Sort-Object", "Start-Sleep",
        "Tee-Object", "Trace-Command", "Unblock-File", "Unregister-Event", "Update-FormatData", "Update-List",
        "Update-TypeData", "Wait-Event", "Write-Debug", "Write-Error", "Write-Host", "Write-Output", "Write-Progress",
        "Write-Verbose", "Write-Warning",
    }),
    "Microsoft.PowerShell.Management": frozenset({
        "Add-Computer", "Add-Content", "Checkpoint-Computer", "Clear-Content", "Clear-EventLog", "Clear-Item",
        "Clear-ItemProperty", "Complete-Transaction", "Convert-Path", "Copy-Item", "Copy-ItemProperty",
        "Disable-ComputerRestore", "Enable-ComputerRestore", "Get-ChildItem", "Get-ComputerRestorePoint",
        "Get-Content", "Get-ControlPanelItem", "Get-EventLog", "Get-HotFix", "Get-Item", "Get-ItemProperty",
        "Get-Location", "Get-Process", "Get-PSDrive", "Get-PSProvider", "Get-Service", "Get-Transaction",
        "Get-WmiObject", "Invoke-Item", "Invoke-WmiMethod", "Join-Path", "Limit-EventLog", "Move-Item",
        "Move-ItemProperty", "New-EventLog", "New-Item", "New-ItemProperty", "New-PSDrive", "New-Service",
        "New-WebServiceProxy", "Pop-Location", "Push-Location", "Register-WmiEvent", "Remove-Computer",
        "Remove-EventLog", "Remove-Item", "Remove-ItemProperty", "Remove-PSDrive", "Remove-WmiObject",
        "Rename-Computer", "Rename-Item", "Rename-ItemProperty", "Reset-ComputerMachinePassword", "Resolve-Path",
        "Restart-Computer", "Restart-Service", "Restore-Computer", "Resume-Service", "Set-Content", "Set-Item",
        "Set-ItemProperty", "Set-Location", "Set-Service", "Set-WmiInstance", "Show-ControlPanelItem",
        "Show-EventLog", "Split-Path", "Start-Process", "Start-Service", "Start-Transaction", "Stop-Computer",
        "Stop-Process", "Stop-Service", "Suspend-Service", "Test-ComputerSecureChannel", "Test-Connection",
        "Test-Path", "Undo-Transaction", "Use-Transaction", "Wait-Process", "Write-EventLog",
    }),
    "Microsoft.PowerShell.Security": frozenset({
        "ConvertFrom-SecureString", "ConvertTo-SecureString", "Get-Acl", "Get-AuthenticodeSignature",
        "Get-Credential", "Get-ExecutionPolicy", "Get-PfxCertificate", "Set-Acl", "Set-AuthenticodeSignature",
        "Set-ExecutionPolicy",
    }),
    "Microsoft.PowerShell.Diagnostics": frozenset({
        "Export-Counter", "Get-Counter", "Get-WinEvent", "Import-Counter", "New-WinEvent",
    }),
    "CimCmdlets": frozenset({
        "Get-CimAssociatedInstance", "Get-CimClass", "Get-CimInstance", "Get-CimSession", "Invoke-CimMethod",
        "New-CimInstance", "New-CimSession", "New-CimSessionOption", "Register-CimIndicationEvent",
        "Remove-CimInstance", "Remove-CimSession", "Set-CimInstance",
    }),
    # inbox on Windows Server 2012 / Windows 8 (not part of PowerShell itself, but on every 2012 server)
    "ScheduledTasks": frozenset({
        "Disable-ScheduledTask", "Enable-ScheduledTask", "Export-ScheduledTask", "Get-ClusteredScheduledTask",
        "Get-ScheduledTask", "Get-ScheduledTaskInfo", "New-ScheduledTask", "New-ScheduledTaskAction",
        "New-ScheduledTaskPrincipal", "New-ScheduledTaskSettingsSet", "New-ScheduledTaskTrigger",
        "Register-ClusteredScheduledTask", "Register-ScheduledTask", "Set-ClusteredScheduledTask",
        "Set-ScheduledTask", "Start-ScheduledTask", "Stop-ScheduledTask", "Unregister-ClusteredScheduledTask",
        "Unregister-ScheduledTask",
    }),
}
ALLOWED_COMMANDS = frozenset(name.lower() for names in PS3_COMMANDS.values() for name in names)

# parameters added to 3.0 cmdlets by later versions (a script using them fails to bind on 2012)
NEWER_PARAMETERS: dict[str, frozenset[str]] = {
    "invoke-restmethod": frozenset({"skipcertificatecheck", "statuscodevariable", "maximumretrycount",
                                    "retryintervalsec", "responseheadersvariable", "skipheadervalidation",
                                    "authentication", "token", "sslprotocol", "form", "resume", "custommethod",
                                    "nobody", "followrellink", "skiphttperrorcheck"}),
    "invoke-webrequest": frozenset({"skipcertificatecheck", "maximumretrycount", "retryintervalsec",
                                    "skipheadervalidation", "authentication", "token", "sslprotocol", "form",
                                    "resume", "custommethod", "skiphttperrorcheck"}),
    "convertto-json": frozenset({"enumsasstrings", "asarray", "escapehandling"}),
    "convertfrom-json": frozenset({"ashashtable", "depth", "noenumerate"}),
    "out-file": frozenset({"nonewline"}),
    "set-content": frozenset({"nonewline", "asbytestream"}),
    "add-content": frozenset({"nonewline", "asbytestream"}),
    "get-content": frozenset({"asbytestream"}),
    "get-childitem": frozenset({"depth", "followsymlink"}),
    "foreach-object": frozenset({"parallel", "throttlelimit", "asjob"}),
    "select-object": frozenset({"skiplast", "skipindex"}),
    "start-sleep": frozenset({"duration"}),
}

# .NET members newer than 4.5 (Windows Server 2012's framework)
NEWER_DOTNET_MEMBERS: dict[str, str] = {
    "fromunixtimeseconds": ".NET 4.6", "fromunixtimemilliseconds": ".NET 4.6", "tounixtimeseconds": ".NET 4.6",
    "tounixtimemilliseconds": ".NET 4.6", "tls13": ".NET 4.8", "systemdefault": ".NET 4.7",
}


def parse(source: bytes) -> tree_sitter.Tree:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language())).parse(source)


def walk(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: tree_sitter.Node | None) -> str:
    return "" if node is None else (node.text or b"").decode()


def where(node: tree_sitter.Node) -> str:
    line, column = node.start_point
    return f"{line + 1}:{column + 1}"


def _error_name(snippet: str) -> str:
    """Name the construct behind a parse error, from the error's text and the few characters after it."""
    if re.search(r"\.\s*(foreach|where)\s*\(", snippet, re.IGNORECASE):
        return "the .Where() / .ForEach() collection methods (PowerShell 4.0)"
    if "??=" in snippet:
        return "the ??= operator (PowerShell 7)"
    if "??" in snippet:
        return "the ?? operator (PowerShell 7)"
    if re.search(r"\?\.|\?\[", snippet):
        return "the ?. / ?[] operators (PowerShell 7.1)"
    if "?" in snippet:
        return "the ternary ? : operator (PowerShell 7)"
    return "syntax the parser does not know"


def own_functions(tree: tree_sitter.Tree) -> set[str]:
    return {
        text(name).lower()
        for statement in walk(tree.root_node) if statement.type == "function_statement"
        for name in statement.children if name.type == "function_name"
    }


def problems(source: str) -> list[str]:
    """What in `source` would not run on Windows PowerShell 3.0 / .NET 4.5 (empty: nothing found)."""
    data = source.encode()
    tree = parse(data)
    functions = own_functions(tree)
    found: list[str] = []
    for node in walk(tree.root_node):
        kind = node.type
        if kind == "ERROR" or node.is_missing:
            parent_error = node.parent is not None and node.parent.type == "ERROR"
            if not parent_error:
                context = data[node.start_byte:node.end_byte + 12].decode(errors="replace")
                found.append(f"{where(node)}: {_error_name(context)}: {text(node)[:60]!r}")
        elif kind == "class_statement":
            found.append(f"{where(node)}: class (PowerShell 5.0)")
        elif kind == "enum_statement":
            found.append(f"{where(node)}: enum (PowerShell 5.0)")
        elif kind == "pipeline_chain_tail":
            found.append(f"{where(node)}: pipeline chain {text(node).strip()} (PowerShell 7)")
        elif kind == "invokation_expression":
            operator = next((c for c in node.children if c.type in ("::", ".")), None)
            member = next((c for c in node.children if c.type == "member_name"), None)
            name = text(member).lower()
            if operator is not None and operator.type == "::" and name == "new":
                found.append(f"{where(node)}: [type]::new() (PowerShell 5.0; use New-Object)")
            if operator is not None and operator.type == "." and name in ("where", "foreach"):
                found.append(f"{where(node)}: the .{text(member)}() collection method (PowerShell 4.0)")
        elif kind == "member_name" and text(node).lower() in NEWER_DOTNET_MEMBERS:
            found.append(f"{where(node)}: {text(node)} ({NEWER_DOTNET_MEMBERS[text(node).lower()]})")
        elif kind == "command":
            found.extend(_command_problems(node, functions))
        elif kind == "comment":
            requires = re.match(r"#requires\s+.*-version\s+(\d+)", text(node), re.IGNORECASE)
            if requires and int(requires.group(1)) > 3:
                found.append(f"{where(node)}: #Requires -Version {requires.group(1)}")
    return found


def _command_problems(command: tree_sitter.Node, functions: set[str]) -> list[str]:
    name_node = next((c for c in command.children if c.type == "command_name"), None)
    if name_node is None:  # & $scriptblock, . $file: not a command name
        return []
    name = text(name_node)
    lowered = name.lower()
    if lowered == "using":
        return [f"{where(command)}: using statement (PowerShell 5.0)"]
    if lowered not in ALLOWED_COMMANDS and lowered not in functions:
        return [f"{where(command)}: {name} is not a Windows PowerShell 3.0 cmdlet of Windows Server 2012 "
                "(nor a function of this script; spell out aliases)"]
    newer = NEWER_PARAMETERS.get(lowered, frozenset())
    found = []
    for node in walk(command):
        if node.type == "command_parameter":
            parameter = text(node).lstrip("-").rstrip(":").lower()
            if parameter in newer:
                found.append(f"{where(node)}: {name} -{parameter} is newer than PowerShell 3.0")
    return found


# --- the scripts ---------------------------------------------------------------------------------


def test_there_are_scripts_to_check() -> None:
    assert SCRIPTS, "no .ps1 under workers/"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_is_powershell_3(script: Path) -> None:
    assert problems(script.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_is_ascii(script: Path) -> None:
    """Windows PowerShell reads a script without a byte-order mark in the ANSI code page: keep them ASCII."""
    data = script.read_bytes()
    assert all(byte < 0x80 for byte in data), [i for i, byte in enumerate(data) if byte >= 0x80][:5]


# --- the checker refuses each construct ----------------------------------------------------------------


@pytest.mark.parametrize(
    "snippet,refusal",
    [
        ("class Update { [string] $Kb }", "class"),
        ("enum Severity { Critical; Important }", "enum"),
        ("using namespace System.Text", "using statement"),
        ("$builder = [System.Text.StringBuilder]::new()", "::new()"),
        ("$kbs = $updates.Where({ $_.Kb })", ".Where()"),
        ("$updates.ForEach({ $_.Kb })", ".ForEach()"),
        ("$kbs = @(1, 2).Where({ $_ })", ".Where()"),
        ("Get-Item x && Write-Output ok", "pipeline chain &&"),
        ("Get-Item x || Write-Output no", "pipeline chain ||"),
        ("$reboot = $pending ? 1 : 0", "ternary"),
        ("$service = $name ?? 'Default'", "?? operator"),
        ("$service ??= 'Default'", "??= operator"),
        ("$length = $title?.Length", "?."),
        ("#Requires -Version 5.1\nWrite-Output x", "#Requires -Version 5"),
        ("$hash = Get-FileHash -LiteralPath x", "Get-FileHash is not"),
        ("Test-NetConnection example.com", "Test-NetConnection is not"),
        ("$items | % { $_ }", "% is not"),
        ("$items | where { $_ }", "where is not"),
        ("Invoke-RestMethod -Uri x -SkipCertificateCheck", "-skipcertificatecheck"),
        ("Invoke-RestMethod -Uri x -MaximumRetryCount 3", "-maximumretrycount"),
        ("$o = '{}' | ConvertFrom-Json -AsHashtable", "-ashashtable"),
        ("Set-Content -LiteralPath x -Value y -NoNewline", "-nonewline"),
        ("$at = [DateTimeOffset]::FromUnixTimeSeconds(0)", "FromUnixTimeSeconds (.NET 4.6)"),
        ("[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls13", "Tls13"),
        ("function f { ", "syntax"),
    ],
)
def test_the_checker_refuses(snippet: str, refusal: str) -> None:
    found = problems(snippet)
    assert any(refusal.lower() in problem.lower() for problem in found), found


def test_the_checker_accepts_powershell_3() -> None:
    snippet = """
[CmdletBinding()]
param([string] $Name = '')
Set-StrictMode -Version 2.0
function Get-Thing {
    param([string] $Text)
    $list = @($Text -split ',' | Where-Object { $_ } | ForEach-Object { $_.Trim() })
    $ordered = [ordered]@{ name = $Text; count = $list.Count }
    $builder = New-Object System.Text.StringBuilder
    [void] $builder.Append('x')
    [Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
    if ($list.Count -gt 0) { $ordered } else { $null }
}
$thing = Get-Thing -Text $Name
ConvertTo-Json -InputObject $thing -Depth 3 -Compress | Out-Null
try { Get-ScheduledTask -TaskName x -ErrorAction SilentlyContinue } catch { Write-Host $_.Exception.Message }
"""
    assert problems(snippet) == []


def test_the_allow_list_holds_only_cmdlets_of_3_0() -> None:
    """A few that arrived later must not creep into the list."""
    later = {"Get-FileHash", "Test-NetConnection", "New-Guid", "New-TemporaryFile", "Get-Clipboard", "Set-Clipboard",
             "Compress-Archive", "Expand-Archive", "ConvertFrom-String", "Format-Hex", "Write-Information",
             "Get-ItemPropertyValue", "Debug-Process", "Wait-Debugger", "Enter-PSHostProcess", "Get-Runspace",
             "Clear-RecycleBin", "Get-ComputerInfo", "Join-String", "Get-Uptime", "Test-Json", "Get-Error"}
    assert not {name.lower() for name in later} & ALLOWED_COMMANDS
