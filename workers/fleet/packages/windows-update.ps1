<#
.SYNOPSIS
    One cycle of the patchaas Windows update package: search, download, install, report.

.DESCRIPTION
    Runs on a Windows Server 2012 / 2012 R2 machine (PowerShell 3.0 or later), invoked by the control
    plane's Execute Package with the patchaas.* package parameters mapped to the parameters below.

    1. Searches Windows Update Agent (WUA) with the criteria
       "IsInstalled=0 and Type='Software' and IsHidden=0", skipping the KBs in -ExcludeKBs and the updates
       the run's selection does not admit (schemas/selection.py PatchSelection.admits, rule for rule):
       -IncludeKbs, -Classifications, -Severities (IUpdate.MsrcSeverity, "" being Unspecified) and
       -ApproveAfterDays (IUpdate.LastDeploymentChangeTime at least that many days before the search). A KB
       listed in -IncludeKbs is approved whatever -Severities and -ApproveAfterDays say (AWS's approved
       patches). Skipped updates are listed in the report's `excluded`, never installed.
    2. Downloads and installs the rest. WUA refuses installs from a remote session (WinRM, SSH) with
       E_ACCESSDENIED (0x80070005), so the search/download/install part runs as a scheduled task under
       SYSTEM (this same script with -AsSystemWorker) and hands its result back through a file.
    3. Builds one cycle report (the shape of schemas/fleet.py CycleReport, JSON Schema in
       schemas/cycle_report.schema.json): each update's ResultCode, HResult and RebootRequired, the batch
       result, and whether a reboot is required (the batch's flag or Microsoft.Update.SystemInfo).
    4. POSTs the report to -ReportUrl with the per-execution bearer token -ReportToken.

    Idempotent per -IdempotencyKey: the result of a cycle is kept under that key, so the package invoked
    again with the same key posts the same report instead of installing again. The orchestrator decides
    about reboots; this script never reboots.

.PARAMETER ExecutionId
    The patch execution (patchaas.executionId), e.g. VA1-132457.
.PARAMETER Cycle
    The cycle number within the execution (patchaas.cycle), from 1.
.PARAMETER IdempotencyKey
    <execution_id>:package:<cycle> (patchaas.idempotencyKey); the report's key.
.PARAMETER ExcludeKBs
    Comma-separated KB ids to leave alone (patchaas.excludeKBs): the execution's quarantined updates.
.PARAMETER IncludeKbs
    The run's selection (package parameter includeKbs): only these KBs. Comma-separated, or an array.
.PARAMETER Classifications
    The run's selection (classifications): only updates of these classifications, e.g. 'Security Updates'.
.PARAMETER Severities
    The run's selection (severities): only updates of these MSRC severities (Critical, Important, Moderate,
    Low, Unspecified).
.PARAMETER ApproveAfterDays
    The run's selection (approveAfterDays): only updates released at least this many days (0 to 365) before
    the search; empty (the default) for no such rule.
.PARAMETER ReportUrl
    Where to POST the cycle report (patchaas.reportUrl). Without it the report is only written locally.
.PARAMETER ReportToken
    The per-execution bearer token of the report channel (patchaas.reportToken).
#>
[CmdletBinding(DefaultParameterSetName = 'Run')]
param(
    [Parameter(Mandatory = $true, ParameterSetName = 'Run')]
    [string] $ExecutionId,

    [Parameter(Mandatory = $true, ParameterSetName = 'Run')]
    [ValidateRange(1, 1000)]
    [int] $Cycle,

    [Parameter(Mandatory = $true, ParameterSetName = 'Run')]
    [string] $IdempotencyKey,

    [Parameter(ParameterSetName = 'Run')]
    [string] $ExcludeKBs = '',

    [Parameter(ParameterSetName = 'Run')]
    [string[]] $IncludeKbs = @(),

    [Parameter(ParameterSetName = 'Run')]
    [string[]] $Classifications = @(),

    [Parameter(ParameterSetName = 'Run')]
    [string[]] $Severities = @(),

    [Parameter(ParameterSetName = 'Run')]
    [ValidatePattern('^\s*(\d{1,3})?\s*$')]
    [string] $ApproveAfterDays = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $ReportUrl = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $ReportToken = '',

    [Parameter(ParameterSetName = 'Run')]
    [string] $Criteria = "IsInstalled=0 and Type='Software' and IsHidden=0",

    [Parameter(ParameterSetName = 'Run')]
    [ValidateRange(5, 1440)]
    [int] $TaskTimeoutMinutes = 240,

    [Parameter(ParameterSetName = 'Run')]
    [string] $StateDirectory = (Join-Path $env:ProgramData 'patchaas'),

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

$ResultSucceeded = 2          # OperationResultCode: orcSucceeded
$ResultSucceededWithErrors = 3
$ResultFailed = 4
$HResultAllFailed = -2145124318   # 0x80240022 WU_E_ALL_UPDATES_FAILED (signed, as WUA returns it)

# --- small helpers -------------------------------------------------------------------------------

function Get-UtcStamp {
    [DateTime]::UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'")
}

function Write-Log {
    param([string] $Message, [string] $LogPath = '')
    $line = '{0} {1}' -f (Get-UtcStamp), $Message
    Write-Host $line
    if ($LogPath) { Add-Content -Path $LogPath -Value $line -Encoding UTF8 }
}

function ConvertTo-KbList {
    # "KB3135998, 3146723" -> KB3135998, KB3146723 (one per output; callers collect them with @())
    param([string] $Text)
    foreach ($item in ($Text -split '[,;\s]+')) {
        if ($item) {
            $digits = $item.Trim().ToUpperInvariant() -replace '^KB', ''
            if ($digits -match '^\d{6,8}$') { 'KB' + $digits }
        }
    }
}

function ConvertTo-NameList {
    # 'Security Updates, Critical Updates' or an array of such strings -> one trimmed name per output
    param([string[]] $Items)
    foreach ($item in $Items) {
        foreach ($name in ([string] $item -split '[,;]')) {
            if ($name.Trim()) { $name.Trim() }
        }
    }
}

function ConvertTo-DayCount {
    # '' -> -1 (no approval delay); '7' -> 7; anything above 365 is refused, as schemas/selection.py does
    param([string] $Text)
    if (-not $Text.Trim()) { return -1 }
    $days = [int] $Text.Trim()
    if ($days -gt 365) { throw "ApproveAfterDays must be from 0 to 365, not $days" }
    $days
}

function Get-SafeName {
    param([string] $Key)
    $Key -replace '[^A-Za-z0-9._-]', '_'
}

function Test-RebootPending {
    # Microsoft.Update.SystemInfo.RebootRequired: a reboot may already be pending before any install
    try { [bool] (New-Object -ComObject 'Microsoft.Update.SystemInfo').RebootRequired } catch { $false }
}

function Get-UpdateKb {
    param($Update)
    if ($Update.KBArticleIDs.Count -gt 0) { 'KB' + $Update.KBArticleIDs.Item(0) } else { $null }
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

function Test-UpdateSelected {
    # The run's selection, as schemas/selection.py PatchSelection.admits applies it (-ExcludeKBs apart):
    # returns $null when the update may be installed, else why not.
    param($Update, [string] $Kb, $Selection, [DateTime] $Now)
    $include = @($Selection.include)
    if ($include.Count -gt 0 -and $include -notcontains $Kb) { return 'not in includeKbs' }
    $classes = @($Selection.classifications)
    if ($classes.Count -gt 0 -and $classes -notcontains (Get-UpdateClassification $Update)) {
        return 'classification ' + (Get-UpdateClassification $Update)
    }
    if ($include -contains $Kb) { return $null }  # approved by name: severity and age do not hold it back
    $severities = @($Selection.severities)
    $severity = Get-UpdateSeverity $Update
    if ($severities.Count -gt 0 -and $severities -notcontains $severity) { return "severity $severity" }
    $days = [int] $Selection.approveAfterDays
    if ($days -ge 0) {
        if ($null -eq $Update.LastDeploymentChangeTime) { return 'no release date' }
        $released = Get-UpdateReleaseDate $Update
        if ($Now - $released -lt [TimeSpan]::FromDays($days)) {
            return 'released {0:yyyy-MM-dd}, less than {1} days ago' -f $released, $days
        }
    }
    $null
}

function Get-UpdateUrl {
    param($Update, [string] $Kb)
    if ($Update.SupportUrl) { return [string] $Update.SupportUrl }
    'https://support.microsoft.com/en-us/kb/' + ($Kb -replace '^KB', '')
}

# --- the report: schemas/fleet.py UpdateResult and CycleReport, key for key -------------------------

function New-UpdateResult {
    param(
        [string] $Kb,
        [string] $Title,
        [string] $Url,
        [string] $Classification,
        [int] $ResultCode,
        [long] $HResult,
        [bool] $RebootRequired
    )
    [ordered]@{
        kb              = $Kb
        title           = $Title
        url             = $Url
        classification  = $Classification
        result_code     = $ResultCode
        hresult         = $HResult
        reboot_required = $RebootRequired
    }
}

function New-CycleReport {
    param(
        [string] $Key,
        [string] $StartedAt,
        [string] $FinishedAt,
        [object[]] $Updates = @(),
        [int] $ResultCode,
        [long] $HResult,
        [bool] $RebootRequired,
        [string[]] $Excluded = @()
    )
    [ordered]@{
        key             = $Key
        state           = 'finished'
        started_at      = $StartedAt
        finished_at     = $FinishedAt
        updates         = @($Updates | Where-Object { $null -ne $_ })
        result_code     = $ResultCode
        hresult         = $HResult
        reboot_required = $RebootRequired
        excluded        = @($Excluded | Where-Object { $_ })
    }
}

function ConvertTo-ReportJson {
    param($Report)
    ConvertTo-Json -InputObject $Report -Depth 6 -Compress
}

# --- the cycle itself (runs as SYSTEM) ---------------------------------------------------------------

function Invoke-UpdateCycle {
    # Search, download, install; returns the cycle report. Never throws: a failure is a failed report.
    param([string] $Key, [string] $SearchCriteria, [string[]] $Exclude, $Selection, [string] $LogPath)
    $startedAt = Get-UtcStamp
    $results = @()
    $excluded = @()
    try {
        $session = New-Object -ComObject 'Microsoft.Update.Session'
        $session.ClientApplicationID = 'patchaas windows-update package'
        $searcher = $session.CreateUpdateSearcher()
        Write-Log "searching: $SearchCriteria" $LogPath
        $found = $searcher.Search($SearchCriteria)
        $searchedAt = [DateTime]::UtcNow
        $candidates = New-Object -ComObject 'Microsoft.Update.UpdateColl'
        foreach ($update in $found.Updates) {
            $kb = Get-UpdateKb $update
            if (-not $kb) {
                Write-Log "skipped (no KB article id): $($update.Title)" $LogPath
                continue
            }
            if ($update.BrowseOnly) {
                Write-Log "skipped (optional): $kb $($update.Title)" $LogPath
                continue
            }
            if ($Exclude -contains $kb) {
                Write-Log "excluded by request: $kb" $LogPath
                $excluded += $kb
                continue
            }
            $notSelected = Test-UpdateSelected -Update $update -Kb $kb -Selection $Selection -Now $searchedAt
            if ($null -ne $notSelected) {
                Write-Log "not selected by the run: $kb ($notSelected)" $LogPath
                $excluded += $kb
                continue
            }
            if (-not $update.EulaAccepted) { $update.AcceptEula() }
            [void] $candidates.Add($update)
        }
        Write-Log "$($candidates.Count) updates to install, $($excluded.Count) excluded" $LogPath

        $batchCode = $ResultSucceeded
        $batchHResult = 0
        $batchReboot = $false
        if ($candidates.Count -gt 0) {
            $downloader = $session.CreateUpdateDownloader()
            $downloader.Updates = $candidates
            $download = $downloader.Download()
            $installable = New-Object -ComObject 'Microsoft.Update.UpdateColl'
            for ($i = 0; $i -lt $candidates.Count; $i++) {
                $update = $candidates.Item($i)
                if ($update.IsDownloaded) {
                    [void] $installable.Add($update)
                    continue
                }
                $failed = $download.GetUpdateResult($i)
                $kb = Get-UpdateKb $update
                Write-Log "download failed: $kb HRESULT $('0x{0:X8}' -f $failed.HResult)" $LogPath
                $results += New-UpdateResult -Kb $kb -Title $update.Title -Url (Get-UpdateUrl $update $kb) `
                    -Classification (Get-UpdateClassification $update) -ResultCode $ResultFailed `
                    -HResult $failed.HResult -RebootRequired $false
            }
            if ($installable.Count -gt 0) {
                $installer = $session.CreateUpdateInstaller()
                $installer.Updates = $installable
                $installation = $installer.Install()
                for ($i = 0; $i -lt $installable.Count; $i++) {
                    $update = $installable.Item($i)
                    $result = $installation.GetUpdateResult($i)
                    $kb = Get-UpdateKb $update
                    Write-Log "installed: $kb result code $([int] $result.ResultCode)" $LogPath
                    $results += New-UpdateResult -Kb $kb -Title $update.Title -Url (Get-UpdateUrl $update $kb) `
                        -Classification (Get-UpdateClassification $update) -ResultCode ([int] $result.ResultCode) `
                        -HResult $result.HResult -RebootRequired ([bool] $result.RebootRequired)
                }
                $batchCode = [int] $installation.ResultCode
                $batchHResult = $installation.HResult
                $batchReboot = [bool] $installation.RebootRequired
                if ($batchCode -eq $ResultSucceeded -and $results.Count -gt $installable.Count) {
                    $batchCode = $ResultSucceededWithErrors  # some downloads failed
                }
            } else {
                $batchCode = $ResultFailed
                $batchHResult = $HResultAllFailed
            }
        }
        $reboot = $batchReboot -or (Test-RebootPending)
        New-CycleReport -Key $Key -StartedAt $startedAt -FinishedAt (Get-UtcStamp) -Updates $results `
            -ResultCode $batchCode -HResult $batchHResult -RebootRequired $reboot -Excluded $excluded
    } catch {
        # e.g. WU_E_INVALID_CRITERIA, the update service stopped, no network to Windows Update
        $inner = $_.Exception
        while ($null -ne $inner.InnerException) { $inner = $inner.InnerException }  # the COMException
        $hresult = $inner.HResult
        Write-Log ('cycle failed: {0} (HRESULT 0x{1:X8})' -f $inner.Message, $hresult) $LogPath
        New-CycleReport -Key $Key -StartedAt $startedAt -FinishedAt (Get-UtcStamp) -Updates $results `
            -ResultCode $ResultFailed -HResult $hresult -RebootRequired (Test-RebootPending) -Excluded $excluded
    }
}

# --- running the cycle under SYSTEM ----------------------------------------------------------------

function Invoke-AsSystemTask {
    # Register this script as a one-off scheduled task under SYSTEM, start it, wait for its result file.
    param([string] $TaskName, [string] $JobFile, [string] $ResultFile, [int] $TimeoutMinutes, [string] $LogPath)
    $arguments = '-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{0}" -AsSystemWorker -JobPath "{1}"' -f `
        $PSCommandPath, $JobFile
    $action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arguments
    $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $taskSettings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit (New-TimeSpan -Minutes $TimeoutMinutes) `
        -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -MultipleInstances IgnoreNew
    $existing = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if (-not $existing -or $existing.State -ne 'Running') {
        Register-ScheduledTask -TaskName $TaskName -Action $action -Principal $principal -Settings $taskSettings `
            -Force | Out-Null
        Start-ScheduledTask -TaskName $TaskName
        Write-Log "started scheduled task $TaskName under SYSTEM" $LogPath
    } else {
        Write-Log "scheduled task $TaskName is already running: waiting for it" $LogPath
    }
    $deadline = (Get-Date).AddMinutes($TimeoutMinutes)
    $idleChecks = 0
    while (-not (Test-Path -LiteralPath $ResultFile)) {
        if ((Get-Date) -gt $deadline) {
            throw "the update task $TaskName gave no result within $TimeoutMinutes minutes"
        }
        $state = (Get-ScheduledTask -TaskName $TaskName).State
        if ($state -eq 'Ready' -or $state -eq 'Disabled') {
            $idleChecks += 1
            if ($idleChecks -ge 3) {
                $last = (Get-ScheduledTaskInfo -TaskName $TaskName).LastTaskResult
                throw ('the update task {0} ended without a result (last result 0x{1:X8})' -f $TaskName, $last)
            }
        }
        Start-Sleep -Seconds 10
    }
    Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false -ErrorAction SilentlyContinue
}

# --- the report channel ----------------------------------------------------------------------------

function Send-CycleReport {
    # POST the report with the execution's bearer token; 5xx and network errors are retried, 4xx are final.
    param([string] $Url, [string] $Token, [string] $Key, [string] $Json, [string] $LogPath)
    $headers = @{ Authorization = "Bearer $Token"; 'Idempotency-Key' = $Key }
    $body = [System.Text.Encoding]::UTF8.GetBytes($Json)
    $attempts = 6
    for ($attempt = 1; $attempt -le $attempts; $attempt++) {
        try {
            Invoke-RestMethod -Method Post -Uri $Url -Headers $headers -ContentType 'application/json; charset=utf-8' `
                -Body $body -TimeoutSec 60 | Out-Null
            Write-Log "report posted to $Url" $LogPath
            return
        } catch {
            $status = 0
            if ($_.Exception -is [System.Net.WebException] -and $null -ne $_.Exception.Response) {
                $status = [int] $_.Exception.Response.StatusCode
            }
            $detail = $_.Exception.Message
            if ($null -ne $_.ErrorDetails -and $_.ErrorDetails.Message) { $detail = $_.ErrorDetails.Message }
            if ($status -ge 400 -and $status -lt 500) {
                throw "the report channel refused the report (HTTP $status): $detail"
            }
            if ($attempt -eq $attempts) { throw "the report channel did not answer after $attempts attempts: $detail" }
            Write-Log "report not posted (attempt $attempt, HTTP $status): $detail; retrying" $LogPath
            Start-Sleep -Seconds ([Math]::Min(60, [Math]::Pow(2, $attempt)))
        }
    }
}

# --- entry points ----------------------------------------------------------------------------------

if ($PSCmdlet.ParameterSetName -eq 'Worker') {
    $job = Get-Content -LiteralPath $JobPath -Raw | ConvertFrom-Json
    $report = Invoke-UpdateCycle -Key $job.key -SearchCriteria $job.criteria -Exclude @($job.exclude) `
        -Selection $job.selection -LogPath $job.log
    $partial = $job.result + '.partial'
    Set-Content -LiteralPath $partial -Value (ConvertTo-ReportJson $report) -Encoding UTF8
    Move-Item -LiteralPath $partial -Destination $job.result -Force  # the result appears whole or not at all
    exit 0
}

[Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor `
    [Net.SecurityProtocolType]::Tls12

if (-not (Test-Path -LiteralPath $StateDirectory)) { New-Item -ItemType Directory -Path $StateDirectory | Out-Null }
$safe = Get-SafeName $IdempotencyKey
$logFile = Join-Path $StateDirectory "$safe.log"
$jobFile = Join-Path $StateDirectory "$safe.job.json"
$resultFile = Join-Path $StateDirectory "$safe.result.json"
Write-Log "execution $ExecutionId cycle $Cycle ($IdempotencyKey): Invoking SUS API" $logFile

try {
    if (Test-Path -LiteralPath $resultFile) {
        Write-Log "cycle $IdempotencyKey already ran: reporting its result again" $logFile
    } else {
        $job = [ordered]@{
            key      = $IdempotencyKey
            criteria = $Criteria
            exclude  = @(ConvertTo-KbList $ExcludeKBs)
            selection = [ordered]@{  # what Test-UpdateSelected reads
                include          = @(ConvertTo-KbList ($IncludeKbs -join ','))
                classifications  = @(ConvertTo-NameList $Classifications)
                severities       = @(ConvertTo-NameList $Severities)
                approveAfterDays = ConvertTo-DayCount $ApproveAfterDays
            }
            result   = $resultFile
            log      = $logFile
        }
        Set-Content -LiteralPath $jobFile -Value (ConvertTo-Json -InputObject $job -Depth 3) -Encoding UTF8
        Invoke-AsSystemTask -TaskName "patchaas-$safe" -JobFile $jobFile -ResultFile $resultFile `
            -TimeoutMinutes $TaskTimeoutMinutes -LogPath $logFile
    }
    $json = (Get-Content -LiteralPath $resultFile -Raw).Trim()
    if ($ReportUrl) {
        Send-CycleReport -Url $ReportUrl -Token $ReportToken -Key $IdempotencyKey -Json $json -LogPath $logFile
    } else {
        Write-Log "no report URL: the report stays in $resultFile" $logFile
    }
    Write-Output $json
    exit 0
} catch {
    Write-Log "failed: $($_.Exception.Message)" $logFile
    exit 1
}
