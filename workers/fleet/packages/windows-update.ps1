<#
.SYNOPSIS
    One cycle of the patchaas Windows update package: search, download, install, report.

.DESCRIPTION
    Runs on Windows Server 2012 / 2012 R2 (Windows PowerShell 3.0, .NET 4.5), started by the control plane's
    Execute Package. windows-update.manifest.json beside this script is the contract: which package parameter
    binds to which script parameter, and the wire format of each. Every parameter arrives as a quoted string
    and is coerced here (lists: comma-separated or a JSON list; "" and "null" are "not set").

    1. Checks the state folder C:\ProgramData\patchaas: created SYSTEM + Administrators only (inheritance off,
       owner Administrators); an existing folder with another owner or any other ACE is refused.
    2. Copies this script into that folder and registers it as a one-off scheduled task under SYSTEM (WUA
       refuses to download or install from a remote session with E_ACCESSDENIED). The task's command line
       names only the script copy and its job file; the report token travels in the job file (locked folder).
    3. The SYSTEM task searches WUA (-UpdateService picks WSUS, Windows Update or Microsoft Update), keeps what
       the run's selection admits (schemas/selection.py PatchSelection.admits, rule for rule), and lists every
       other update in `skipped` with its reason. A search whose ResultCode is not 2 is reported as such
       (`search_result_code`), never as "nothing left". With -ScanOnly it reports what would be installed and
       never creates a downloader or an installer.
    4. Otherwise it takes the server-wide lock (mutex Global\patchaas-windows-update), refuses to install while
       a reboot is pending or the installer is busy (`blocked_by`, nothing counted as failed), installs an
       update that requires exclusive handling alone, and starts no install too close to -Deadline.
    5. The SYSTEM task saves the cycle report (schemas/fleet.py CycleReport) and posts it; the outer run posts
       "running" heartbeats while it waits, posts the report again (an idempotent replay), and builds and posts
       a failure report itself when the task dies without a result. A run orphaned by a reboot is reported by
       the next invocation of the package on the server.

    Idempotent per -IdempotencyKey: invoked again with the same key, the package posts the same report again.
    This script never reboots: the orchestrator does, following the run's reboot policy.
    docs/WINDOWS.md is the operator's guide.
#>
[CmdletBinding(DefaultParameterSetName = 'Run')]
param(
    # patchaas.executionId: the execution, e.g. VA1-132457
    [Parameter(ParameterSetName = 'Run')]
    [string] $ExecutionId = '',

    # patchaas.cycle: the cycle number, 1 to 1000
    [Parameter(ParameterSetName = 'Run')]
    [string] $Cycle = '',

    # patchaas.idempotencyKey: <execution>:package:<cycle>, the report's key
    [Parameter(ParameterSetName = 'Run')]
    [string] $IdempotencyKey = '',

    # patchaas.excludeKBs: the execution's quarantined KBs (failed too often, update loops)
    [Parameter(ParameterSetName = 'Run')]
    [string] $QuarantinedKbs = '',

    # patchaas.reportUrl / patchaas.reportToken: the report channel and its per-execution bearer token
    [Parameter(ParameterSetName = 'Run')]
    [string] $ReportUrl = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $ReportToken = '',

    # patchaas.deadline: when the engine stops waiting for this cycle (ISO-8601 UTC or epoch seconds)
    [Parameter(ParameterSetName = 'Run')]
    [string] $Deadline = '',

    # patchaas.heartbeatSeconds: how often a "running" report is posted while the cycle runs (0: never)
    [Parameter(ParameterSetName = 'Run')]
    [string] $HeartbeatSeconds = '',

    # patchaas.updateService: Default, WSUS, WindowsUpdate or MicrosoftUpdate
    [Parameter(ParameterSetName = 'Run')]
    [string] $UpdateService = '',

    # the run's selection (schemas/selection.py): includeKbs, excludeKbs, classifications, severities,
    # approveAfterDays, rebootPolicy, scanOnly
    [Parameter(ParameterSetName = 'Run')]
    [string] $IncludeKbs = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $ExcludeKbs = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $Classifications = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $Severities = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $ApproveAfterDays = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $RebootPolicy = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $ScanOnly = '',

    # local overrides (not sent by the engine)
    [Parameter(ParameterSetName = 'Run')]
    [string] $Criteria = "IsInstalled=0 and Type='Software' and IsHidden=0",

    [Parameter(ParameterSetName = 'Run')]
    [string] $StateDirectory = (Join-Path $env:ProgramData 'patchaas'),

    # the SYSTEM task: this script, copied into the state folder, with its job file
    [Parameter(Mandatory = $true, ParameterSetName = 'Worker')]
    [switch] $AsSystemWorker,

    [Parameter(Mandatory = $true, ParameterSetName = 'Worker')]
    [string] $JobPath
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'

# Windows PowerShell 3-5 may carry an extended `Count` on arrays that makes ConvertTo-Json write
# {"value": [...], "Count": n} instead of [...]: drop it for this session.
Remove-TypeData -TypeName System.Array -ErrorAction SilentlyContinue

# Every post (the outer run's and the SYSTEM task's) needs TLS 1.2: .NET 4.5 on Windows Server 2012 offers only
# SSL 3 and TLS 1.0 unless asked.
[Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor `
    [Net.SecurityProtocolType]::Tls12

# The script's own text, to copy into the locked folder: $PSCommandPath is empty when the control plane runs the
# script as a script block.
$ScriptSource = $null
try {
    if ($PSCommandPath) { $ScriptSource = [System.IO.File]::ReadAllText($PSCommandPath) }
    else { $ScriptSource = $MyInvocation.MyCommand.ScriptBlock.ToString() }
} catch {
    $ScriptSource = $null
}

$ResultNotStarted = 0          # OperationResultCode: orcNotStarted
$ResultInProgress = 1
$ResultSucceeded = 2
$ResultSucceededWithErrors = 3
$ResultFailed = 4
$ResultAborted = 5
# HRESULTs, signed as WUA and .NET give them
$HResultAllFailed = -2145124318            # 0x80240022 WU_E_ALL_UPDATES_FAILED
$HResultInstallNotAllowed = -2145124330    # 0x80240016 WU_E_INSTALL_NOT_ALLOWED (a reboot or an install pending)
$HResultOperationInProgress = -2145124316  # 0x80240024 WU_E_OPERATIONINPROGRESS
$HResultFail = -2147467259                 # 0x80004005 E_FAIL

$DefaultCycleMinutes = 55       # no -Deadline: the engine's default package timeout (60 min) less a margin
$ReportReserveMinutes = 5       # kept free before the deadline to save and post the report
$StopInstallsMinutes = 10       # no installer call starts with less than this left (before the reserve)
$NearDeadlineMinutes = 30       # less than this left: one update per installer call
$TaskGraceMinutes = 10          # the task may outlive the deadline by this much (an install started in time ends)
$DefaultHeartbeatSeconds = 300
$LockWaitSeconds = 300          # how long a cycle waits for another run's install lock
$BusyWaitSeconds = 180          # how long a cycle waits for IUpdateInstaller.IsBusy to clear
$RetentionDays = 30             # results and logs of older cycles are deleted
$LockName = 'Global\patchaas-windows-update'
$MicrosoftUpdateServiceId = '7971f918-a847-4430-9279-4a52d1efe18d'
$SystemSid = 'S-1-5-18'
$AdministratorsSid = 'S-1-5-32-544'
$CbsRebootPendingKey = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending'
$WuRebootRequiredKey = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired'
$RebootPolicies = @('if_required', 'never', 'always')
$UpdateServices = @('Default', 'WSUS', 'WindowsUpdate', 'MicrosoftUpdate')
$MsrcSeverities = @('Critical', 'Important', 'Moderate', 'Low', 'Unspecified')

# --- small helpers -------------------------------------------------------------------------------

function Get-UtcStamp {
    [DateTime]::UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'")
}

function ConvertTo-UtcStamp {
    param([DateTime] $Moment)
    $Moment.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'")
}

function ConvertFrom-UtcStamp {
    param([string] $Text)
    $styles = [Globalization.DateTimeStyles]::AdjustToUniversal -bor [Globalization.DateTimeStyles]::AssumeUniversal
    [DateTime]::Parse($Text, [Globalization.CultureInfo]::InvariantCulture, $styles)
}

function Write-Log {
    # never throws: a log that cannot be written must not end the cycle
    param([string] $Message, [string] $LogPath = '')
    $line = '{0} {1}' -f (Get-UtcStamp), $Message
    try { Write-Host $line } catch { }
    if ($LogPath) {
        try { Add-Content -LiteralPath $LogPath -Value $line -Encoding UTF8 } catch { }
    }
}

function Get-InnerException {
    param($ErrorRecord)
    $inner = $ErrorRecord.Exception
    while ($null -ne $inner.InnerException) { $inner = $inner.InnerException }
    $inner
}

function Get-ErrorHResult {
    # the HRESULT of a failed WUA call (a COMException), E_FAIL for anything else
    param($ErrorRecord)
    $inner = Get-InnerException $ErrorRecord
    if ($inner -is [System.Runtime.InteropServices.COMException]) { return [int] $inner.ErrorCode }
    $HResultFail
}

function ConvertTo-SignedHResult {
    param([long] $Value)
    if ($Value -gt 2147483647) { return [int] ($Value - 4294967296) }
    [int] $Value
}

function Format-HResult {
    param([long] $Value)
    '0x{0:X8}' -f (ConvertTo-SignedHResult $Value)
}

function Limit-Text {
    param([string] $Text, [int] $Length)
    if ($null -eq $Text) { return '' }
    if ($Text.Length -le $Length) { return $Text }
    $Text.Substring(0, $Length)
}

function Get-OrNull {
    param([string] $Text)
    if ($Text) { return $Text }
    $null
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

# --- parameters: every one arrives as a string -----------------------------------------------------

function ConvertTo-StringList {
    # "a,b", "a; b", '["a","b"]', "['a', 'b']" -> a, b (one per output); "", "null", "[]" -> nothing
    param([string] $Text)
    $body = ([string] $Text).Trim()
    if ($body.StartsWith('[') -and $body.EndsWith(']')) { $body = $body.Substring(1, $body.Length - 2).Trim() }
    if ($body -eq '' -or $body -eq 'null' -or $body -eq 'none') { return }
    $quotes = [char[]] @([char] 34, [char] 39)
    foreach ($item in ($body -split '[,;]')) {
        $name = $item.Trim().Trim($quotes).Trim()
        if ($name -and $name -ne 'null') { $name }
    }
}

function ConvertTo-KbList {
    # KB ids, "KB3135998" or "3135998"; anything else is refused (a dropped include would install everything)
    param([string] $Text, [string] $Name)
    foreach ($item in @(ConvertTo-StringList $Text)) {
        $digits = $item.ToUpperInvariant() -replace '^KB', ''
        if ($digits -notmatch '^\d{6,8}$') { throw ('{0}: not a KB number (KB and 6 to 8 digits): {1}' -f $Name, $item) }
        'KB' + $digits
    }
}

function ConvertTo-Choice {
    # one of $Choices, matched case-insensitively, in its canonical spelling; "" or "null" -> $Default
    param([string] $Text, [string] $Name, [string[]] $Choices, [string] $Default)
    $value = ([string] $Text).Trim().Trim([char[]] @([char] 34, [char] 39))
    if ($value -eq '' -or $value -eq 'null') { return $Default }
    foreach ($choice in $Choices) {
        if ($choice -eq $value) { return $choice }
    }
    throw ('{0}: {1} is not one of {2}' -f $Name, $value, ($Choices -join ', '))
}

function ConvertTo-ChoiceList {
    param([string] $Text, [string] $Name, [string[]] $Choices)
    foreach ($item in @(ConvertTo-StringList $Text)) { ConvertTo-Choice -Text $item -Name $Name -Choices $Choices -Default '' }
}

function ConvertTo-Flag {
    # true/false, 1/0, yes/no, on/off, $true/$false; "" and "null" are false
    param([string] $Text, [string] $Name)
    $value = ([string] $Text).Trim().Trim([char[]] @([char] 34, [char] 39))
    if ($value -match '^(|null|none|false|0|no|off|\$false)$') { return $false }
    if ($value -match '^(true|1|yes|on|\$true)$') { return $true }
    throw ('{0}: not true or false: {1}' -f $Name, $value)
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

function ConvertTo-Deadline {
    # ISO-8601 (UTC unless it says otherwise) or Unix epoch seconds -> a UTC DateTime; "" -> $null
    param([string] $Text)
    $value = ([string] $Text).Trim().Trim([char[]] @([char] 34, [char] 39))
    if ($value -eq '' -or $value -eq 'null') { return $null }
    if ($value -match '^\d{9,11}(\.\d+)?$') {
        $epoch = New-Object DateTime -ArgumentList @(1970, 1, 1, 0, 0, 0, [DateTimeKind]::Utc)
        return $epoch.AddSeconds([double] $value)
    }
    $styles = [Globalization.DateTimeStyles]::AdjustToUniversal -bor [Globalization.DateTimeStyles]::AssumeUniversal
    $parsed = [DateTime]::MinValue
    if ([DateTime]::TryParse($value, [Globalization.CultureInfo]::InvariantCulture, $styles, [ref] $parsed)) {
        return $parsed
    }
    throw ('Deadline: neither ISO-8601 UTC nor epoch seconds: {0}' -f $value)
}

# --- the state folder: SYSTEM and Administrators only ----------------------------------------------

function New-StateDirectorySecurity {
    # full control for SYSTEM and BUILTIN\Administrators, nothing inherited from C:\ProgramData (whose ACL lets
    # every user create folders and read files), owner Administrators
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
    # unless it is exactly that: somebody else may have created it first to read or plant files
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
    # one stem <key>.<random> per key: the first invocation of a key claims it, a replay finds it
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
        return $stem
    } catch {
        if (-not (Test-Path -LiteralPath $claim)) { throw }
        Start-Sleep -Milliseconds 500  # another invocation of the key may still be writing it
        $stem = ([System.IO.File]::ReadAllText($claim)).Trim()
        if ($stem -notmatch ('^' + [regex]::Escape($Safe) + '\.[0-9a-f]{32}$')) {
            throw "the claim file $claim is damaged: delete it"
        }
        return $stem
    }
}

function Get-RunFiles {
    param([string] $Directory, [string] $Stem)
    @{
        script   = Join-Path $Directory ($Stem + '.ps1')
        job      = Join-Path $Directory ($Stem + '.job.json')
        progress = Join-Path $Directory ($Stem + '.progress.json')
        result   = Join-Path $Directory ($Stem + '.result.json')
        log      = Join-Path $Directory ($Stem + '.log')
    }
}

function Copy-ScriptToState {
    # the SYSTEM task runs this copy: the original may sit where a non-administrator can change it
    param([string] $Path)
    if (-not $ScriptSource) { throw 'cannot read this script to copy it into the state folder' }
    Write-TextFile -Path $Path -Text $ScriptSource
    $Path
}

function Save-ResultOnce {
    # the cycle's result, unless one was saved already (the SYSTEM task and the outer run may race): $true if ours
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

function Read-JsonFile {
    param([string] $Path)
    if (-not (Test-Path -LiteralPath $Path)) { return $null }
    try { Get-Content -LiteralPath $Path -Raw | ConvertFrom-Json } catch { $null }
}

function Set-CycleProgress {
    # what the SYSTEM task is doing and what it has installed so far: for heartbeats, and for the failure report
    # the outer run builds if the task dies. Never throws.
    param($Job, [string] $Phase, $Outcome)
    try {
        $results = @()
        $remaining = @()
        if ($null -ne $Outcome) {
            $results = @($Outcome.results)
            $remaining = @($Outcome.remaining)
        }
        $document = [ordered]@{ phase = $Phase; at = Get-UtcStamp; results = $results; remaining = $remaining }
        $temporary = [string] $Job.progress + '.tmp'
        Write-TextFile -Path $temporary -Text (ConvertTo-Json -InputObject $document -Depth 6 -Compress)
        Move-Item -LiteralPath $temporary -Destination ([string] $Job.progress) -Force
    } catch {
        Write-Log "progress not saved: $($_.Exception.Message)" ([string] $Job.log)
    }
}

# --- what WUA says about an update ---------------------------------------------------------------------

function Get-UpdateInfo {
    param($Update)
    $kbs = @()
    for ($i = 0; $i -lt $Update.KBArticleIDs.Count; $i++) {
        $kb = 'KB' + ([string] $Update.KBArticleIDs.Item($i)).Trim()
        if ($kb -match '^KB\d{6,8}$') { $kbs += $kb }
    }
    $first = $null
    if ($kbs.Count -gt 0) { $first = $kbs[0] }
    $title = Limit-Text ([string] $Update.Title) 500
    if (-not $title) { $title = [string] $Update.Identity.UpdateID }
    @{
        update         = $Update
        kb             = $first
        kbs            = $kbs
        id             = [string] $Update.Identity.UpdateID
        revision       = [int] $Update.Identity.RevisionNumber
        title          = $title
        classification = Get-UpdateClassification $Update
    }
}

function Get-UpdateClassification {
    param($Update)
    foreach ($category in $Update.Categories) {
        if ($category.Type -eq 'UpdateClassification') { return [string] $category.Name }
    }
    'Updates'
}

function Get-UpdateSeverity {
    # IUpdate.MsrcSeverity: Critical, Important, Moderate, Low, or empty (Unspecified: non-security updates)
    param($Update)
    $severity = [string] $Update.MsrcSeverity
    if ($severity.Trim()) { $severity.Trim() } else { 'Unspecified' }
}

function Get-UpdateReleaseDate {
    # IUpdate.LastDeploymentChangeTime: when the update was last published, in UTC
    param($Update)
    [DateTime]::SpecifyKind([DateTime] $Update.LastDeploymentChangeTime, [DateTimeKind]::Utc)
}

function Test-AnyIn {
    param([string[]] $Items, [string[]] $List)
    foreach ($item in $Items) {
        if ($List -contains $item) { return $true }
    }
    $false
}

function Test-UpdateSelected {
    # The run's selection, as schemas/selection.py PatchSelection.admits applies it (exclusions apart):
    # returns $null when the update may be installed, else why not.
    param($Update, [string[]] $Kbs, $Selection, [DateTime] $Now)
    $include = @($Selection.include)
    $listed = Test-AnyIn $Kbs $include
    if ($include.Count -gt 0 -and -not $listed) { return 'not in includeKbs' }
    $classes = @($Selection.classifications)
    $classification = Get-UpdateClassification $Update
    if ($classes.Count -gt 0 -and $classes -notcontains $classification) { return "classification $classification" }
    if ($listed) { return $null }  # approved by name: severity and age do not hold it back
    $severities = @($Selection.severities)
    $severity = Get-UpdateSeverity $Update
    if ($severities.Count -gt 0 -and $severities -notcontains $severity) { return "severity $severity" }
    $days = [int] $Selection.approveAfterDays
    if ($days -ge 0) {
        if ($null -eq $Update.LastDeploymentChangeTime) { return 'no release date (approveAfterDays)' }
        $released = Get-UpdateReleaseDate $Update
        if ($Now - $released -lt [TimeSpan]::FromDays($days)) {
            return 'released {0:yyyy-MM-dd}, less than {1} days ago (approveAfterDays)' -f $released, $days
        }
    }
    $null
}

function Get-UpdateUrl {
    param($Update, [string] $Kb)
    if ($Update.SupportUrl) { return [string] $Update.SupportUrl }
    'https://support.microsoft.com/en-us/kb/' + ($Kb -replace '^KB', '')
}

# --- the report: schemas/fleet.py UpdateResult, SkippedUpdate and CycleReport, key for key -----------------

function New-UpdateResult {
    param(
        [string] $Kb,
        [string] $Title,
        [string] $Url,
        [string] $Classification,
        [int] $ResultCode,
        [long] $HResult,
        [bool] $RebootRequired,
        [string] $UpdateId = '',
        [int] $RevisionNumber = 0
    )
    [ordered]@{
        kb              = $Kb
        title           = $Title
        url             = $Url
        classification  = $Classification
        result_code     = $ResultCode
        hresult         = $HResult
        reboot_required = $RebootRequired
        update_id       = Get-OrNull $UpdateId
        revision_number = $RevisionNumber
    }
}

function New-ResultOf {
    # an UpdateResult of a candidate (Get-UpdateInfo) and what happened to it
    param($Info, [int] $ResultCode, [long] $HResult, [bool] $RebootRequired)
    New-UpdateResult -Kb $Info.kb -Title $Info.title -Url (Get-UpdateUrl $Info.update $Info.kb) `
        -Classification $Info.classification -ResultCode $ResultCode -HResult $HResult `
        -RebootRequired $RebootRequired -UpdateId $Info.id -RevisionNumber $Info.revision
}

function New-SkippedUpdate {
    param([string] $UpdateId, [int] $RevisionNumber, [string] $Kb, [string] $Title, [string] $Reason)
    [ordered]@{
        update_id       = Get-OrNull $UpdateId
        revision_number = $RevisionNumber
        kb              = Get-OrNull $Kb
        title           = $Title
        reason          = Limit-Text $Reason 200
    }
}

function New-CycleReport {
    param(
        [string] $Key,
        [ValidateSet('running', 'finished')]
        [string] $State = 'finished',
        [string] $StartedAt,
        [string] $FinishedAt = '',
        [object[]] $Updates = @(),
        [int] $ResultCode,
        [long] $HResult = 0,
        [bool] $RebootRequired = $false,
        [string[]] $Excluded = @(),
        [string] $BlockedBy = '',
        [string[]] $Remaining = @(),
        [object] $SearchResultCode = $null,
        [string[]] $SearchWarnings = @(),
        [object[]] $Skipped = @(),
        [string] $Phase = '',
        [string] $Failure = ''
    )
    $searchCode = $null
    if ($null -ne $SearchResultCode) { $searchCode = [int] $SearchResultCode }
    [ordered]@{
        key                = $Key
        state              = $State
        started_at         = $StartedAt
        finished_at        = Get-OrNull $FinishedAt
        updates            = @($Updates | Where-Object { $null -ne $_ })
        result_code        = $ResultCode
        hresult            = $HResult
        reboot_required    = $RebootRequired
        excluded           = @($Excluded | Where-Object { $_ })
        blocked_by         = Get-OrNull $BlockedBy
        remaining          = @($Remaining | Where-Object { $_ })
        search_result_code = $searchCode
        search_warnings    = @($SearchWarnings | Where-Object { $_ } | Select-Object -First 50)
        skipped            = @($Skipped | Where-Object { $null -ne $_ })
        phase              = Get-OrNull (Limit-Text $Phase 200)
        error              = Get-OrNull (Limit-Text $Failure 1000)
    }
}

function ConvertTo-ReportJson {
    param($Report)
    ConvertTo-Json -InputObject $Report -Depth 6 -Compress
}

function New-FailureReport {
    # a cycle that ended without the SYSTEM task's report: what it had installed so far (its progress file), the
    # rest remaining, result Failed with the reason in words
    param([string] $Key, [string] $StartedAt, [string] $ProgressPath, [string] $Message, [long] $HResult)
    $updates = @()
    $remaining = @()
    $progress = Read-JsonFile $ProgressPath
    if ($null -ne $progress) {
        $updates = @($progress.results)
        $remaining = @($progress.remaining)
    }
    New-CycleReport -Key $Key -StartedAt $StartedAt -FinishedAt (Get-UtcStamp) -Updates $updates `
        -ResultCode $ResultFailed -HResult $HResult -RebootRequired (Test-RebootPending) -Remaining $remaining `
        -Failure $Message
}

# --- may the installer run now? ------------------------------------------------------------------------

function Get-PendingRebootReasons {
    # every sign that a reboot is owed before more can be installed (one reason per output)
    try {
        if ((New-Object -ComObject 'Microsoft.Update.SystemInfo').RebootRequired) { 'Microsoft.Update.SystemInfo.RebootRequired' }
    } catch { }
    if (Test-Path -LiteralPath $CbsRebootPendingKey) { 'Component Based Servicing\RebootPending' }
    if (Test-Path -LiteralPath $WuRebootRequiredKey) { 'WindowsUpdate\Auto Update\RebootRequired' }
}

function Test-RebootPending {
    @(Get-PendingRebootReasons).Count -gt 0
}

function Get-InstallBlocker {
    # Before the first Install() of a cycle: 'reboot_pending', 'installer_busy' or $null. Installing with a reboot
    # pending fails with WU_E_INSTALL_NOT_ALLOWED; while another install runs, with WU_E_OPERATIONINPROGRESS.
    param($Installer, $Planned, [DateTime] $Deadline, [string] $LogPath)
    $pending = @(Get-PendingRebootReasons)
    if ($Installer.RebootRequiredBeforeInstallation) { $pending += 'IUpdateInstaller.RebootRequiredBeforeInstallation' }
    foreach ($info in $Planned) {
        if ($info.update.RebootRequired) { $pending += ('IUpdate.RebootRequired of {0}' -f $info.kb) }
    }
    if ($pending.Count -gt 0) {
        Write-Log ('a reboot is pending ({0}): installing nothing this cycle' -f ($pending -join ', ')) $LogPath
        return 'reboot_pending'
    }
    $waitUntil = [DateTime]::UtcNow.AddSeconds($BusyWaitSeconds)
    if ($waitUntil -gt $Deadline) { $waitUntil = $Deadline }
    while ($Installer.IsBusy) {
        if ([DateTime]::UtcNow -ge $waitUntil) {
            Write-Log 'the Windows Update installer is busy (IUpdateInstaller.IsBusy): installing nothing this cycle' $LogPath
            return 'installer_busy'
        }
        Start-Sleep -Seconds 15
    }
    $null
}

function Get-BlockerOfHResult {
    # the HRESULTs of Install() (or Download()) that mean "not now" rather than "this update failed"
    param([long] $HResult)
    $code = ConvertTo-SignedHResult $HResult
    if ($code -eq $HResultOperationInProgress) { return 'installer_busy' }
    if ($code -eq $HResultInstallNotAllowed) {
        if (Test-RebootPending) { return 'reboot_pending' }
        return 'installer_busy'
    }
    $null
}

function Set-Blocked {
    # the cycle stops installing: what it did not attempt is `remaining`, none of it counts as failed
    param($Outcome, [string] $Reason, $Infos, [long] $HResult = 0)
    if (-not $Outcome.blockedBy) { $Outcome.blockedBy = $Reason }
    if ($HResult -ne 0) { $Outcome.hresult = $HResult }
    if ($Reason -eq 'reboot_pending') { $Outcome.reboot = $true }
    foreach ($info in $Infos) {
        if ($Outcome.remaining -notcontains $info.kb) { [void] $Outcome.remaining.Add($info.kb) }
    }
}

function Enter-InstallLock {
    # The server-wide lock: one execution runs the installer at a time. A Mutex is released by Windows when its
    # process dies, so a crashed run never leaves it held. $null: another run kept it past the wait.
    param([DateTime] $Deadline, [string] $LogPath)
    try {
        $mutex = New-Object System.Threading.Mutex -ArgumentList @($false, $LockName)
    } catch {
        Write-Log "the install lock $LockName cannot be opened: $($_.Exception.Message)" $LogPath
        return $null
    }
    $seconds = [Math]::Min($LockWaitSeconds, [Math]::Max(0, ($Deadline - [DateTime]::UtcNow).TotalSeconds))
    $acquired = $false
    try {
        $acquired = $mutex.WaitOne([TimeSpan]::FromSeconds($seconds))
    } catch {
        if ((Get-InnerException $_) -is [System.Threading.AbandonedMutexException]) {
            Write-Log 'the install lock was abandoned by a run that died: taking it' $LogPath
            $acquired = $true
        } else {
            throw
        }
    }
    if (-not $acquired) {
        $mutex.Dispose()
        Write-Log "another run holds the install lock $LockName" $LogPath
        return $null
    }
    $mutex
}

function Exit-InstallLock {
    param($Mutex)
    if ($null -ne $Mutex) {
        try { $Mutex.ReleaseMutex() } catch { }
        $Mutex.Dispose()
    }
}

function Get-MinutesLeft {
    # minutes until the deadline, less the reserve kept for the report
    param([DateTime] $Deadline)
    ($Deadline - [DateTime]::UtcNow).TotalMinutes - $ReportReserveMinutes
}

# --- the update service -----------------------------------------------------------------------------

function Register-MicrosoftUpdate {
    # Microsoft Update (Windows and other Microsoft products) is a service WUA may not know yet
    param([string] $LogPath)
    $manager = New-Object -ComObject 'Microsoft.Update.ServiceManager'
    foreach ($service in $manager.Services) {
        if ([string] $service.ServiceID -eq $MicrosoftUpdateServiceId) { return }
    }
    $manager.ClientApplicationID = 'patchaas windows-update package'
    # asfAllowPendingRegistration (1) + asfAllowOnlineRegistration (2); not asfRegisterServiceWithAU (4), which
    # would change what Automatic Updates uses
    [void] $manager.AddService2($MicrosoftUpdateServiceId, 3, '')
    Write-Log "registered the Microsoft Update service $MicrosoftUpdateServiceId" $LogPath
}

function Set-UpdateService {
    # IUpdateSearcher.ServerSelection: ssDefault 0 (as the server is configured, WSUS if a policy says so),
    # ssManagedServer 1 (WSUS), ssWindowsUpdate 2, ssOthers 3 with a ServiceID (Microsoft Update)
    param($Searcher, [string] $Service, [string] $LogPath)
    switch ($Service) {
        'WSUS' { $Searcher.ServerSelection = 1 }
        'WindowsUpdate' { $Searcher.ServerSelection = 2 }
        'MicrosoftUpdate' {
            Register-MicrosoftUpdate -LogPath $LogPath
            $Searcher.ServerSelection = 3
            $Searcher.ServiceID = $MicrosoftUpdateServiceId
        }
        default { $Searcher.ServerSelection = 0 }
    }
    Write-Log "update service: $Service (ServerSelection $($Searcher.ServerSelection))" $LogPath
}

function Get-SearchWarnings {
    # ISearchResult.Warnings (IUpdateException: HResult, Message, Context), one line each
    param($SearchResult)
    try {
        for ($i = 0; $i -lt $SearchResult.Warnings.Count; $i++) {
            $warning = $SearchResult.Warnings.Item($i)
            '{0}: {1} (context {2})' -f (Format-HResult $warning.HResult), $warning.Message, [int] $warning.Context
        }
    } catch { }
}

# --- the cycle itself (runs as SYSTEM) ---------------------------------------------------------------

function Install-PlannedUpdates {
    # Download and install the selected updates. The only place that creates a downloader or an installer.
    param($Job, $Session, $Candidates, [DateTime] $Deadline, $Outcome)
    $log = [string] $Job.log
    if ([bool] $Job.scanOnly) { throw 'scan only: this cycle must not download or install anything' }

    # an update that requires exclusive handling (InstallationBehavior.Impact 2, e.g. a servicing stack update)
    # cannot share an Install() call (WU_E_EXCLUSIVE_INSTALL_CONFLICT): it is installed alone, the rest next cycle
    $queue = @($Candidates)
    $exclusive = @($Candidates | Where-Object { [int] $_.update.InstallationBehavior.Impact -eq 2 })
    if ($exclusive.Count -gt 0) {
        $queue = @($exclusive[0])
        $later = @($Candidates | Where-Object { $_.id -ne $exclusive[0].id })
        foreach ($info in $later) { [void] $Outcome.remaining.Add($info.kb) }
        Write-Log ('{0} requires exclusive handling: installed alone this cycle, {1} more remain' -f `
            $exclusive[0].kb, $later.Count) $log
    }

    $lock = Enter-InstallLock -Deadline $Deadline -LogPath $log
    if ($null -eq $lock) {
        Set-Blocked -Outcome $Outcome -Reason 'another_run' -Infos $queue
        return
    }
    try {
        $installer = $Session.CreateUpdateInstaller()
        $installer.ClientApplicationID = 'patchaas windows-update package'
        $installer.AllowSourcePrompts = $false
        $blocker = Get-InstallBlocker -Installer $installer -Planned $queue -Deadline $Deadline -LogPath $log
        if ($blocker) {
            Set-Blocked -Outcome $Outcome -Reason $blocker -Infos $queue
            return
        }
        if ((Get-MinutesLeft $Deadline) -lt $StopInstallsMinutes) {
            Write-Log 'too close to the deadline to download and install: stopping' $log
            Set-Blocked -Outcome $Outcome -Reason 'deadline' -Infos $queue
            return
        }

        Set-CycleProgress -Job $Job -Phase ('downloading {0} updates' -f $queue.Count) -Outcome $Outcome
        $toDownload = New-Object -ComObject 'Microsoft.Update.UpdateColl'
        foreach ($info in $queue) {
            if (-not $info.update.EulaAccepted) { $info.update.AcceptEula() }
            if (-not $info.update.IsDownloaded) { [void] $toDownload.Add($info.update) }
        }
        $download = $null
        if ($toDownload.Count -gt 0) {
            $downloader = $Session.CreateUpdateDownloader()
            $downloader.ClientApplicationID = 'patchaas windows-update package'
            $downloader.Updates = $toDownload
            $download = $downloader.Download()
        }
        $ready = @()
        foreach ($info in $queue) {
            if ($info.update.IsDownloaded) {
                $ready += $info
                continue
            }
            $hresult = $HResultFail
            if ($null -ne $download) {
                for ($i = 0; $i -lt $toDownload.Count; $i++) {
                    if ([string] $toDownload.Item($i).Identity.UpdateID -eq $info.id) {
                        $hresult = $download.GetUpdateResult($i).HResult
                    }
                }
            }
            Write-Log ('download failed: {0} HRESULT {1}' -f $info.kb, (Format-HResult $hresult)) $log
            [void] $Outcome.results.Add((New-ResultOf -Info $info -ResultCode $ResultFailed -HResult $hresult -RebootRequired $false))
        }

        # install in one call, or one update per call near the deadline; no call starts too close to it
        $index = 0
        while ($index -lt $ready.Count) {
            $left = Get-MinutesLeft $Deadline
            $rest = @($ready[$index..($ready.Count - 1)])
            if ($left -lt $StopInstallsMinutes) {
                Write-Log ('{0:N0} minutes to the deadline: no more installs this cycle' -f ($left + $ReportReserveMinutes)) $log
                Set-Blocked -Outcome $Outcome -Reason 'deadline' -Infos $rest
                break
            }
            $size = $rest.Count
            if ($left -lt $NearDeadlineMinutes) { $size = 1 }
            $members = @($rest[0..($size - 1)])
            $batch = New-Object -ComObject 'Microsoft.Update.UpdateColl'
            foreach ($info in $members) { [void] $batch.Add($info.update) }
            $installer.Updates = $batch
            Set-CycleProgress -Job $Job -Phase ('installing {0}' -f (($members | ForEach-Object { $_.kb }) -join ', ')) `
                -Outcome $Outcome
            Write-Log ('installing {0} updates: {1}' -f $members.Count, (($members | ForEach-Object { $_.kb }) -join ', ')) $log
            try {
                $installation = $installer.Install()
            } catch {
                $hresult = Get-ErrorHResult $_
                $blocker = Get-BlockerOfHResult $hresult
                if ($blocker) {
                    Write-Log ('Install() answered {0}: {1}' -f (Format-HResult $hresult), $blocker) $log
                    Set-Blocked -Outcome $Outcome -Reason $blocker -Infos $rest -HResult $hresult
                    break
                }
                throw
            }
            $Outcome.installerCalls += 1
            $batchHResult = [long] $installation.HResult
            $blocker = Get-BlockerOfHResult $batchHResult
            if ($blocker -and [int] $installation.ResultCode -ge $ResultFailed) {
                Write-Log ('Install() ended with {0}: {1}' -f (Format-HResult $batchHResult), $blocker) $log
                Set-Blocked -Outcome $Outcome -Reason $blocker -Infos $rest -HResult $batchHResult
                break
            }
            for ($i = 0; $i -lt $members.Count; $i++) {
                $result = $installation.GetUpdateResult($i)
                Write-Log ('installed: {0} result code {1} HRESULT {2}' -f $members[$i].kb, [int] $result.ResultCode, `
                    (Format-HResult $result.HResult)) $log
                [void] $Outcome.results.Add((New-ResultOf -Info $members[$i] -ResultCode ([int] $result.ResultCode) `
                    -HResult $result.HResult -RebootRequired ([bool] $result.RebootRequired)))
            }
            if ($batchHResult -ne 0) { $Outcome.hresult = $batchHResult }
            if ([bool] $installation.RebootRequired) { $Outcome.reboot = $true }
            Set-CycleProgress -Job $Job -Phase 'installed a batch' -Outcome $Outcome
            $index += $size
        }
    } finally {
        Exit-InstallLock $lock
    }
}

function Get-ScanResults {
    # scan only: what would be installed, result NotStarted, nothing downloaded, nothing installed
    param($Candidates)
    foreach ($info in $Candidates) {
        New-ResultOf -Info $info -ResultCode $ResultNotStarted -HResult 0 `
            -RebootRequired ([int] $info.update.InstallationBehavior.RebootBehavior -eq 1)
    }
}

function Get-OutcomeCode {
    # the cycle's result code from what happened to each update
    param($Outcome, [bool] $Scan)
    if ($Scan) { return $ResultNotStarted }
    $results = @($Outcome.results)
    if ($results.Count -eq 0) {
        if ($Outcome.blockedBy -eq 'reboot_pending') { return $ResultNotStarted }  # the engine reboots, then retries
        if ($Outcome.blockedBy) { return $ResultAborted }
        return $ResultSucceeded
    }
    $good = @($results | Where-Object { $_.result_code -eq $ResultSucceeded -or $_.result_code -eq $ResultSucceededWithErrors })
    $clean = @($results | Where-Object { $_.result_code -eq $ResultSucceeded })
    if ($clean.Count -eq $results.Count) { return $ResultSucceeded }
    if ($good.Count -eq 0) { return $ResultFailed }
    $ResultSucceededWithErrors
}

function Invoke-UpdateCycle {
    # Search, select, download, install; returns the cycle report. Never throws: a failure is a failed report.
    param($Job)
    $key = [string] $Job.key
    $log = [string] $Job.log
    $startedAt = [string] $Job.startedAt
    $deadline = ConvertFrom-UtcStamp ([string] $Job.deadline)
    $scan = [bool] $Job.scanOnly
    $outcome = @{
        results        = New-Object System.Collections.ArrayList
        remaining      = New-Object System.Collections.ArrayList
        blockedBy      = ''
        hresult        = 0
        reboot         = $false
        installerCalls = 0
    }
    $excluded = New-Object System.Collections.ArrayList
    $skipped = New-Object System.Collections.ArrayList
    $searchCode = $null
    $warnings = @()
    $candidates = @()
    try {
        Set-CycleProgress -Job $Job -Phase 'searching' -Outcome $null
        Write-Log ('reboot policy {0}: this package never reboots, the orchestrator does' -f $Job.rebootPolicy) $log
        $session = New-Object -ComObject 'Microsoft.Update.Session'
        $session.ClientApplicationID = 'patchaas windows-update package'
        $searcher = $session.CreateUpdateSearcher()
        Set-UpdateService -Searcher $searcher -Service ([string] $Job.updateService) -LogPath $log
        Write-Log "searching: $($Job.criteria)" $log
        $found = $searcher.Search([string] $Job.criteria)
        $searchedAt = [DateTime]::UtcNow
        $searchCode = [int] $found.ResultCode
        $warnings = @(Get-SearchWarnings $found)
        foreach ($warning in $warnings) { Write-Log "search warning: $warning" $log }
        if ($searchCode -ne $ResultSucceeded -and $searchCode -ne $ResultSucceededWithErrors) {
            # orcFailed or orcAborted: no update list at all, which is not "nothing to install"
            $hresult = $HResultFail
            if ($found.Warnings.Count -gt 0) { $hresult = $found.Warnings.Item(0).HResult }
            Write-Log "the search ended with result code $searchCode" $log
            return New-CycleReport -Key $key -StartedAt $startedAt -FinishedAt (Get-UtcStamp) -ResultCode $ResultFailed `
                -HResult $hresult -RebootRequired (Test-RebootPending) -SearchResultCode $searchCode `
                -SearchWarnings $warnings -Failure "the update search ended with result code $searchCode"
        }

        foreach ($update in $found.Updates) {
            $info = Get-UpdateInfo $update
            $reason = $null
            if ($info.kbs.Count -eq 0) {
                $reason = 'no KB article id'
            } elseif (Test-AnyIn $info.kbs @($Job.quarantined)) {
                $reason = 'quarantined by the run (failed before, or an update loop)'
            } elseif (Test-AnyIn $info.kbs @($Job.selection.exclude)) {
                $reason = 'excludeKbs'
            } elseif ($update.BrowseOnly -and -not (Test-AnyIn $info.kbs @($Job.selection.include))) {
                $reason = 'optional update (BrowseOnly)'
            } else {
                $reason = Test-UpdateSelected -Update $update -Kbs $info.kbs -Selection $Job.selection -Now $searchedAt
            }
            if ($null -ne $reason) {
                Write-Log ('skipped: {0} {1} ({2})' -f $info.kb, $info.title, $reason) $log
                [void] $skipped.Add((New-SkippedUpdate -UpdateId $info.id -RevisionNumber $info.revision -Kb $info.kb `
                    -Title $info.title -Reason $reason))
                if ($info.kb) { [void] $excluded.Add($info.kb) }
                continue
            }
            $candidates += $info
        }
        Write-Log ('{0} updates selected, {1} skipped' -f $candidates.Count, $skipped.Count) $log

        if ($searchCode -ne $ResultSucceeded -and $candidates.Count -eq 0) {
            # a partial search that found nothing to install proves nothing: report it failed, not "nothing left"
            $hresult = $HResultFail
            if ($found.Warnings.Count -gt 0) { $hresult = $found.Warnings.Item(0).HResult }
            return New-CycleReport -Key $key -StartedAt $startedAt -FinishedAt (Get-UtcStamp) -ResultCode $ResultFailed `
                -HResult $hresult -RebootRequired (Test-RebootPending) -Excluded $excluded -SearchResultCode $searchCode `
                -SearchWarnings $warnings -Skipped $skipped -Failure 'the update search succeeded with errors and found nothing'
        }

        if ($scan) {
            foreach ($result in @(Get-ScanResults $candidates)) { [void] $outcome.results.Add($result) }
        } elseif ($candidates.Count -gt 0) {
            Install-PlannedUpdates -Job $Job -Session $session -Candidates $candidates -Deadline $deadline -Outcome $outcome
        }
    } catch {
        $hresult = Get-ErrorHResult $_
        $blocker = Get-BlockerOfHResult $hresult
        $message = (Get-InnerException $_).Message
        if (-not $blocker) {
            # e.g. WU_E_INVALID_CRITERIA, the update service stopped, no network to the update service
            Write-Log ('cycle failed: {0} (HRESULT {1})' -f $message, (Format-HResult $hresult)) $log
            return New-CycleReport -Key $key -StartedAt $startedAt -FinishedAt (Get-UtcStamp) -Updates $outcome.results `
                -ResultCode $ResultFailed -HResult $hresult -RebootRequired (Test-RebootPending) -Excluded $excluded `
                -Remaining $outcome.remaining -SearchResultCode $searchCode -SearchWarnings $warnings -Skipped $skipped `
                -Failure $message
        }
        Write-Log ('{0} (HRESULT {1}): {2}' -f $message, (Format-HResult $hresult), $blocker) $log
        $reported = @($outcome.results | ForEach-Object { $_.kb })
        $untried = @($candidates | Where-Object { $reported -notcontains $_.kb })
        Set-Blocked -Outcome $outcome -Reason $blocker -Infos $untried -HResult $hresult
    }
    $code = Get-OutcomeCode -Outcome $outcome -Scan $scan
    if ($code -eq $ResultSucceeded -and $searchCode -eq $ResultSucceededWithErrors) { $code = $ResultSucceededWithErrors }
    $hresult = $outcome.hresult
    if ($code -eq $ResultFailed -and $hresult -eq 0) { $hresult = $HResultAllFailed }
    if ($outcome.blockedBy -eq 'installer_busy' -and $hresult -eq 0) { $hresult = $HResultOperationInProgress }
    if ($outcome.blockedBy -eq 'reboot_pending' -and $hresult -eq 0) { $hresult = $HResultInstallNotAllowed }
    $reboot = $outcome.reboot -or (Test-RebootPending)
    New-CycleReport -Key $key -StartedAt $startedAt -FinishedAt (Get-UtcStamp) -Updates $outcome.results `
        -ResultCode $code -HResult $hresult -RebootRequired $reboot -Excluded $excluded -BlockedBy $outcome.blockedBy `
        -Remaining $outcome.remaining -SearchResultCode $searchCode -SearchWarnings $warnings -Skipped $skipped
}

# --- the report channel ----------------------------------------------------------------------------

function Get-RetryAfterSeconds {
    # Retry-After: delta-seconds or an HTTP date; -1 when absent or unreadable
    param($Response)
    try {
        $value = [string] $Response.Headers['Retry-After']
        if (-not $value) { return -1 }
        $seconds = 0
        if ([int]::TryParse($value.Trim(), [ref] $seconds)) { return [Math]::Max(0, $seconds) }
        $when = [DateTime]::MinValue
        $styles = [Globalization.DateTimeStyles]::AdjustToUniversal
        if ([DateTime]::TryParse($value, [Globalization.CultureInfo]::InvariantCulture, $styles, [ref] $when)) {
            return [Math]::Max(0, [int] ($when - [DateTime]::UtcNow).TotalSeconds)
        }
    } catch { }
    -1
}

function Send-CycleReport {
    # POST a report with the execution's bearer token. Retried with backoff: network errors, 5xx, 408 and 429
    # (429/408/503 wait what Retry-After asks, up to 5 minutes). The other 4xx are final. Never throws:
    # returns @{ posted; status; detail }.
    param([string] $Url, [string] $Token, [string] $IdempotencyKey, [string] $Json, [int] $Attempts = 6,
        [string] $LogPath = '')
    $headers = @{ Authorization = "Bearer $Token"; 'Idempotency-Key' = $IdempotencyKey }
    $body = [System.Text.Encoding]::UTF8.GetBytes($Json)
    $status = 0
    $detail = ''
    for ($attempt = 1; $attempt -le $Attempts; $attempt++) {
        $retryAfter = -1
        try {
            Invoke-RestMethod -Method Post -Uri $Url -Headers $headers -ContentType 'application/json; charset=utf-8' `
                -Body $body -TimeoutSec 60 | Out-Null
            return @{ posted = $true; status = 200; detail = '' }
        } catch {
            $status = 0
            $response = $null
            if ($_.Exception -is [System.Net.WebException]) { $response = $_.Exception.Response }
            if ($null -ne $response) {
                $status = [int] $response.StatusCode
                $retryAfter = Get-RetryAfterSeconds $response
            }
            $detail = $_.Exception.Message
            if ($null -ne $_.ErrorDetails -and $_.ErrorDetails.Message) { $detail = $_.ErrorDetails.Message }
        }
        $retryable = ($status -eq 0 -or $status -ge 500 -or $status -eq 408 -or $status -eq 429)
        if (-not $retryable) { return @{ posted = $false; status = $status; detail = $detail } }
        if ($attempt -lt $Attempts) {
            $wait = [Math]::Min(60, [Math]::Pow(2, $attempt))
            if ($retryAfter -ge 0) { $wait = [Math]::Min(300, $retryAfter) }
            Write-Log ('report not posted (attempt {0}, HTTP {1}): {2}; retrying in {3} s' -f $attempt, $status, $detail, $wait) $LogPath
            Start-Sleep -Seconds ([int] $wait)
        }
    }
    @{ posted = $false; status = $status; detail = $detail }
}

function Publish-Result {
    # post the saved result of a cycle (the same bytes every time: a replay is recorded once); 0 when posted
    param([string] $ResultPath, [string] $Key, [string] $Url, [string] $Token, [string] $LogPath)
    $json = (Get-Content -LiteralPath $ResultPath -Raw).Trim()
    if (-not $Url -or -not $Token) {
        Write-Log "no report channel: the report stays in $ResultPath" $LogPath
        return 0
    }
    $sent = Send-CycleReport -Url $Url -Token $Token -IdempotencyKey $Key -Json $json -LogPath $LogPath
    if ($sent.posted) {
        Write-Log "report posted to $Url" $LogPath
        return 0
    }
    Write-Log ('the report channel did not take the report (HTTP {0}): {1}' -f $sent.status, $sent.detail) $LogPath
    1
}

function Publish-MemoryReport {
    # a failure report when there is no safe place for files: written to the output and posted, never saved
    param([string] $Key, [string] $StartedAt, [string] $Message, [string] $Url, [string] $Token)
    $report = New-CycleReport -Key $Key -StartedAt $StartedAt -FinishedAt (Get-UtcStamp) -ResultCode $ResultFailed `
        -HResult $HResultFail -RebootRequired (Test-RebootPending) -Failure $Message
    $json = ConvertTo-ReportJson $report
    Write-Output $json
    if ($Url -and $Token) {
        $sent = Send-CycleReport -Url $Url -Token $Token -IdempotencyKey $Key -Json $json
        Write-Log ('failure report posted: {0} (HTTP {1})' -f $sent.posted, $sent.status)
    }
}

function Send-Heartbeat {
    # a running report (CycleReport, state running, result InProgress, what the task is doing in `phase`);
    # $false once the channel refuses heartbeats (a 4xx other than 408/429): no more are sent
    param([string] $Key, [string] $StartedAt, [string] $ProgressPath, [int] $Beat, [string] $Url, [string] $Token,
        [string] $LogPath)
    $phase = 'waiting for the SYSTEM task'
    $progress = Read-JsonFile $ProgressPath
    if ($null -ne $progress) { $phase = [string] $progress.phase }
    $report = New-CycleReport -Key $Key -State 'running' -StartedAt $StartedAt -ResultCode $ResultInProgress -Phase $phase
    $sent = Send-CycleReport -Url $Url -Token $Token -IdempotencyKey ('{0}:heartbeat:{1}' -f $Key, $Beat) `
        -Json (ConvertTo-ReportJson $report) -Attempts 2 -LogPath $LogPath
    if ($sent.posted) { return $true }
    if ($sent.status -ge 400 -and $sent.status -lt 500 -and $sent.status -ne 408 -and $sent.status -ne 429) {
        Write-Log ('the report channel refuses heartbeats (HTTP {0}): no more this cycle' -f $sent.status) $LogPath
        return $false
    }
    $true
}

# --- running the cycle under SYSTEM ----------------------------------------------------------------

function Get-TaskTimeLimit {
    # the task may run until the deadline plus the grace (an install started in time finishes), at least 5 minutes
    param([DateTime] $Deadline)
    $minutes = [Math]::Ceiling(($Deadline - [DateTime]::UtcNow).TotalMinutes) + $TaskGraceMinutes
    if ($minutes -lt 5) { $minutes = 5 }
    if ($minutes -gt 4320) { $minutes = 4320 }
    New-TimeSpan -Minutes $minutes
}

function Start-SystemTask {
    # Register the script copy as a one-off scheduled task under SYSTEM and start it. Its command line names the
    # copy and the job file only: the report token is in the job file, in the locked folder.
    param([string] $TaskName, [string] $ScriptCopy, [string] $JobFile, [DateTime] $Deadline, [string] $LogPath)
    $powershell = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
    $arguments = '-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{0}" -AsSystemWorker -JobPath "{1}"' -f `
        $ScriptCopy, $JobFile
    $action = New-ScheduledTaskAction -Execute $powershell -Argument $arguments
    $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $taskSettings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit (Get-TaskTimeLimit $Deadline) `
        -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -MultipleInstances IgnoreNew
    Register-ScheduledTask -TaskName $TaskName -Action $action -Principal $principal -Settings $taskSettings `
        -Force | Out-Null
    Start-ScheduledTask -TaskName $TaskName
    Write-Log "started scheduled task $TaskName under SYSTEM" $LogPath
}

function Wait-SystemTask {
    # Wait for the task's result, posting heartbeats. @{ result = path } or, when the task died or outlived the
    # deadline, @{ result = $null; error; hresult }.
    param([string] $TaskName, $Files, [string] $Key, [string] $StartedAt, [DateTime] $Deadline,
        [int] $HeartbeatSeconds, [string] $Url, [string] $Token, [string] $LogPath)
    $giveUpAt = $Deadline.AddMinutes($TaskGraceMinutes)
    $beating = ($HeartbeatSeconds -gt 0 -and $Url -and $Token)
    $nextBeat = [DateTime]::UtcNow.AddSeconds($HeartbeatSeconds)
    $beat = 0
    $idle = 0
    while ($true) {
        if (Test-Path -LiteralPath $Files.result) { return @{ result = $Files.result } }
        $now = [DateTime]::UtcNow
        if ($now -gt $giveUpAt) {
            Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
            Start-Sleep -Seconds 5
            if (Test-Path -LiteralPath $Files.result) { return @{ result = $Files.result } }
            return @{ result = $null; hresult = $HResultFail
                error = ('the update task gave no result by the deadline ({0}) plus {1} minutes: it was stopped' -f `
                    (ConvertTo-UtcStamp $Deadline), $TaskGraceMinutes) }
        }
        $task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
        if ($null -eq $task -or $task.State -eq 'Ready' -or $task.State -eq 'Disabled') { $idle += 1 } else { $idle = 0 }
        if ($idle -ge 3) {
            Start-Sleep -Seconds 2
            if (Test-Path -LiteralPath $Files.result) { return @{ result = $Files.result } }
            $last = 0
            if ($null -ne $task) { $last = [long] (Get-ScheduledTaskInfo -TaskName $TaskName).LastTaskResult }
            return @{ result = $null; hresult = (ConvertTo-SignedHResult $last)
                error = ('the update task ended without a result (last task result {0}): stopped at its time ' +
                    'limit, killed, or the log or the result could not be written') -f (Format-HResult $last) }
        }
        if ($beating -and $now -ge $nextBeat) {
            $beat += 1
            $beating = Send-Heartbeat -Key $Key -StartedAt $StartedAt -ProgressPath $Files.progress -Beat $beat `
                -Url $Url -Token $Token -LogPath $LogPath
            $nextBeat = [DateTime]::UtcNow.AddSeconds($HeartbeatSeconds)
        }
        Start-Sleep -Seconds 10
    }
}

function Remove-RunSecrets {
    # after the report: the job file (it holds the token), the script copy, the progress file and the task go;
    # the result (for replays) and the log stay
    param($Files, [string] $TaskName)
    foreach ($path in @($Files.job, $Files.script, $Files.progress)) {
        Remove-Item -LiteralPath $path -Force -ErrorAction SilentlyContinue
    }
    if ($TaskName) { Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false -ErrorAction SilentlyContinue }
}

function Get-LastBootTime {
    try { (Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime() } catch { $null }
}

function Invoke-OrphanSweep {
    # Runs of other keys that died with no result (the server restarted mid-install, or the run outlived its
    # deadline and its outer run is gone): build their failure report and post it with their own token.
    param([string] $Directory, [string] $ExceptStem, [string] $LogPath)
    $lastBoot = Get-LastBootTime
    $jobs = @(Get-ChildItem -LiteralPath $Directory -File | Where-Object { $_.Name -match '^[A-Za-z0-9_-]+\.[0-9a-f]{32}\.job\.json$' })
    foreach ($file in $jobs) {
        try {
            $stem = $file.Name.Substring(0, $file.Name.Length - '.job.json'.Length)
            if ($stem -eq $ExceptStem) { continue }
            $job = Read-JsonFile $file.FullName
            if ($null -eq $job) { continue }
            $files = Get-RunFiles -Directory $Directory -Stem $stem
            $task = Get-ScheduledTask -TaskName ([string] $job.taskName) -ErrorAction SilentlyContinue
            if ($null -ne $task -and $task.State -eq 'Running') { continue }
            if (-not (Test-Path -LiteralPath $files.result)) {
                $created = ConvertFrom-UtcStamp ([string] $job.createdAt)
                $expired = [DateTime]::UtcNow -gt (ConvertFrom-UtcStamp ([string] $job.deadline)).AddMinutes(2 * $TaskGraceMinutes)
                $rebooted = ($null -ne $lastBoot -and $created -lt $lastBoot)
                if (-not $rebooted -and -not $expired) { continue }
                $why = 'the cycle outlived its deadline without a result'
                if ($rebooted) { $why = 'the server restarted during the cycle (before its report was saved)' }
                $report = New-FailureReport -Key ([string] $job.key) -StartedAt ([string] $job.startedAt) `
                    -ProgressPath $files.progress -Message $why -HResult $HResultFail
                [void] (Save-ResultOnce -Path $files.result -Json (ConvertTo-ReportJson $report))
                Write-Log ('orphaned cycle {0}: {1}' -f $job.key, $why) $LogPath
            }
            if ($job.reportUrl -and $job.reportToken) {
                $json = (Get-Content -LiteralPath $files.result -Raw).Trim()
                $sent = Send-CycleReport -Url ([string] $job.reportUrl) -Token ([string] $job.reportToken) `
                    -IdempotencyKey ([string] $job.key) -Json $json -Attempts 2 -LogPath $LogPath
                Write-Log ('report of {0} posted: {1} (HTTP {2})' -f $job.key, $sent.posted, $sent.status) $LogPath
            }
            Remove-RunSecrets -Files $files -TaskName ([string] $job.taskName)
        } catch {
            Write-Log "orphan sweep: $($file.Name): $($_.Exception.Message)" $LogPath
        }
    }
}

function Remove-OldRunFiles {
    param([string] $Directory)
    $cutoff = [DateTime]::UtcNow.AddDays(-$RetentionDays)
    Get-ChildItem -LiteralPath $Directory -File |
        Where-Object { $_.LastWriteTimeUtc -lt $cutoff -and $_.Name -match '\.(result\.json|log|claim)$' } |
        ForEach-Object { Remove-Item -LiteralPath $_.FullName -Force -ErrorAction SilentlyContinue }
}

# --- entry points ----------------------------------------------------------------------------------

if ($PSCmdlet.ParameterSetName -eq 'Worker') {
    # the SYSTEM task: run the cycle, save the result (unless the outer run gave up on us first), post it
    $job = $null
    try {
        $job = Get-Content -LiteralPath $JobPath -Raw | ConvertFrom-Json
        $report = Invoke-UpdateCycle -Job $job
        $json = ConvertTo-ReportJson $report
        if (Save-ResultOnce -Path ([string] $job.result) -Json $json) {
            Write-Log 'result saved' ([string] $job.log)
            if ($job.reportUrl -and $job.reportToken) {
                $sent = Send-CycleReport -Url ([string] $job.reportUrl) -Token ([string] $job.reportToken) `
                    -IdempotencyKey ([string] $job.key) -Json $json -LogPath ([string] $job.log)
                Write-Log ('report posted by the SYSTEM task: {0} (HTTP {1})' -f $sent.posted, $sent.status) ([string] $job.log)
            }
        } else {
            Write-Log 'a result was saved already (the outer run gave up on this task): keeping it' ([string] $job.log)
        }
        exit 0
    } catch {
        $logPath = ''
        if ($null -ne $job) { $logPath = [string] $job.log }
        Write-Log "the SYSTEM task failed: $($_.Exception.Message)" $logPath
        exit 1
    }
}

# the outer run, as the control plane's account
$runStartedAt = [DateTime]::UtcNow
$startedAt = ConvertTo-UtcStamp $runStartedAt
$key = $IdempotencyKey.Trim()
if (-not $key) {
    Write-Log 'refused: no patchaas.idempotencyKey parameter, so no report can be made'
    exit 2
}
$safe = Get-SafeName $key

$plan = $null
$planError = ''
try {
    $deadlineAt = ConvertTo-Deadline $Deadline
    if ($null -eq $deadlineAt) { $deadlineAt = $runStartedAt.AddMinutes($DefaultCycleMinutes) }
    $plan = [ordered]@{
        executionId      = $ExecutionId.Trim()
        cycle            = ConvertTo-WholeNumber -Text $Cycle -Name 'Cycle' -Minimum 1 -Maximum 1000 -Default 1
        deadline         = ConvertTo-UtcStamp $deadlineAt
        heartbeatSeconds = ConvertTo-WholeNumber -Text $HeartbeatSeconds -Name 'HeartbeatSeconds' -Minimum 0 `
            -Maximum 3600 -Default $DefaultHeartbeatSeconds
        updateService    = ConvertTo-Choice -Text $UpdateService -Name 'UpdateService' -Choices $UpdateServices -Default 'Default'
        scanOnly         = ConvertTo-Flag -Text $ScanOnly -Name 'ScanOnly'
        rebootPolicy     = ConvertTo-Choice -Text $RebootPolicy -Name 'RebootPolicy' -Choices $RebootPolicies -Default 'if_required'
        quarantined      = @(ConvertTo-KbList -Text $QuarantinedKbs -Name 'QuarantinedKbs')
        selection        = [ordered]@{  # what Test-UpdateSelected reads
            include          = @(ConvertTo-KbList -Text $IncludeKbs -Name 'IncludeKbs')
            exclude          = @(ConvertTo-KbList -Text $ExcludeKbs -Name 'ExcludeKbs')
            classifications  = @(ConvertTo-StringList $Classifications)
            severities       = @(ConvertTo-ChoiceList -Text $Severities -Name 'Severities' -Choices $MsrcSeverities)
            approveAfterDays = ConvertTo-WholeNumber -Text $ApproveAfterDays -Name 'ApproveAfterDays' -Minimum 0 `
                -Maximum 365 -Default -1
        }
    }
    if ($plan.heartbeatSeconds -gt 0 -and $plan.heartbeatSeconds -lt 30) { $plan.heartbeatSeconds = 30 }
} catch {
    $planError = 'invalid package parameters: ' + $_.Exception.Message
}

try {
    Initialize-StateDirectory -Path $StateDirectory
    $stem = Get-RunStem -Directory $StateDirectory -Safe $safe
} catch {
    # no safe place for files: report from memory and stop
    Write-Log $_.Exception.Message
    Publish-MemoryReport -Key $key -StartedAt $startedAt -Message $_.Exception.Message -Url $ReportUrl -Token $ReportToken
    exit 1
}
$files = Get-RunFiles -Directory $StateDirectory -Stem $stem
$logFile = $files.log
$taskName = 'patchaas-' + $safe
Write-Log "execution $ExecutionId cycle $Cycle ($key): Invoking SUS API" $logFile

try {
    if ($planError) {
        Write-Log $planError $logFile
        $report = New-CycleReport -Key $key -StartedAt $startedAt -FinishedAt (Get-UtcStamp) -ResultCode $ResultFailed `
            -HResult $HResultFail -RebootRequired (Test-RebootPending) -Failure $planError
        [void] (Save-ResultOnce -Path $files.result -Json (ConvertTo-ReportJson $report))
        Write-Output (Get-Content -LiteralPath $files.result -Raw).Trim()
        [void] (Publish-Result -ResultPath $files.result -Key $key -Url $ReportUrl -Token $ReportToken -LogPath $logFile)
        exit 2
    }
    Invoke-OrphanSweep -Directory $StateDirectory -ExceptStem $stem -LogPath $logFile
    Remove-OldRunFiles -Directory $StateDirectory
    $deadlineAt = ConvertFrom-UtcStamp $plan.deadline

    if (Test-Path -LiteralPath $files.result) {
        Write-Log "cycle $key already ran: reporting its result again" $logFile
    } else {
        $existing = Get-ScheduledTask -TaskName $taskName -ErrorAction SilentlyContinue
        if ($null -ne $existing -and $existing.State -eq 'Running') {
            Write-Log "scheduled task $taskName is already running: waiting for it" $logFile
        } elseif (Test-Path -LiteralPath $files.job) {
            Write-Log "cycle $key was started by an earlier invocation: waiting for its result" $logFile
        } else {
            Write-Log ('deadline {0}, scan only {1}, update service {2}, heartbeat every {3} s' -f $plan.deadline, `
                $plan.scanOnly, $plan.updateService, $plan.heartbeatSeconds) $logFile
            $job = [ordered]@{
                key           = $key
                executionId   = $plan.executionId
                cycle         = $plan.cycle
                createdAt     = Get-UtcStamp
                startedAt     = $startedAt
                deadline      = $plan.deadline
                scanOnly      = $plan.scanOnly
                rebootPolicy  = $plan.rebootPolicy
                updateService = $plan.updateService
                criteria      = $Criteria
                quarantined   = $plan.quarantined
                selection     = $plan.selection
                reportUrl     = $ReportUrl
                reportToken   = $ReportToken
                taskName      = $taskName
                result        = $files.result
                progress      = $files.progress
                log           = $logFile
            }
            Write-TextFile -Path $files.job -Text (ConvertTo-Json -InputObject $job -Depth 5)
            $copy = Copy-ScriptToState -Path $files.script
            Start-SystemTask -TaskName $taskName -ScriptCopy $copy -JobFile $files.job -Deadline $deadlineAt -LogPath $logFile
        }
        $waited = Wait-SystemTask -TaskName $taskName -Files $files -Key $key -StartedAt $startedAt -Deadline $deadlineAt `
            -HeartbeatSeconds $plan.heartbeatSeconds -Url $ReportUrl -Token $ReportToken -LogPath $logFile
        if ($null -eq $waited.result) {
            # the task died (time limit, killed, a write that failed): the outer run reports the cycle itself
            Write-Log $waited.error $logFile
            $report = New-FailureReport -Key $key -StartedAt $startedAt -ProgressPath $files.progress `
                -Message $waited.error -HResult $waited.hresult
            [void] (Save-ResultOnce -Path $files.result -Json (ConvertTo-ReportJson $report))
        }
    }
    Write-Output (Get-Content -LiteralPath $files.result -Raw).Trim()
    $posted = Publish-Result -ResultPath $files.result -Key $key -Url $ReportUrl -Token $ReportToken -LogPath $logFile
    Remove-RunSecrets -Files $files -TaskName $taskName
    exit $posted
} catch {
    Write-Log "failed: $($_.Exception.Message)" $logFile
    try {
        $report = New-FailureReport -Key $key -StartedAt $startedAt -ProgressPath $files.progress `
            -Message ('the package failed: ' + $_.Exception.Message) -HResult (Get-ErrorHResult $_)
        [void] (Save-ResultOnce -Path $files.result -Json (ConvertTo-ReportJson $report))
        Write-Output (Get-Content -LiteralPath $files.result -Raw).Trim()
        [void] (Publish-Result -ResultPath $files.result -Key $key -Url $ReportUrl -Token $ReportToken -LogPath $logFile)
    } catch {
        Write-Log "no report could be made: $($_.Exception.Message)" $logFile
    }
    exit 1
}
