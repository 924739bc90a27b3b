<#
.SYNOPSIS
    Send the new entries of AOMEI Backupper's run history (brlog.xml) to backuphub.

.DESCRIPTION
    One run reads C:\ProgramData\AomeiBR\brlog.xml, keeps per task the entries newer than
    those already delivered, registers tasks the server does not know yet, writes one report
    per task to the spool and sends the spool in order. Whether a backup succeeded is decided
    by the server from the entries; this script only moves them.

    The protocol (state file, spool, report ids, request bodies, exit codes) is the one of the
    Python agent, processors/aomei/agent.py (backuphub agent). See README.md.

.PARAMETER JobId
    Use this job id for the task named by -TaskName instead of registering it. If the server
    does not know the id, the task is registered as usual.

.PARAMETER TaskName
    Only handle the task with this name (its newest name in the file) or this GUID.
    Other tasks keep their entries for a later run.

.PARAMETER MonitorMode
    Run again every -MonitorIntervalSeconds until stopped (or -MaxRuns runs).

.PARAMETER MonitorIntervalSeconds
    Seconds between runs in monitor mode (10 to 86400, default 300).

.PARAMETER MaxRuns
    In monitor mode, stop after this many runs (0, the default: until stopped).

.PARAMETER TestMode
    Check the configuration, reach the API's /health, check the API key with GET /aomei/ping
    (a refused key exits 3; a server older than /ping answers 404, which is only noted), read
    the history file and print the request bodies a run would send. Sends no report and
    writes no file.

.PARAMETER ConfigPath
    The configuration file (default: config.json beside this script, when it exists).

.PARAMETER LogPath
    The AOMEI history file to read, overriding brlog_path of the configuration.

.NOTES
    Exit codes: 0 all delivered, 1 reports left in the spool (API unreachable or another run
    holds the lock), 2 configuration or file error, 3 API key refused, 4 reports rejected.
#>
[CmdletBinding()]
param(
    [long]$JobId = 0,
    [string]$TaskName = '',
    [switch]$MonitorMode,
    [ValidateRange(10, 86400)]
    [int]$MonitorIntervalSeconds = 300,
    [ValidateRange(0, 1000000)]
    [int]$MaxRuns = 0,
    [switch]$TestMode,
    [string]$ConfigPath = '',
    [string]$LogPath = ''
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'common_functions.ps1')


function New-RunResult {
    return @{
        delivered = New-Object 'System.Collections.Generic.List[string]'
        rejected  = New-Object 'System.Collections.Generic.List[string]'
        pending   = New-Object 'System.Collections.Generic.List[string]'
        waiting   = New-Object 'System.Collections.Generic.List[string]'
        messages  = New-Object 'System.Collections.Generic.List[string]'
        auth      = $false
        config    = $false
        down      = $false
    }
}


function Get-RunExitCode {
    <# Auth first, then configuration, then rejections, then what is left for later. #>
    param([hashtable]$Result)

    if ($Result.auth) {
        return $script:ExitAuth
    }
    if ($Result.config) {
        return $script:ExitConfig
    }
    if ($Result.rejected.Count -gt 0) {
        return $script:ExitRejected
    }
    if ($Result.pending.Count -gt 0 -or $Result.waiting.Count -gt 0 -or $Result.down) {
        return $script:ExitPending
    }
    return $script:ExitOk
}


function Stop-Sending {
    <# Stop talking to the API for the rest of the run. #>
    param([hashtable]$Context, [switch]$Auth, [switch]$Config, [switch]$Down)

    $Context.stopped = $true
    if ($Auth) {
        $Context.result.auth = $true
    }
    if ($Config) {
        $Context.result.config = $true
    }
    if ($Down) {
        $Context.result.down = $true
    }
}


function Test-RunEndingAnswer {
    <# True (and the run stopped) for no answer, a refused key or a wrong URL. #>
    param([hashtable]$Context, $Answer, [string]$What)

    if ($null -eq $Answer) {
        $Context.result.messages.Add("${What}: API unreachable or failing; will retry")
        Stop-Sending -Context $Context -Down
        return $true
    }
    if ($script:AuthStatuses -contains $Answer.StatusCode) {
        $Context.result.messages.Add("${What}: API key refused ($($Answer.StatusCode))")
        Stop-Sending -Context $Context -Auth
        return $true
    }
    if ($script:ConfigStatuses -contains $Answer.StatusCode) {
        $Context.result.messages.Add("${What}: $($Answer.StatusCode) from the API; check api_url")
        Stop-Sending -Context $Context -Config
        return $true
    }
    return $false
}


function Register-AgentTask {
    <# Register a task's job and remember its id; $null when that was not possible. #>
    param([hashtable]$Context, [string]$TaskId, [string]$Name)

    $config = $Context.config
    $body = New-RegisterBody -Config $config -TaskId $TaskId -TaskName $Name
    $answer = Invoke-AgentPost -Context $Context -Path $script:RegisterPath -Body $body
    if (Test-RunEndingAnswer -Context $Context -Answer $answer -What "register task $TaskId") {
        return $null
    }

    $data = Get-JsonValue $answer.Document 'data'
    $jobId = ConvertTo-OptionalLong (Get-JsonValue $data 'job_id')
    if ($answer.StatusCode -eq 200 -and $null -ne $jobId -and $jobId -gt 0) {
        $lastEpoch = $null
        if ($Context.state.tasks.ContainsKey($TaskId)) {
            $lastEpoch = $Context.state.tasks[$TaskId].last_epoch
        }
        $Context.state.tasks[$TaskId] = @{
            job_id = $jobId; task_name = $Name; last_epoch = $lastEpoch
        }
        Save-AgentState -StateDir $config.state_dir -State $Context.state
        Write-AgentLog INFO 'task registered' @{ task_id = $TaskId; job_id = $jobId }
        return $jobId
    }

    if ($script:RejectStatuses -contains $answer.StatusCode) {
        $rejected = Join-Path $config.spool_dir 'rejected'
        New-Item -ItemType Directory -Force -Path $rejected | Out-Null
        $record = [ordered]@{ task_id = $TaskId; request = $body }
        $summary = Get-AnswerSummary $answer
        foreach ($key in $summary.Keys) {
            $record[$key] = $summary[$key]
        }
        $record['rejected_at'] = [DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ')
        $where = Join-Path $rejected "register-$TaskId.json"
        Write-JsonAtomically -Path $where -Value $record
        $Context.result.rejected.Add("register-$TaskId")
        $message = Get-AnswerMessage $answer
        $Context.result.messages.Add("registration of task $TaskId refused: $message (see $where)")
        return $null
    }

    $Context.result.messages.Add("register task ${TaskId}: unexpected answer $($answer.StatusCode)")
    Stop-Sending -Context $Context -Down
    return $null
}


function Read-NewEntries {
    <# Per task, the entries newer than its cursor (numbers compared, never text). #>
    param([hashtable]$Config, [hashtable]$Cursors)

    $history = @{ by_task = [ordered]@{}; read = 0; error = $null }
    $path = [string]$Config.brlog_path
    if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
        $history.error = "${path}: no such file"
        return $history
    }
    try {
        $text = Read-BrlogText -Path $path
    }
    catch {
        $history.error = "${path}: cannot read ($($_.Exception.Message))"
        return $history
    }

    $entries = Get-BrlogEntries -Text $text
    $history.read = $entries.Count
    $recognised = [regex]::IsMatch($text, '<(BRLog|Log)(?=[\s/>])')
    $blank = $text.Trim([char[]]" `t`r`n`0$([char]0xFEFF)").Length -eq 0
    if ($entries.Count -eq 0 -and -not $blank -and -not $recognised) {
        $history.error = "${path}: not an AOMEI brlog.xml"
        return $history
    }

    foreach ($entry in $entries) {
        $cursor = $null
        if ($Cursors.ContainsKey($entry.task_id)) {
            $cursor = $Cursors[$entry.task_id]
        }
        if ($null -ne $cursor -and $entry.epoch -le $cursor) {
            continue
        }
        if (-not $history.by_task.Contains($entry.task_id)) {
            $history.by_task[$entry.task_id] = New-Object 'System.Collections.Generic.List[object]'
        }
        $history.by_task[$entry.task_id].Add($entry)
    }
    return $history
}


function Get-Cursors {
    <# Per task, the newest entry time delivered or already waiting in the spool. #>
    param([hashtable]$State, $Pending)

    $cursors = @{}
    foreach ($taskId in @($State.tasks.Keys)) {
        $cursors[$taskId] = $State.tasks[$taskId].last_epoch
    }
    foreach ($report in $Pending) {
        $current = $null
        if ($cursors.ContainsKey($report.task_id)) {
            $current = $cursors[$report.task_id]
        }
        if ($null -eq $current -or $report.last_epoch -gt $current) {
            $cursors[$report.task_id] = $report.last_epoch
        }
    }
    return $cursors
}


function Select-Tasks {
    <# Keep only the task named by -TaskName (name or GUID); apply -JobId to it. #>
    param([hashtable]$State, $ByTask, [string]$Name, [long]$ForcedJobId)

    if (-not $Name) {
        return $ByTask
    }
    $wanted = $Name.Trim().Trim('{', '}').ToLowerInvariant()
    $selected = [ordered]@{}
    foreach ($taskId in @($ByTask.Keys)) {
        $entries = $ByTask[$taskId]
        $newest = $entries[$entries.Count - 1].task_name
        if ($taskId -ne $wanted -and $newest -ne $Name.Trim()) {
            continue
        }
        $selected[$taskId] = $entries
        if ($ForcedJobId -gt 0) {
            $lastEpoch = $null
            if ($State.tasks.ContainsKey($taskId)) {
                $lastEpoch = $State.tasks[$taskId].last_epoch
            }
            $State.tasks[$taskId] = @{
                job_id = $ForcedJobId; task_name = $newest; last_epoch = $lastEpoch
            }
        }
    }
    return $selected
}


function Test-NeedsRegistration {
    <# A task is registered when first seen, when its job is unknown, or when renamed. #>
    param([hashtable]$State, [string]$TaskId, [string]$Name)

    if (-not $State.tasks.ContainsKey($TaskId)) {
        return $true
    }
    $task = $State.tasks[$TaskId]
    return ($null -eq $task.job_id -or $task.task_name -cne $Name)
}


function Add-NewReports {
    <# Register tasks as needed and write their new entries to the spool. #>
    param([hashtable]$Context, $ByTask)

    $config = $Context.config
    $state = $Context.state
    foreach ($taskId in @($ByTask.Keys)) {
        $entries = @($ByTask[$taskId])
        $known = ''
        $jobId = $null
        if ($state.tasks.ContainsKey($taskId)) {
            $known = $state.tasks[$taskId].task_name
            $jobId = $state.tasks[$taskId].job_id
        }
        $name = Get-RegistrationName -Entries $entries -KnownName $known -TaskId $taskId
        # A renamed task keeps its job, so its entries need not wait for the new name.
        $needed = Test-NeedsRegistration -State $state -TaskId $taskId -Name $name
        if ($needed -and -not $Context.stopped) {
            $registered = Register-AgentTask -Context $Context -TaskId $taskId -Name $name
            if ($null -ne $registered) {
                $jobId = $registered
            }
        }
        if ($null -eq $jobId) {
            $Context.result.waiting.Add($taskId)
            continue
        }

        $groups = Split-Entries -Entries $entries -Size ([int]$config.max_entries_per_report)
        foreach ($group in $groups) {
            $body = New-ReportBody -Config $config -JobId $jobId -TaskId $taskId -Entries $group
            $report = Add-SpoolReport -Config $config -Body $body -TaskId $taskId -TaskName $name `
                -Entries $group
            Write-AgentLog INFO 'report spooled' @{
                report_id = $report.report_id; job_id = $jobId; entries = $group.Count
            }
        }
    }
}


function Update-ReportJob {
    <# Use the job id the state knows now (it changes when a lost job is made again). #>
    param([hashtable]$Context, $Report)

    $state = $Context.state
    if (-not $state.tasks.ContainsKey($Report.task_id)) {
        return
    }
    $jobId = $state.tasks[$Report.task_id].job_id
    if ($null -ne $jobId -and (Get-JsonValue $Report.body 'job_id') -ne $jobId) {
        $Report.body.job_id = $jobId
        Write-JsonAtomically -Path $Report.path -Value (ConvertTo-SpoolDocument $Report)
    }
}


function Update-TaskCursor {
    <# Move the task's cursor past the report's entries and save the state. #>
    param([hashtable]$Context, $Report)

    $state = $Context.state
    if (-not $state.tasks.ContainsKey($Report.task_id)) {
        $jobId = ConvertTo-OptionalLong (Get-JsonValue $Report.body 'job_id')
        $state.tasks[$Report.task_id] = @{
            job_id = $jobId; task_name = $Report.task_name; last_epoch = $null
        }
    }
    $task = $state.tasks[$Report.task_id]
    if ($null -eq $task.last_epoch -or $Report.last_epoch -gt $task.last_epoch) {
        $task.last_epoch = $Report.last_epoch
    }
    Save-AgentState -StateDir $Context.config.state_dir -State $state
}


function Deny-Report {
    <# Move a refused report aside and go on: its entries are accounted for there. #>
    param([hashtable]$Context, $Report, $Answer)

    $summary = Get-AnswerSummary $Answer
    $where = Move-ToRejected -Config $Context.config -Path $Report.path -Answer $summary
    Update-TaskCursor -Context $Context -Report $Report
    $Context.result.rejected.Add($Report.report_id)
    $message = Get-AnswerMessage $Answer
    $Context.result.messages.Add("report $($Report.report_id) refused: $message (see $where)")
    Write-AgentLog ERROR 'report rejected' @{
        report_id = $Report.report_id; status_code = $Answer.StatusCode
    }
}


function Send-Report {
    <# Deliver one report; on a lost job, register again once and resend. #>
    param([hashtable]$Context, $Report)

    Update-ReportJob -Context $Context -Report $Report
    $answer = Invoke-AgentPost -Context $Context -Path $script:LogAnalysisPath -Body $Report.body
    if (Test-JobNotFound $answer) {
        Write-AgentLog WARNING 'server lost the job; registering the task again' @{
            report_id = $Report.report_id
        }
        $name = $Report.task_name
        $tasks = $Context.state.tasks
        if ($tasks.ContainsKey($Report.task_id) -and $tasks[$Report.task_id].task_name) {
            $name = $tasks[$Report.task_id].task_name
        }
        if (-not $name) {
            $name = "AOMEI task $($Report.task_id)"
        }
        $jobId = Register-AgentTask -Context $Context -TaskId $Report.task_id -Name $name
        if ($null -eq $jobId) {
            if (-not $Context.stopped) {
                Deny-Report -Context $Context -Report $Report -Answer $answer
            }
            return
        }
        Update-ReportJob -Context $Context -Report $Report
        $answer = Invoke-AgentPost -Context $Context -Path $script:LogAnalysisPath `
            -Body $Report.body
    }

    $what = "report $($Report.report_id)"
    if (Test-RunEndingAnswer -Context $Context -Answer $answer -What $what) {
        return
    }
    if ($answer.StatusCode -eq 200) {
        Remove-Item -LiteralPath $Report.path -Force
        Update-TaskCursor -Context $Context -Report $Report
        $Context.result.delivered.Add($Report.report_id)
        Write-AgentLog INFO 'report delivered' @{
            report_id = $Report.report_id; entries = $Report.entry_count
        }
    }
    elseif ($script:RejectStatuses -contains $answer.StatusCode) {
        Deny-Report -Context $Context -Report $Report -Answer $answer
    }
    else {
        $Context.result.messages.Add("${what}: unexpected answer $($answer.StatusCode)")
        Stop-Sending -Context $Context -Down
    }
}


function Send-PendingReports {
    <# Send the spool in order; stop at the first report the API cannot take now. #>
    param([hashtable]$Context)

    foreach ($report in (Get-PendingReports -Config $Context.config)) {
        if (-not $Context.stopped) {
            Send-Report -Context $Context -Report $report
        }
        if ($Context.stopped -and (Test-Path -LiteralPath $report.path)) {
            $Context.result.pending.Add($report.report_id)
        }
    }
}


function Invoke-AgentRun {
    <# One delivery run; returns the run result. The spool is sent even when the history
       file cannot be read, so reports written by an earlier run still go out. #>
    param([hashtable]$Config, [string]$OnlyTask, [long]$ForcedJobId)

    $result = New-RunResult
    foreach ($problem in (Get-ConfigProblems -Config $Config)) {
        $result.messages.Add($problem)
        $result.config = $true
    }
    if ($result.config) {
        return $result
    }

    New-Item -ItemType Directory -Force -Path $Config.state_dir | Out-Null
    New-Item -ItemType Directory -Force -Path (Join-Path $Config.spool_dir 'pending') | Out-Null
    New-Item -ItemType Directory -Force -Path (Join-Path $Config.spool_dir 'rejected') | Out-Null
    $lock = Enter-AgentLock -StateDir $Config.state_dir
    if ($null -eq $lock) {
        $result.messages.Add('another agent run is in progress (agent.lock)')
        $result.down = $true
        return $result
    }

    $client = $null
    try {
        $client = New-AgentHttpClient -Config $Config
        $context = @{
            config  = $Config
            client  = $client
            state   = Read-AgentState -StateDir $Config.state_dir -ServerName $Config.server_name
            result  = $result
            stopped = $false
            random  = New-Object System.Random
            clock   = [System.Diagnostics.Stopwatch]::StartNew()
        }

        $pending = Get-PendingReports -Config $Config
        $cursors = Get-Cursors -State $context.state -Pending $pending
        $history = Read-NewEntries -Config $Config -Cursors $cursors
        if ($null -ne $history.error) {
            $result.messages.Add($history.error)
            $result.config = $true
        }
        $byTask = Select-Tasks -State $context.state -ByTask $history.by_task -Name $OnlyTask `
            -ForcedJobId $ForcedJobId

        Add-NewReports -Context $context -ByTask $byTask
        Send-PendingReports -Context $context

        $waiting = @(Get-SpoolFiles -Folder (Join-Path $Config.spool_dir 'rejected')).Count
        if ($waiting -gt 0) {
            Write-AgentLog WARNING 'reports wait in the rejected folder' @{ rejected = $waiting }
        }
    }
    finally {
        if ($null -ne $client) {
            $client.Dispose()
        }
        Remove-Item -LiteralPath $lock -Force -ErrorAction SilentlyContinue
    }
    return $result
}


function Get-PlannedRequests {
    <# The requests a run would send now; touches no file and no server. #>
    param([hashtable]$Config, [string]$OnlyTask, [long]$ForcedJobId)

    $state = Read-AgentState -StateDir $Config.state_dir -ServerName $Config.server_name -ReadOnly
    $pending = Get-PendingReports -Config $Config -ReadOnly
    $requests = New-Object 'System.Collections.Generic.List[object]'
    foreach ($report in $pending) {
        $body = $report.body
        if ($state.tasks.ContainsKey($report.task_id)) {
            $known = $state.tasks[$report.task_id].job_id
            if ($null -ne $known) {
                $body.job_id = $known
            }
        }
        $requests.Add([ordered]@{ method = 'POST'; path = $script:LogAnalysisPath; body = $body })
    }

    $cursors = Get-Cursors -State $state -Pending $pending
    $history = Read-NewEntries -Config $Config -Cursors $cursors
    $byTask = Select-Tasks -State $state -ByTask $history.by_task -Name $OnlyTask `
        -ForcedJobId $ForcedJobId
    foreach ($taskId in @($byTask.Keys)) {
        $entries = @($byTask[$taskId])
        $known = ''
        $jobId = $null
        if ($state.tasks.ContainsKey($taskId)) {
            $known = $state.tasks[$taskId].task_name
            $jobId = $state.tasks[$taskId].job_id
        }
        $name = Get-RegistrationName -Entries $entries -KnownName $known -TaskId $taskId
        if (Test-NeedsRegistration -State $state -TaskId $taskId -Name $name) {
            $body = New-RegisterBody -Config $Config -TaskId $taskId -TaskName $name
            $requests.Add([ordered]@{ method = 'POST'; path = $script:RegisterPath; body = $body })
        }
        $groups = Split-Entries -Entries $entries -Size ([int]$Config.max_entries_per_report)
        foreach ($group in $groups) {
            $body = New-ReportBody -Config $Config -JobId $jobId -TaskId $taskId -Entries $group
            $request = [ordered]@{ method = 'POST'; path = $script:LogAnalysisPath; body = $body }
            $requests.Add($request)
        }
    }
    return @{ requests = $requests; error = $history.error }
}


function Test-ApiKey {
    <# GET /aomei/ping once, which carries no data, and judge the key as a run would:
       'accepted', 'refused' (401/403, exit 3), 'unchecked' (404: a server older than /ping,
       or a wrong api_url) or 'down' (no answer, 408, 429, 5xx: exit 1). #>
    param($Client, [hashtable]$Config)

    $where = "API key check $($script:PingPath)"
    $url = (Get-EndpointBase -Config $Config) + $script:PingPath
    $answer = Invoke-AgentHttp -Client $Client -Method 'GET' -Url $url
    $status = $answer.StatusCode
    if ($status -eq 200) {
        Write-AgentLog INFO "${where}: key accepted"
        return 'accepted'
    }
    if ($script:AuthStatuses -contains $status) {
        Write-AgentLog ERROR "${where}: API key refused ($status)"
        return 'refused'
    }
    if ($status -eq 0) {
        Write-AgentLog WARNING "${where}: not reachable ($($answer.Reason)); key not checked"
        return 'down'
    }
    if ($status -eq 404) {
        $note = '404, a server older than /ping or a wrong api_url; key not checked'
        Write-AgentLog WARNING "${where}: $note"
        return 'unchecked'
    }
    Write-AgentLog WARNING "${where}: answered $status; key not checked"
    if ($script:RetryStatuses -contains $status) {
        return 'down'
    }
    return 'unchecked'
}


function Invoke-TestMode {
    <# Check the configuration, reach /health, check the key, print the planned requests;
       the exit code. The key is not checked when the server could not be reached at all. #>
    param([hashtable]$Config, [string]$OnlyTask, [long]$ForcedJobId)

    $problems = @(Get-ConfigProblems -Config $Config)
    foreach ($problem in $problems) {
        Write-AgentLog ERROR $problem
    }
    if ($problems.Count -gt 0) {
        return $script:ExitConfig
    }

    $keyCheck = 'down'
    $client = New-AgentHttpClient -Config $Config
    try {
        $healthUrl = Get-HealthUrl -Config $Config
        $health = Invoke-AgentHttp -Client $client -Method 'GET' -Url $healthUrl
        Write-AgentLog INFO "API ${healthUrl}: $($health.Reason)"
        if ($health.StatusCode -ne 0) {
            $keyCheck = Test-ApiKey -Client $client -Config $Config
        }
    }
    finally {
        $client.Dispose()
    }
    $healthy = $health.StatusCode -eq 200

    $plan = Get-PlannedRequests -Config $Config -OnlyTask $OnlyTask -ForcedJobId $ForcedJobId
    [Console]::Out.WriteLine((ConvertTo-Json -InputObject @($plan.requests) -Depth 20))
    if ($null -ne $plan.error) {
        Write-AgentLog ERROR $plan.error
    }
    # The order of a run: a refused key, then configuration, then an API that cannot take.
    if ($keyCheck -eq 'refused') {
        return $script:ExitAuth
    }
    if ($null -ne $plan.error) {
        return $script:ExitConfig
    }
    if (-not $healthy -or $keyCheck -eq 'down') {
        return $script:ExitPending
    }
    return $script:ExitOk
}


function Write-RunSummary {
    param([hashtable]$Result, [int]$Code)

    foreach ($message in $Result.messages) {
        Write-AgentLog WARNING $message
    }
    Write-AgentLog INFO 'agent run finished' @{
        exit_code = $Code; delivered = $Result.delivered.Count
        rejected = $Result.rejected.Count; pending = $Result.pending.Count
    }
}


# --- main ------------------------------------------------------------------------------------

if (-not $ConfigPath) {
    $besideScript = Join-Path $PSScriptRoot 'config.json'
    if (Test-Path -LiteralPath $besideScript -PathType Leaf) {
        $ConfigPath = $besideScript
    }
}

try {
    $config = Get-AgentConfig -ConfigPath $ConfigPath -LogPath $LogPath
}
catch {
    Write-AgentLog ERROR "configuration unusable: $($_.Exception.Message)"
    exit $script:ExitConfig
}

$level = $script:LogLevels["$($config.log_level)".ToUpperInvariant()]
if ($null -ne $level) {
    $script:LogLevel = $level
}
if ($JobId -gt 0 -and -not $TaskName) {
    Write-AgentLog ERROR '-JobId needs -TaskName (the task the job id belongs to)'
    exit $script:ExitConfig
}

if ($TestMode) {
    exit (Invoke-TestMode -Config $config -OnlyTask $TaskName -ForcedJobId $JobId)
}

try {
    New-Item -ItemType Directory -Force -Path (Split-Path -Parent $config.agent_log_path) | Out-Null
    $script:AgentLogPath = $config.agent_log_path
}
catch {
    Write-AgentLog WARNING 'agent log folder not writable; logging to the console only'
}

$problems = @(Get-ConfigProblems -Config $config)
if ($problems.Count -gt 0) {
    foreach ($problem in $problems) {
        Write-AgentLog ERROR $problem
    }
    exit $script:ExitConfig
}

$runs = 0
while ($true) {
    $code = $script:ExitPending
    try {
        $result = Invoke-AgentRun -Config $config -OnlyTask $TaskName -ForcedJobId $JobId
        $code = Get-RunExitCode -Result $result
        Write-RunSummary -Result $result -Code $code
    }
    catch {
        Write-AgentLog ERROR "run failed: $($_.Exception.Message)"
    }
    $runs++

    if (-not $MonitorMode -or $code -eq $script:ExitAuth) {
        exit $code
    }
    if ($MaxRuns -gt 0 -and $runs -ge $MaxRuns) {
        exit $code
    }
    Start-Sleep -Seconds $MonitorIntervalSeconds
}
