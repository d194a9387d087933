<#
.SYNOPSIS
    The patchaas hook script package (patchaas-hook-command): run one hook command or on-server health check,
    once per idempotency key, with a timeout, and print its result.

.DESCRIPTION
    Runs on Windows Server 2012 / 2012 R2 (Windows PowerShell 3.0, .NET 4.5), started by the control plane's
    Execute Package for a command hook or a `service` / `command` health check (docs/HOOKS.md). The driver
    (workers/fleet/clc_hooks.py) sends three parameters, all quoted strings: patchaas.command (-Command),
    patchaas.timeoutSeconds (-TimeoutSeconds) and patchaas.idempotencyKey (-IdempotencyKey).
    hook-command.manifest.json beside this script is the contract.

    1. Checks the state folder C:\ProgramData\patchaas and its subfolder hooks: created SYSTEM + Administrators
       only (inheritance off, owner Administrators); an existing folder with another owner or any other ACE is
       refused, exactly as windows-update.ps1 does.
    2. Claims the key (<key>.claim names the run's files <key>.<32 random hex digits>.*). A key that has a
       result answers it again and runs nothing; a key whose first invocation is still running waits for it; a
       key whose first invocation died before saving a result (the server restarted, the package was killed)
       is answered as interrupted, and the command is not run a second time.
    3. Writes the command to <stem>.command.ps1 in the locked folder (never onto a command line) and runs it in
       a child powershell.exe -File, its standard output and error read into bounded buffers. Past
       -TimeoutSeconds the child and every process it started are stopped: exit code -1, timedOut true.
    4. Saves the result (<stem>.result.json, first writer wins) and prints it as the one line of its standard
       output, the control plane's command run: {"key", "state": "finished", "exitCode", "output",
       "timedOut", "startedAt", "finishedAt"} (the CLC simulator's GET .../commandRuns/{key} answers the same
       fields). output holds at most 4000 characters (schemas/hooks.py MAX_OUTPUT).

    Exit code of the package: 0 a result was printed (whatever the command's own exit code), 1 the state
    folder is refused or the package failed (a result from memory is printed), 2 no idempotency key.
    A `service` health check arrives as a command (schemas/health.py service_command: Get-Service, exit 1
    unless Running, 2 when there is no such service) and runs the same way. docs/WINDOWS.md is the guide.
#>
[CmdletBinding()]
param(
    # patchaas.command: PowerShell to run on this server
    [string] $Command = '',

    # patchaas.timeoutSeconds: whole seconds, 1 to 240
    [string] $TimeoutSeconds = '',

    # patchaas.idempotencyKey: <execution>:hook:<point>:<cycle>:<name> (or a health check attempt's key)
    [string] $IdempotencyKey = '',

    # local override (not sent by the engine)
    [string] $StateDirectory = (Join-Path $env:ProgramData 'patchaas')
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'

$MaxOutput = 4000                # characters of output kept (schemas/hooks.py MAX_OUTPUT)
$MinTimeoutSeconds = 1
$MaxTimeoutSeconds = 240         # schemas/hooks.py MAX_COMMAND_TIMEOUT
$DrainSeconds = 5                # after the child ends: how long its pipes may still deliver output
$WaitGraceSeconds = 60           # a second invocation waits for the first one this long past the timeout
$RetentionDays = 30
$SystemSid = 'S-1-5-18'
$AdministratorsSid = 'S-1-5-32-544'

# --- small helpers -------------------------------------------------------------------------------

function Get-UtcStamp {
    [DateTime]::UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'")
}

function Write-Log {
    # to the run's log file only (standard output carries the result alone); never throws
    param([string] $Message, [string] $LogPath = '')
    if (-not $LogPath) { return }
    $line = '{0} {1}' -f (Get-UtcStamp), $Message
    try { Add-Content -LiteralPath $LogPath -Value $line -Encoding UTF8 } catch { }
}

function Limit-Text {
    param([string] $Text, [int] $Length)
    if ($null -eq $Text) { return '' }
    if ($Text.Length -le $Length) { return $Text }
    $Text.Substring(0, $Length)
}

function Get-SafeName {
    param([string] $Key)
    Limit-Text ($Key -replace '[^A-Za-z0-9_-]', '_') 100
}

function New-RandomName {
    # 128 random bits as 32 hex digits: the unguessable part of every file name of a run
    $bytes = New-Object byte[] 16
    $random = New-Object System.Security.Cryptography.RNGCryptoServiceProvider
    $random.GetBytes($bytes)
    $random.Dispose()
    -join ($bytes | ForEach-Object { $_.ToString('x2') })
}

function Write-TextFile {
    param([string] $Path, [string] $Text)
    [System.IO.File]::WriteAllText($Path, $Text, (New-Object System.Text.UTF8Encoding($true)))
}

function ConvertTo-WholeNumber {
    # digits from $Minimum to $Maximum; "" and "null" -> $Default
    param([string] $Text, [string] $Name, [int] $Minimum, [int] $Maximum, [int] $Default)
    $value = ([string] $Text).Trim().Trim([char[]] @([char] 34, [char] 39))
    if ($value -eq '' -or $value -eq 'null') { return $Default }
    if ($value -notmatch '^\d{1,9}$' -or [int] $value -lt $Minimum -or [int] $value -gt $Maximum) {
        throw ('{0}: must be a whole number from {1} to {2}, not {3}' -f $Name, $Minimum, $Maximum, $value)
    }
    [int] $value
}

# --- the state folder: SYSTEM and Administrators only (as windows-update.ps1) -----------------------

function New-StateDirectorySecurity {
    $security = New-Object System.Security.AccessControl.DirectorySecurity
    $security.SetAccessRuleProtection($true, $false)
    $inherit = [System.Security.AccessControl.InheritanceFlags]::ContainerInherit -bor `
        [System.Security.AccessControl.InheritanceFlags]::ObjectInherit
    foreach ($sid in @($SystemSid, $AdministratorsSid)) {
        $identity = New-Object System.Security.Principal.SecurityIdentifier -ArgumentList $sid
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule -ArgumentList @(
            $identity,
            [System.Security.AccessControl.FileSystemRights]::FullControl,
            $inherit,
            [System.Security.AccessControl.PropagationFlags]::None,
            [System.Security.AccessControl.AccessControlType]::Allow
        )
        $security.AddAccessRule($rule)
    }
    $security.SetOwner((New-Object System.Security.Principal.SecurityIdentifier -ArgumentList $AdministratorsSid))
    $security
}

function Test-StateDirectory {
    # $null when the folder is locked down, else what is wrong with it
    param([string] $Path)
    $item = Get-Item -LiteralPath $Path -Force
    if (-not $item.PSIsContainer) { return "$Path is not a folder" }
    if ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) { return "$Path is a junction or a link" }
    $sidType = [System.Security.Principal.SecurityIdentifier]
    $acl = [System.IO.Directory]::GetAccessControl($Path)
    $owner = $acl.GetOwner($sidType).Value
    if ($owner -ne $SystemSid -and $owner -ne $AdministratorsSid) {
        return "$Path is owned by $owner, not by SYSTEM or Administrators"
    }
    if (-not $acl.AreAccessRulesProtected) { return "$Path inherits permissions from its parent" }
    foreach ($rule in $acl.GetAccessRules($true, $true, $sidType)) {
        $who = $rule.IdentityReference.Value
        $allowed = ($who -eq $SystemSid -or $who -eq $AdministratorsSid)
        if (-not $allowed -or $rule.AccessControlType -ne [System.Security.AccessControl.AccessControlType]::Allow) {
            return ('{0} has an access rule for {1} ({2} {3})' -f $Path, $who, $rule.AccessControlType, $rule.FileSystemRights)
        }
    }
    $null
}

function Initialize-StateDirectory {
    # created with its ACL in one call (no moment with inherited permissions); an existing folder is refused
    # unless it is exactly that
    param([string] $Path)
    if (-not (Test-Path -LiteralPath $Path)) {
        [void] [System.IO.Directory]::CreateDirectory($Path, (New-StateDirectorySecurity))
    }
    $problem = Test-StateDirectory $Path
    if ($problem) {
        $message = ('refusing to run: the state folder is not locked down ({0}); delete it, or give it SYSTEM ' +
            'and Administrators full control only, inheritance off, owner Administrators') -f $problem
        throw $message
    }
}

function Get-RunStem {
    # one stem <key>.<random> per key: the first invocation of a key claims it, a repeat finds it
    param([string] $Directory, [string] $Safe)
    $claim = Join-Path $Directory ($Safe + '.claim')
    try {
        $stream = New-Object System.IO.FileStream -ArgumentList @(
            $claim, [System.IO.FileMode]::CreateNew, [System.IO.FileAccess]::Write, [System.IO.FileShare]::None)
        try {
            $stem = $Safe + '.' + (New-RandomName)
            $bytes = [System.Text.Encoding]::ASCII.GetBytes($stem)
            $stream.Write($bytes, 0, $bytes.Length)
        } finally {
            $stream.Dispose()
        }
        return @{ stem = $stem; first = $true }
    } catch {
        if (-not (Test-Path -LiteralPath $claim)) { throw }
        Start-Sleep -Milliseconds 500  # the first invocation of the key may still be writing it
        $stem = ([System.IO.File]::ReadAllText($claim)).Trim()
        if ($stem -notmatch ('^' + [regex]::Escape($Safe) + '\.[0-9a-f]{32}$')) {
            throw "the claim file $claim is damaged: delete it"
        }
        return @{ stem = $stem; first = $false }
    }
}

function Get-RunFiles {
    param([string] $Directory, [string] $Stem)
    @{
        command = Join-Path $Directory ($Stem + '.command.ps1')
        running = Join-Path $Directory ($Stem + '.running.json')
        result  = Join-Path $Directory ($Stem + '.result.json')
        log     = Join-Path $Directory ($Stem + '.log')
    }
}

function Save-ResultOnce {
    # the run's result, unless one was saved already: $true if ours
    param([string] $Path, [string] $Json)
    $partial = $Path + '.' + (New-RandomName) + '.partial'
    Write-TextFile -Path $partial -Text $Json
    try {
        [System.IO.File]::Move($partial, $Path)
        return $true
    } catch {
        Remove-Item -LiteralPath $partial -Force -ErrorAction SilentlyContinue
        if (Test-Path -LiteralPath $Path) { return $false }
        throw
    }
}

function Remove-OldRunFiles {
    param([string] $Directory)
    $cutoff = [DateTime]::UtcNow.AddDays(-$RetentionDays)
    Get-ChildItem -LiteralPath $Directory -File |
        Where-Object { $_.LastWriteTimeUtc -lt $cutoff -and $_.Name -match '\.(result\.json|log|claim)$' } |
        ForEach-Object { Remove-Item -LiteralPath $_.FullName -Force -ErrorAction SilentlyContinue }
}

# --- the result: the control plane's command run -------------------------------------------------------

function New-CommandResult {
    param([string] $Key, [int] $ExitCode, [string] $Output, [bool] $TimedOut, [string] $StartedAt)
    [ordered]@{
        key        = $Key
        state      = 'finished'
        exitCode   = $ExitCode
        output     = Limit-Text $Output $MaxOutput
        timedOut   = $TimedOut
        startedAt  = $StartedAt
        finishedAt = Get-UtcStamp
    }
}

function ConvertTo-ResultJson {
    param($Result)
    ConvertTo-Json -InputObject $Result -Depth 3 -Compress
}

# --- running the command -----------------------------------------------------------------------------

function New-OutputBuffer {
    # reads one redirected stream of the child in chunks; keeps at most $MaxOutput characters, drains the rest
    # (a child blocked on a full pipe would never exit)
    param([System.IO.StreamReader] $Reader)
    $buffer = New-Object char[] 4096
    @{ reader = $Reader; buffer = $buffer; text = (New-Object System.Text.StringBuilder); dropped = $false
        done = $false; task = $Reader.ReadAsync($buffer, 0, $buffer.Length) }
}

function Receive-OutputChunk {
    # takes what a finished read delivered and starts the next; $true when something was read
    param($Stream)
    if ($Stream.done -or -not $Stream.task.IsCompleted) { return $false }
    $count = 0
    if (-not $Stream.task.IsFaulted -and -not $Stream.task.IsCanceled) { $count = [int] $Stream.task.Result }
    if ($count -le 0) {
        $Stream.done = $true
        return $false
    }
    $room = $MaxOutput - $Stream.text.Length
    if ($room -gt 0) { [void] $Stream.text.Append($Stream.buffer, 0, [Math]::Min($room, $count)) }
    if ($count -gt $room) { $Stream.dropped = $true }
    $Stream.task = $Stream.reader.ReadAsync($Stream.buffer, 0, $Stream.buffer.Length)
    $true
}

function Get-ProcessTree {
    # the process and every process it started, children first
    param([int] $ProcessId)
    $children = @(Get-CimInstance -ClassName Win32_Process -Filter ('ParentProcessId = {0}' -f $ProcessId) `
        -ErrorAction SilentlyContinue)
    foreach ($child in $children) { Get-ProcessTree -ProcessId ([int] $child.ProcessId) }
    $ProcessId
}

function Stop-ProcessTree {
    param([int] $ProcessId, [string] $LogPath)
    foreach ($id in @(Get-ProcessTree -ProcessId $ProcessId)) {
        Stop-Process -Id $id -Force -ErrorAction SilentlyContinue
        Write-Log "stopped process $id" $LogPath
    }
}

function Invoke-HookCommand {
    # the command, from its file in the locked folder, in a child PowerShell: @{ exitCode; output; timedOut }
    param([string] $ScriptPath, [int] $Seconds, [string] $LogPath)
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
    $info.Arguments = '-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{0}"' -f $ScriptPath
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $info.RedirectStandardInput = $true
    $info.WorkingDirectory = $env:SystemRoot
    $process = [System.Diagnostics.Process]::Start($info)
    $process.StandardInput.Close()  # a command that reads its input ends instead of waiting
    Write-Log ('started process {0}, timeout {1} s' -f $process.Id, $Seconds) $LogPath
    $out = New-OutputBuffer $process.StandardOutput
    $err = New-OutputBuffer $process.StandardError
    $stopAt = [DateTime]::UtcNow.AddSeconds($Seconds)
    $timedOut = $false
    while (-not $process.HasExited) {
        $read = (Receive-OutputChunk $out) -bor (Receive-OutputChunk $err)
        if ([DateTime]::UtcNow -ge $stopAt) {
            $timedOut = $true
            Write-Log "the command outlived its timeout of $Seconds s: stopping it" $LogPath
            Stop-ProcessTree -ProcessId $process.Id -LogPath $LogPath
            [void] $process.WaitForExit(10000)
            break
        }
        if (-not $read) { [void] $process.WaitForExit(100) }
    }
    $drainUntil = [DateTime]::UtcNow.AddSeconds($DrainSeconds)
    while ((-not $out.done -or -not $err.done) -and [DateTime]::UtcNow -lt $drainUntil) {
        $read = (Receive-OutputChunk $out) -bor (Receive-OutputChunk $err)
        if (-not $read) { Start-Sleep -Milliseconds 50 }
    }
    $output = $out.text.ToString().TrimEnd()
    $errors = $err.text.ToString().TrimEnd()
    if ($errors) { $output = ($output + [Environment]::NewLine + $errors).Trim() }
    if ($out.dropped -or $err.dropped) { Write-Log "output cut at $MaxOutput characters per stream" $LogPath }
    $code = -1
    if (-not $timedOut) { $code = [int] $process.ExitCode }
    $process.Dispose()
    @{ exitCode = $code; output = (Limit-Text $output $MaxOutput); timedOut = $timedOut }
}

function Test-RunAlive {
    # is the invocation that wrote the running marker still running? (its process id and start time)
    param($Marker)
    if ($null -eq $Marker) { return $false }
    $process = Get-Process -Id ([int] $Marker.pid) -ErrorAction SilentlyContinue
    if ($null -eq $process) { return $false }
    try { return ($process.StartTime.ToUniversalTime().ToString('o') -eq [string] $Marker.processStart) } catch { return $true }
}

function Read-JsonFile {
    param([string] $Path)
    if (-not (Test-Path -LiteralPath $Path)) { return $null }
    try { Get-Content -LiteralPath $Path -Raw | ConvertFrom-Json } catch { $null }
}

function Wait-FirstRun {
    # a repeat of a key whose first invocation has not saved a result: wait while it runs; if it is gone,
    # answer the run as interrupted (never run the command twice)
    param($Files, [string] $Claim, [string] $Key, [string] $StartedAt, [int] $Seconds)
    $giveUpAt = [DateTime]::UtcNow.AddSeconds($Seconds + $WaitGraceSeconds)
    while (-not (Test-Path -LiteralPath $Files.result)) {
        $marker = Read-JsonFile $Files.running
        $alive = Test-RunAlive $marker
        if ($null -eq $marker -and (Test-Path -LiteralPath $Claim)) {
            # claimed moments ago: the first invocation has not written its marker yet
            $alive = ([DateTime]::UtcNow - (Get-Item -LiteralPath $Claim).LastWriteTimeUtc).TotalSeconds -lt 30
        }
        if (-not $alive -or [DateTime]::UtcNow -gt $giveUpAt) {
            $why = 'the first run of this key was interrupted (the server restarted or the package was stopped) ' +
                'before its result was saved: it is not run again'
            if ($alive) { $why = 'the first run of this key gave no result within its timeout plus {0} s' -f $WaitGraceSeconds }
            Write-Log $why $Files.log
            [void] (Save-ResultOnce -Path $Files.result -Json (ConvertTo-ResultJson (New-CommandResult -Key $Key `
                -ExitCode -1 -Output $why -TimedOut $alive -StartedAt $StartedAt)))
            Remove-Item -LiteralPath $Files.command -Force -ErrorAction SilentlyContinue
            Remove-Item -LiteralPath $Files.running -Force -ErrorAction SilentlyContinue
            break
        }
        Start-Sleep -Seconds 1
    }
}

# --- entry point -------------------------------------------------------------------------------------

$startedAt = Get-UtcStamp
$key = $IdempotencyKey.Trim()
if (-not $key) { exit 2 }  # no key: nothing can be kept or answered (the driver always sends one)
$safe = Get-SafeName $key
$hookDirectory = Join-Path $StateDirectory 'hooks'
try {
    Initialize-StateDirectory -Path $StateDirectory
    Initialize-StateDirectory -Path $hookDirectory
    $claimed = Get-RunStem -Directory $hookDirectory -Safe $safe
} catch {
    # no safe place for files: answer from memory, run nothing
    Write-Output (ConvertTo-ResultJson (New-CommandResult -Key $key -ExitCode -1 -Output $_.Exception.Message `
        -TimedOut $false -StartedAt $startedAt))
    exit 1
}
$files = Get-RunFiles -Directory $hookDirectory -Stem $claimed.stem
$logFile = $files.log

try {
    if (Test-Path -LiteralPath $files.result) {
        Write-Log "$key already ran: answering its result again" $logFile
    } elseif (-not $claimed.first) {
        Write-Log "$key was started by an earlier invocation: waiting for its result" $logFile
        $seconds = $MaxTimeoutSeconds
        try { $seconds = ConvertTo-WholeNumber -Text $TimeoutSeconds -Name 'TimeoutSeconds' -Minimum $MinTimeoutSeconds `
            -Maximum $MaxTimeoutSeconds -Default 60 } catch { }
        Wait-FirstRun -Files $files -Claim (Join-Path $hookDirectory ($safe + '.claim')) -Key $key `
            -StartedAt $startedAt -Seconds $seconds
    } else {
        $problem = ''
        $seconds = 60
        try {
            $seconds = ConvertTo-WholeNumber -Text $TimeoutSeconds -Name 'TimeoutSeconds' -Minimum $MinTimeoutSeconds `
                -Maximum $MaxTimeoutSeconds -Default 60
        } catch {
            $problem = 'invalid package parameters: ' + $_.Exception.Message
        }
        if (-not $problem -and -not $Command.Trim()) { $problem = 'invalid package parameters: patchaas.command is empty' }
        if ($problem) {
            Write-Log $problem $logFile
            $result = New-CommandResult -Key $key -ExitCode -1 -Output $problem -TimedOut $false -StartedAt $startedAt
        } else {
            # the intent before the effect: a repeat finds this marker and never starts the command again
            $self = Get-Process -Id $PID
            Write-TextFile -Path $files.running -Text (ConvertTo-Json -Compress -InputObject ([ordered]@{
                pid = $PID; processStart = $self.StartTime.ToUniversalTime().ToString('o'); startedAt = $startedAt }))
            Write-TextFile -Path $files.command -Text $Command
            Write-Log "running $key (timeout $seconds s)" $logFile
            $ran = Invoke-HookCommand -ScriptPath $files.command -Seconds $seconds -LogPath $logFile
            Write-Log ('exit code {0}, timed out {1}' -f $ran.exitCode, $ran.timedOut) $logFile
            $result = New-CommandResult -Key $key -ExitCode $ran.exitCode -Output $ran.output -TimedOut $ran.timedOut `
                -StartedAt $startedAt
        }
        [void] (Save-ResultOnce -Path $files.result -Json (ConvertTo-ResultJson $result))
        Remove-Item -LiteralPath $files.command -Force -ErrorAction SilentlyContinue
        Remove-Item -LiteralPath $files.running -Force -ErrorAction SilentlyContinue
    }
    Remove-OldRunFiles -Directory $hookDirectory
    Write-Output (Get-Content -LiteralPath $files.result -Raw).Trim()
    exit 0
} catch {
    Write-Log "failed: $($_.Exception.Message)" $logFile
    Write-Output (ConvertTo-ResultJson (New-CommandResult -Key $key -ExitCode -1 `
        -Output ('the hook package failed: ' + $_.Exception.Message) -TimedOut $false -StartedAt $startedAt))
    exit 1
}
