# Protocol functions of the backuphub AOMEI agent for Windows PowerShell 5.1 and PowerShell 7.
#
# The same protocol as processors/aomei/agent.py, step for step: the same state file, the same
# spool layout, the same report ids and the same request bodies (tests/fixtures/agent holds the
# bodies both agents build). Keep the two in step: a change here is a change there.
#
# Dot-source this file; aomei_integration.ps1 does. Nothing here prints or logs the API key.

Set-StrictMode -Version 2.0

$script:ExitOk = 0
$script:ExitPending = 1
$script:ExitConfig = 2
$script:ExitAuth = 3
$script:ExitRejected = 4

$script:StateFileName = 'agent-state.json'
$script:LockFileName = 'agent.lock'
$script:StateFormat = 1
$script:SpoolFormat = 1
$script:StaleLockSeconds = 7200
$script:MaxEpoch = [decimal]'253402300799'
$script:RegisterPath = '/aomei/register'
$script:LogAnalysisPath = '/aomei/log-analysis'
$script:PingPath = '/aomei/ping'
# The code of the 400 for a job id the server does not know; older servers send only the
# message "Job N not found" (see Test-JobNotFound).
$script:JobNotFoundCode = 'job_not_found'

# uuid5(NAMESPACE_URL, "urn:backuphub:aomei-agent:report") = fa503c9d-9854-5324-a00f-3f1e8dc0b442
$script:ReportIdNamespace = [byte[]](
    0xfa, 0x50, 0x3c, 0x9d, 0x98, 0x54, 0x53, 0x24,
    0xa0, 0x0f, 0x3f, 0x1e, 0x8d, 0xc0, 0xb4, 0x42
)

$script:RetryStatuses = @(0, 408, 429, 500, 502, 503, 504)
$script:RejectStatuses = @(400, 413, 422)
$script:AuthStatuses = @(401, 403)
$script:ConfigStatuses = @(404, 405)

# Marks that Windows dialogs leave in copied names (LRM, RLM, ALM, embeddings, isolates,
# BOM, zero-width space) are dropped; no-break spaces read as spaces. As in brlog.py.
$script:InvisibleMarks = New-Object 'System.Collections.Generic.HashSet[int]'
foreach ($code in @(0x200B, 0x200E, 0x200F, 0x061C, 0xFEFF, 0x202A, 0x202B, 0x202C, 0x202D,
        0x202E, 0x2066, 0x2067, 0x2068, 0x2069)) {
    [void]$script:InvisibleMarks.Add($code)
}
$script:NoBreakSpaces = @(0x00A0, 0x202F, 0x2007)

# Complete <Log> elements only: a <Log> opened again before its </Log> loses only itself, the
# root tags end an entry that was never closed, comments and CDATA are stepped over, and a cut
# last entry is simply not matched. Group "entry" holds the element.
$script:EntryPattern = New-Object System.Text.RegularExpressions.Regex(
    '<!--.*?-->|<!\[CDATA\[.*?\]\]>|(?<entry><Log(?=[\s/>])[^>]*(?<!/)>' +
    '(?:<!--.*?-->|<!\[CDATA\[.*?\]\]>|(?!<Log[\s/>]|</?BRLog[\s/>]|<!--|<!\[CDATA\[).)*?' +
    '</Log\s*>)',
    [System.Text.RegularExpressions.RegexOptions]::Singleline
)

$script:LogLevels = @{ DEBUG = 10; INFO = 20; WARNING = 30; ERROR = 40 }
$script:LogLevel = 20
$script:MaxAgentLogBytes = 5 * 1024 * 1024
$script:AgentLogPath = $null


function Write-AgentLog {
    <# Write one log line to the agent's log file and to the console; never pass secrets. #>
    param(
        [Parameter(Mandatory = $true)][string]$Level,
        [Parameter(Mandatory = $true)][string]$Message,
        [hashtable]$Context = @{}
    )

    $rank = $script:LogLevels[$Level]
    if ($null -eq $rank -or $rank -lt $script:LogLevel) {
        return
    }

    $pairs = foreach ($key in ($Context.Keys | Sort-Object)) { '{0}={1}' -f $key, $Context[$key] }
    $stamp = [DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ')
    $line = ('{0} {1} {2} {3}' -f $stamp, $Level, $Message, ($pairs -join ' ')).TrimEnd()
    [Console]::Error.WriteLine($line)

    if ($script:AgentLogPath) {
        try {
            $file = Get-Item -LiteralPath $script:AgentLogPath -ErrorAction SilentlyContinue
            if ($file -and $file.Length -gt $script:MaxAgentLogBytes) {
                $previous = $script:AgentLogPath + '.1'
                Move-Item -LiteralPath $script:AgentLogPath -Destination $previous -Force
            }
            [System.IO.File]::AppendAllText(
                $script:AgentLogPath, $line + "`r`n", (New-Object System.Text.UTF8Encoding($false))
            )
        }
        catch {
            [Console]::Error.WriteLine("cannot write the agent log: $($_.Exception.Message)")
        }
    }
}


function Get-JsonValue {
    <# A property of an object read from JSON, or $Default when it is absent (strict-mode safe). #>
    param($Object, [string]$Name, $Default = $null)

    if ($null -eq $Object) {
        return $Default
    }
    if ($Object -is [System.Collections.IDictionary]) {
        if ($Object.Contains($Name)) {
            return $Object[$Name]
        }
        return $Default
    }
    $property = $Object.PSObject.Properties[$Name]
    if ($null -eq $property) {
        return $Default
    }
    return $property.Value
}


function ConvertTo-OptionalLong {
    <# An integer from JSON, or $null; text and booleans are not numbers here. #>
    param($Value)

    if ($Value -is [int] -or $Value -is [long] -or $Value -is [decimal]) {
        return [long]$Value
    }
    return $null
}


function Write-JsonAtomically {
    <# Write JSON (UTF-8, no BOM) through a temporary file and a rename. #>
    param([Parameter(Mandatory = $true)][string]$Path, [Parameter(Mandatory = $true)]$Value)

    $json = ConvertTo-Json -InputObject $Value -Depth 20
    $folder = Split-Path -Parent $Path
    $temporary = Join-Path $folder ('.{0}.{1}.tmp' -f (Split-Path -Leaf $Path), $PID)
    $utf8 = New-Object System.Text.UTF8Encoding($false)
    [System.IO.File]::WriteAllText($temporary, $json + "`n", $utf8)

    if (Test-Path -LiteralPath $Path -PathType Leaf) {
        try {
            [System.IO.File]::Replace($temporary, $Path, [NullString]::Value)
            return
        }
        catch {
            # Some network shares cannot replace; a forced move is the next best thing.
            Move-Item -LiteralPath $temporary -Destination $Path -Force
            return
        }
    }
    [System.IO.File]::Move($temporary, $Path)
}


function Read-JsonFile {
    <# Read a JSON file (a BOM is tolerated); throws when it is not JSON. #>
    param([Parameter(Mandatory = $true)][string]$Path)

    $text = [System.IO.File]::ReadAllText($Path)
    return (ConvertFrom-Json -InputObject $text)
}


# --- configuration --------------------------------------------------------------------------


function Get-AgentConfig {
    <# The configuration: defaults, then config.json, then parameters; the key from the
       environment variable AOMEI_API_KEY, else from the file. #>
    param([string]$ConfigPath, [string]$LogPath)

    $programData = $env:ProgramData
    if (-not $programData) {
        $programData = 'C:\ProgramData'
    }
    $config = @{
        api_url                = 'http://localhost:8080/api/v1'
        api_key                = ''
        log_level              = 'INFO'
        brlog_path             = (Join-Path $programData 'AomeiBR\brlog.xml')
        state_dir              = (Join-Path $programData 'backuphub\agent')
        spool_dir              = ''
        server_name            = ''
        job_type               = 'system_image'
        log_file_path          = ''
        agent_log_path         = ''
        timeout_seconds        = 30
        max_attempts           = 5
        backoff_base_seconds   = 1
        backoff_max_seconds    = 60
        max_run_seconds        = 300
        max_entries_per_report = 1000
    }

    if ($ConfigPath) {
        if (-not (Test-Path -LiteralPath $ConfigPath -PathType Leaf)) {
            throw "configuration file not found: $ConfigPath"
        }
        $document = Read-JsonFile -Path $ConfigPath
        foreach ($name in @($config.Keys)) {
            $value = Get-JsonValue $document $name
            if ($null -ne $value -and "$value" -ne '') {
                $config[$name] = $value
            }
        }
    }

    if ($LogPath) {
        $config.brlog_path = $LogPath
    }
    if ($env:AOMEI_API_KEY) {
        $config.api_key = $env:AOMEI_API_KEY
    }
    if ("$($config.api_key)" -like 'REPLACE-*') {
        $config.api_key = ''
    }
    if (-not $config.server_name) {
        $config.server_name = [System.Net.Dns]::GetHostName()
    }
    if (-not $config.spool_dir) {
        $config.spool_dir = Join-Path $config.state_dir 'spool'
    }
    if (-not $config.agent_log_path) {
        $config.agent_log_path = Join-Path $config.state_dir 'agent.log'
    }
    if (-not $config.log_file_path) {
        $config.log_file_path = $config.brlog_path
    }
    return $config
}


function Get-ConfigProblems {
    <# What is wrong with a configuration; empty when it can be used. #>
    param([Parameter(Mandatory = $true)][hashtable]$Config)

    $problems = @()
    $uri = $null
    $base = Get-EndpointBase -Config $Config
    if (-not [Uri]::TryCreate($base, [UriKind]::Absolute, [ref]$uri) -or
        @('http', 'https') -notcontains $uri.Scheme) {
        $problems += 'api_url must be an http:// or https:// URL with a host'
    }
    if (-not "$($Config.api_key)".Trim()) {
        $problems += 'no API key (set AOMEI_API_KEY or api_key in config.json)'
    }
    if ([int]$Config.max_attempts -lt 1) {
        $problems += 'max_attempts must be at least 1'
    }
    if ([double]$Config.timeout_seconds -le 0 -or [double]$Config.max_run_seconds -le 0) {
        $problems += 'timeout_seconds and max_run_seconds must be positive'
    }
    if ([int]$Config.max_entries_per_report -lt 1) {
        $problems += 'max_entries_per_report must be at least 1'
    }
    return $problems
}


function Get-EndpointBase {
    <# The API base without a trailing slash or /aomei, e.g. http://host:8080/api/v1. #>
    param([Parameter(Mandatory = $true)][hashtable]$Config)

    $base = "$($Config.api_url)".Trim().TrimEnd('/')
    if ($base.EndsWith('/aomei')) {
        $base = $base.Substring(0, $base.Length - '/aomei'.Length)
    }
    return $base
}


function Get-HealthUrl {
    <# /health lives beside /api/v1 on the service, not under it. #>
    param([Parameter(Mandatory = $true)][hashtable]$Config)

    $root = Get-EndpointBase -Config $Config
    foreach ($suffix in @('/api/v1', '/api')) {
        if ($root.EndsWith($suffix)) {
            $root = $root.Substring(0, $root.Length - $suffix.Length)
            break
        }
    }
    return $root + '/health'
}


# --- reading brlog.xml ----------------------------------------------------------------------


function Get-BrlogEncodingName {
    <# utf-8-sig, utf-8, utf-16-le or utf-16-be, from the BOM or the NUL pattern (as brlog.py). #>
    param([Parameter(Mandatory = $true)][AllowEmptyCollection()][byte[]]$Bytes)

    $utf8Bom = $Bytes.Length -ge 3 -and $Bytes[0] -eq 0xEF -and $Bytes[1] -eq 0xBB
    if ($utf8Bom -and $Bytes[2] -eq 0xBF) {
        return 'utf-8-sig'
    }
    if ($Bytes.Length -ge 2 -and $Bytes[0] -eq 0xFF -and $Bytes[1] -eq 0xFE) {
        return 'utf-16-le'
    }
    if ($Bytes.Length -ge 2 -and $Bytes[0] -eq 0xFE -and $Bytes[1] -eq 0xFF) {
        return 'utf-16-be'
    }

    # Only byte pairs with exactly one NUL speak for UTF-16; markup is ASCII.
    $pairs = [Math]::Min($Bytes.Length, 4096) -shr 1
    $lowNul = 0
    $highNul = 0
    $textPairs = 0
    for ($index = 0; $index -lt $pairs; $index++) {
        $first = $Bytes[2 * $index]
        $second = $Bytes[2 * $index + 1]
        if ($first -eq 0 -and $second -eq 0) {
            continue
        }
        $textPairs++
        if ($second -eq 0) {
            $lowNul++
        }
        elseif ($first -eq 0) {
            $highNul++
        }
    }
    $least = [Math]::Max(2, [Math]::Floor($textPairs / 10))
    if ($lowNul -ge $least -and $lowNul -gt 2 * $highNul) {
        return 'utf-16-le'
    }
    if ($highNul -ge $least -and $highNul -gt 2 * $lowNul) {
        return 'utf-16-be'
    }
    return 'utf-8'
}


function Read-BrlogText {
    <# The decoded text of the history file, read while AOMEI may be writing it. #>
    param([Parameter(Mandatory = $true)][string]$Path)

    $share = [System.IO.FileShare]::ReadWrite -bor [System.IO.FileShare]::Delete
    $mode = [System.IO.FileMode]::Open
    $stream = [System.IO.File]::Open($Path, $mode, [System.IO.FileAccess]::Read, $share)
    try {
        $memory = New-Object System.IO.MemoryStream
        $stream.CopyTo($memory)
        $bytes = $memory.ToArray()
    }
    finally {
        $stream.Dispose()
    }

    $name = Get-BrlogEncodingName -Bytes $bytes
    switch ($name) {
        'utf-8-sig' { return [System.Text.Encoding]::UTF8.GetString($bytes, 3, $bytes.Length - 3) }
        'utf-16-le' { $encoding = [System.Text.Encoding]::Unicode }
        'utf-16-be' { $encoding = [System.Text.Encoding]::BigEndianUnicode }
        default { return [System.Text.Encoding]::UTF8.GetString($bytes) }
    }
    $offset = 0
    $littleBom = $bytes.Length -ge 2 -and $bytes[0] -eq 0xFF -and $bytes[1] -eq 0xFE
    $bigBom = $bytes.Length -ge 2 -and $bytes[0] -eq 0xFE -and $bytes[1] -eq 0xFF
    if ($littleBom -or $bigBom) {
        $offset = 2
    }
    # An odd last byte is half a character of an entry cut while being written: dropped.
    $length = ($bytes.Length - $offset) - (($bytes.Length - $offset) % 2)
    return $encoding.GetString($bytes, $offset, $length)
}


function ConvertTo-CleanName {
    <# Drop invisible direction marks, read no-break spaces as spaces, and trim. #>
    param([AllowEmptyString()][string]$Text)

    $builder = New-Object System.Text.StringBuilder
    foreach ($character in $Text.ToCharArray()) {
        $code = [int]$character
        if ($script:InvisibleMarks.Contains($code)) {
            continue
        }
        if ($script:NoBreakSpaces -contains $code) {
            [void]$builder.Append(' ')
        }
        else {
            [void]$builder.Append($character)
        }
    }
    return $builder.ToString().Trim()
}


function Get-PlainText {
    <# All text inside an element, trimmed; $null when absent or empty. #>
    param($Element)

    if ($null -eq $Element) {
        return $null
    }
    $text = $Element.InnerText.Trim()
    if ($text.Length -eq 0) {
        return $null
    }
    return $text
}


function ConvertTo-CanonicalInteger {
    <# Digits with an optional sign written as Python's str(int(...)) writes them. #>
    param([Parameter(Mandatory = $true)][string]$Text)

    $negative = $Text.StartsWith('-')
    $digits = $Text.TrimStart('+', '-').TrimStart('0')
    if ($digits.Length -eq 0) {
        return '0'
    }
    if ($negative) {
        return '-' + $digits
    }
    return $digits
}


function ConvertFrom-LogElement {
    <# One entry from the text of one <Log> element, or $null when brlog.py would skip it. #>
    param([Parameter(Mandatory = $true)][string]$ElementText)

    $document = New-Object System.Xml.XmlDocument
    $document.PreserveWhitespace = $true
    $document.XmlResolver = $null
    # XML's own end-of-line rule, applied here so that .NET sees what Python's expat sees.
    $normalised = $ElementText.Replace("`r`n", "`n").Replace("`r", "`n")
    try {
        $document.LoadXml($normalised)
    }
    catch {
        return $null
    }
    $root = $document.DocumentElement

    $fields = @{}
    foreach ($child in $root.ChildNodes) {
        if ($child.NodeType -ne [System.Xml.XmlNodeType]::Element) {
            continue
        }
        $key = $child.LocalName.ToLowerInvariant()
        if (-not $fields.ContainsKey($key)) {
            $fields[$key] = $child
        }
    }
    $rawId = $null
    foreach ($attribute in $root.Attributes) {
        if ($attribute.LocalName.ToLowerInvariant() -eq 'id') {
            $rawId = $attribute.Value
        }
    }

    if ($null -eq $rawId) {
        return $null
    }
    $guid = [regex]::Match($rawId.Trim(),
        '\A\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?\z')
    if (-not $guid.Success) {
        return $null
    }

    $rawTime = Get-PlainText $fields['time']
    if ($null -eq $rawTime) {
        return $null
    }
    $timeText = ConvertTo-CleanName $rawTime
    if (-not [regex]::IsMatch($timeText, '\A[0-9]{1,20}\z')) {
        return $null
    }
    $epochText = ConvertTo-CanonicalInteger $timeText
    if ([decimal]$epochText -gt $script:MaxEpoch) {
        return $null
    }

    $rawName = Get-PlainText $fields['task']
    $taskName = ''
    if ($null -ne $rawName) {
        $taskName = ConvertTo-CleanName $rawName
    }

    $resultCode = $null
    $codeText = Get-PlainText $fields['resultcode']
    if ($null -ne $codeText) {
        $codeText = ConvertTo-CleanName $codeText
        if ([regex]::IsMatch($codeText, '\A[+-]?[0-9]{1,20}\z')) {
            $resultCode = ConvertTo-CanonicalInteger $codeText
        }
    }

    return [pscustomobject]@{
        task_id     = $guid.Groups[1].Value.ToLowerInvariant()
        task_name   = $taskName
        epoch       = [long]$epochText
        operation   = Get-PlainText $fields['operation']
        result      = Get-PlainText $fields['result']
        result_code = $resultCode
        detail      = Get-PlainText $fields['detail']
    }
}


function Get-BrlogEntries {
    <# The complete entries of the history text, in file order. #>
    param([Parameter(Mandatory = $true)][AllowEmptyString()][string]$Text)

    $entries = New-Object 'System.Collections.Generic.List[object]'
    foreach ($match in $script:EntryPattern.Matches($Text)) {
        $group = $match.Groups['entry']
        if (-not $group.Success) {
            continue
        }
        $entry = ConvertFrom-LogElement -ElementText $group.Value
        if ($null -ne $entry) {
            $entries.Add($entry)
        }
    }
    return , $entries
}


# --- what goes on the wire --------------------------------------------------------------------


function ConvertTo-XmlText {
    <# Escape element content; CR as a reference, since parsers turn it into LF. #>
    param([AllowEmptyString()][string]$Text)

    $escaped = $Text.Replace('&', '&amp;').Replace('<', '&lt;').Replace('>', '&gt;')
    return $escaped.Replace("`r", '&#13;')
}


function ConvertTo-EntryXml {
    <# One entry as the canonical one-line <Log> element (the same text as agent.py). #>
    param([Parameter(Mandatory = $true)]$Entry)

    $builder = New-Object System.Text.StringBuilder
    [void]$builder.Append('<Log ID="{' + $Entry.task_id + '}">')
    [void]$builder.Append('<Time>' + $Entry.epoch + '</Time>')
    [void]$builder.Append('<Task>' + (ConvertTo-XmlText $Entry.task_name) + '</Task>')
    $optional = @(
        @('Operation', $Entry.operation),
        @('Result', $Entry.result),
        @('ResultCode', $Entry.result_code),
        @('Detail', $Entry.detail)
    )
    foreach ($pair in $optional) {
        if ($null -ne $pair[1]) {
            $tag = $pair[0]
            [void]$builder.Append("<$tag>" + (ConvertTo-XmlText $pair[1]) + "</$tag>")
        }
    }
    [void]$builder.Append('</Log>')
    return $builder.ToString()
}


function Get-ReportId {
    <# uuid5 of "server|task guid|first epoch|last epoch" in the agent's namespace. #>
    param(
        [Parameter(Mandatory = $true)][string]$ServerName,
        [Parameter(Mandatory = $true)][string]$TaskId,
        [Parameter(Mandatory = $true)][long]$FirstEpoch,
        [Parameter(Mandatory = $true)][long]$LastEpoch
    )

    $name = [System.Text.Encoding]::UTF8.GetBytes("$ServerName|$TaskId|$FirstEpoch|$LastEpoch")
    $sha1 = [System.Security.Cryptography.SHA1]::Create()
    try {
        $hash = $sha1.ComputeHash([byte[]]($script:ReportIdNamespace + $name))
    }
    finally {
        $sha1.Dispose()
    }

    [byte[]]$bytes = $hash[0..15]
    $bytes[6] = ($bytes[6] -band 0x0F) -bor 0x50
    $bytes[8] = ($bytes[8] -band 0x3F) -bor 0x80
    $hex = -join ($bytes | ForEach-Object { $_.ToString('x2') })
    return '{0}-{1}-{2}-{3}-{4}' -f $hex.Substring(0, 8), $hex.Substring(8, 4),
        $hex.Substring(12, 4), $hex.Substring(16, 4), $hex.Substring(20, 12)
}


function New-RegisterBody {
    <# Create the task's job or find it again; target_path and description are left out so
       that values set on the server are kept. #>
    param([hashtable]$Config, [string]$TaskId, [string]$TaskName)

    return [ordered]@{
        job_id        = 0
        task_name     = $TaskName
        job_type      = $Config.job_type
        target_server = $Config.server_name
        task_guid     = $TaskId
    }
}


function New-ReportBody {
    <# The log-analysis body for one task's entries ($null job id only in test mode). #>
    param([hashtable]$Config, $JobId, [string]$TaskId, [object[]]$Entries)

    $epochs = $Entries | ForEach-Object { $_.epoch } | Measure-Object -Minimum -Maximum
    $xml = ($Entries | ForEach-Object { ConvertTo-EntryXml -Entry $_ }) -join "`n"
    $reportId = Get-ReportId -ServerName $Config.server_name -TaskId $TaskId `
        -FirstEpoch ([long]$epochs.Minimum) -LastEpoch ([long]$epochs.Maximum)
    return [ordered]@{
        job_id        = $JobId
        log_file_path = $Config.log_file_path
        report_id     = $reportId
        raw_entries   = [ordered]@{ format = 'xml'; xml = $xml; task_id = $TaskId }
    }
}


function Get-RegistrationName {
    <# The name to register a task under: its newest entry's, else the known one. #>
    param([object[]]$Entries, [string]$KnownName, [string]$TaskId)

    $newest = $Entries[$Entries.Count - 1].task_name
    if ($newest) {
        return $newest
    }
    if ($KnownName) {
        return $KnownName
    }
    return "AOMEI task $TaskId"
}


function Split-Entries {
    <# Entries in groups of at most $Size, in order (one report per group). #>
    param([object[]]$Entries, [int]$Size)

    $groups = New-Object 'System.Collections.Generic.List[object]'
    for ($start = 0; $start -lt $Entries.Count; $start += $Size) {
        $end = [Math]::Min($start + $Size, $Entries.Count) - 1
        $groups.Add(@($Entries[$start..$end]))
    }
    return , $groups
}


# --- state, spool, lock -----------------------------------------------------------------------


function Read-AgentState {
    <# The state file, or an empty state. A damaged file is set aside (re-delivery is safe:
       the server counts each entry once). #>
    param([string]$StateDir, [string]$ServerName, [switch]$ReadOnly)

    $state = @{ server_name = $ServerName; tasks = @{} }
    $path = Join-Path $StateDir $script:StateFileName
    if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
        return $state
    }
    try {
        $document = Read-JsonFile -Path $path
        if ($null -eq $document) {
            throw 'empty state file'
        }
    }
    catch {
        Write-AgentLog WARNING 'state file unreadable; starting over'
        if (-not $ReadOnly) {
            $aside = '{0}.damaged-{1}' -f $path, [DateTimeOffset]::UtcNow.ToUnixTimeSeconds()
            Move-Item -LiteralPath $path -Destination $aside -Force -ErrorAction SilentlyContinue
        }
        return $state
    }

    if ((Get-JsonValue $document 'server_name') -cne $ServerName) {
        Write-AgentLog WARNING 'state file belongs to another server name; starting over'
        return $state
    }
    $tasks = Get-JsonValue $document 'tasks'
    if ($null -eq $tasks) {
        return $state
    }
    foreach ($property in $tasks.PSObject.Properties) {
        $item = $property.Value
        $state.tasks[$property.Name] = @{
            job_id     = ConvertTo-OptionalLong (Get-JsonValue $item 'job_id')
            task_name  = [string](Get-JsonValue $item 'task_name' '')
            last_epoch = ConvertTo-OptionalLong (Get-JsonValue $item 'last_epoch')
        }
    }
    return $state
}


function Save-AgentState {
    <# Write the state atomically, in the format agent.py writes. #>
    param([string]$StateDir, [hashtable]$State)

    $tasks = [ordered]@{}
    foreach ($taskId in ([string[]]@($State.tasks.Keys) | Sort-Object)) {
        $task = $State.tasks[$taskId]
        $tasks[$taskId] = [ordered]@{
            job_id     = $task.job_id
            task_name  = $task.task_name
            last_epoch = $task.last_epoch
        }
    }
    $document = [ordered]@{
        format      = $script:StateFormat
        server_name = $State.server_name
        tasks       = $tasks
    }
    Write-JsonAtomically -Path (Join-Path $StateDir $script:StateFileName) -Value $document
}


function Get-SpoolFiles {
    <# Numbered report files of a spool folder as @{ sequence; path }, in sequence order. #>
    param([string]$Folder)

    $found = New-Object 'System.Collections.Generic.List[object]'
    if (-not (Test-Path -LiteralPath $Folder -PathType Container)) {
        return , $found
    }
    foreach ($file in (Get-ChildItem -LiteralPath $Folder -File)) {
        if ($file.Name.EndsWith('.answer.json')) {
            continue
        }
        $match = [regex]::Match($file.Name, '\A([0-9]{8,})-([A-Za-z0-9._:\-]+)\.json\z')
        if ($match.Success) {
            $sequence = [long]$match.Groups[1].Value
            $found.Add([pscustomobject]@{ sequence = $sequence; path = $file.FullName })
        }
    }
    $sorted = @($found | Sort-Object -Property sequence)
    return , $sorted
}


function Get-NextSequence {
    param([hashtable]$Config)

    $highest = 0
    foreach ($folder in @('pending', 'rejected')) {
        foreach ($item in (Get-SpoolFiles -Folder (Join-Path $Config.spool_dir $folder))) {
            $highest = [Math]::Max($highest, $item.sequence)
        }
    }
    return $highest + 1
}


function Move-ToRejected {
    <# Move a spool file to rejected\ with the answer stored beside it as NAME.answer.json. #>
    param([hashtable]$Config, [string]$Path, $Answer)

    $rejected = Join-Path $Config.spool_dir 'rejected'
    New-Item -ItemType Directory -Force -Path $rejected | Out-Null
    $target = Join-Path $rejected (Split-Path -Leaf $Path)
    $answerPath = $target.Substring(0, $target.Length - '.json'.Length) + '.answer.json'
    $record = [ordered]@{}
    foreach ($key in $Answer.Keys) {
        $record[$key] = $Answer[$key]
    }
    $record['rejected_at'] = [DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ')
    Write-JsonAtomically -Path $answerPath -Value $record
    Move-Item -LiteralPath $Path -Destination $target -Force
    return $target
}


function Get-PendingReports {
    <# The pending reports in sending order; unreadable files go to rejected\ (unless read-only). #>
    param([hashtable]$Config, [switch]$ReadOnly)

    $reports = New-Object 'System.Collections.Generic.List[object]'
    foreach ($item in (Get-SpoolFiles -Folder (Join-Path $Config.spool_dir 'pending'))) {
        try {
            $document = Read-JsonFile -Path $item.path
            # PowerShell 7 turns ISO 8601 strings into dates; write them back as agent.py does.
            $created = Get-JsonValue $document 'created_at' ''
            if ($created -is [datetime]) {
                $created = $created.ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')
            }
            $report = [pscustomobject]@{
                sequence    = $item.sequence
                path        = $item.path
                report_id   = [string](Get-JsonValue $document 'report_id')
                task_id     = [string](Get-JsonValue $document 'task_id')
                task_name   = [string](Get-JsonValue $document 'task_name' '')
                first_epoch = [long](Get-JsonValue $document 'first_epoch')
                last_epoch  = [long](Get-JsonValue $document 'last_epoch')
                entry_count = [long](Get-JsonValue $document 'entry_count' 0)
                created_at  = [string]$created
                body        = Get-JsonValue $document 'body'
            }
            if (-not $report.report_id -or -not $report.task_id -or $null -eq $report.body) {
                throw 'missing fields'
            }
            $reports.Add($report)
        }
        catch {
            $fileName = Split-Path -Leaf $item.path
            Write-AgentLog ERROR 'spool file unreadable' @{ spool_file = $fileName }
            if (-not $ReadOnly) {
                $note = @{ agent_error = 'unreadable spool file' }
                Move-ToRejected -Config $Config -Path $item.path -Answer $note | Out-Null
            }
        }
    }
    return , $reports
}


function ConvertTo-SpoolDocument {
    param($Report)

    return [ordered]@{
        format      = $script:SpoolFormat
        report_id   = $Report.report_id
        task_id     = $Report.task_id
        task_name   = $Report.task_name
        first_epoch = $Report.first_epoch
        last_epoch  = $Report.last_epoch
        entry_count = $Report.entry_count
        created_at  = $Report.created_at
        body        = $Report.body
    }
}


function Add-SpoolReport {
    <# Write a new report to pending\ after every report already there. #>
    param([hashtable]$Config, $Body, [string]$TaskId, [string]$TaskName, [object[]]$Entries)

    $sequence = Get-NextSequence -Config $Config
    $epochs = $Entries | ForEach-Object { $_.epoch } | Measure-Object -Minimum -Maximum
    $name = '{0:D8}-{1}.json' -f $sequence, $Body.report_id
    $report = [pscustomobject]@{
        sequence    = $sequence
        path        = Join-Path (Join-Path $Config.spool_dir 'pending') $name
        report_id   = $Body.report_id
        task_id     = $TaskId
        task_name   = $TaskName
        first_epoch = [long]$epochs.Minimum
        last_epoch  = [long]$epochs.Maximum
        entry_count = $Entries.Count
        created_at  = [DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ')
        body        = $Body
    }
    Write-JsonAtomically -Path $report.path -Value (ConvertTo-SpoolDocument $report)
    return $report
}


function Enter-AgentLock {
    <# Take agent.lock (shared with the Python agent); $null when another run holds it. #>
    param([string]$StateDir)

    $path = Join-Path $StateDir $script:LockFileName
    for ($attempt = 0; $attempt -lt 2; $attempt++) {
        try {
            $stream = [System.IO.File]::Open(
                $path, [System.IO.FileMode]::CreateNew, [System.IO.FileAccess]::Write,
                [System.IO.FileShare]::Read
            )
            try {
                $started = [DateTimeOffset]::UtcNow.ToUnixTimeSeconds()
                $text = '{{"pid": {0}, "started_at": {1}}}' -f $PID, $started
                $bytes = [System.Text.Encoding]::UTF8.GetBytes($text)
                $stream.Write($bytes, 0, $bytes.Length)
            }
            finally {
                $stream.Dispose()
            }
            return $path
        }
        catch {
            $lock = Get-Item -LiteralPath $path -ErrorAction SilentlyContinue
            if ($null -eq $lock) {
                continue
            }
            $age = ([DateTime]::UtcNow - $lock.LastWriteTimeUtc).TotalSeconds
            if ($age -gt $script:StaleLockSeconds) {
                Write-AgentLog WARNING 'removing a stale agent lock'
                Remove-Item -LiteralPath $path -Force -ErrorAction SilentlyContinue
                continue
            }
            return $null
        }
    }
    return $null
}


# --- HTTP --------------------------------------------------------------------------------------


function New-AgentHttpClient {
    <# An HttpClient with the key header; the same code path on PowerShell 5.1 and 7. #>
    param([hashtable]$Config)

    Add-Type -AssemblyName System.Net.Http
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor
        [Net.SecurityProtocolType]::Tls12
    $handler = New-Object System.Net.Http.HttpClientHandler
    $handler.AllowAutoRedirect = $false
    $client = New-Object System.Net.Http.HttpClient($handler)
    $client.Timeout = [TimeSpan]::FromSeconds([double]$Config.timeout_seconds)
    $headers = $client.DefaultRequestHeaders
    [void]$headers.TryAddWithoutValidation('X-API-Key', [string]$Config.api_key)
    [void]$headers.TryAddWithoutValidation('User-Agent', 'backuphub-aomei-agent-ps/1')
    return $client
}


function Invoke-AgentHttp {
    <# One request. StatusCode 0 means no answer (connection failed or timed out). #>
    param($Client, [string]$Method, [string]$Url, [string]$Json)

    $response = $null
    try {
        if ($Method -eq 'GET') {
            $response = $Client.GetAsync($Url).GetAwaiter().GetResult()
        }
        else {
            $utf8 = [System.Text.Encoding]::UTF8
            $content = New-Object System.Net.Http.StringContent($Json, $utf8, 'application/json')
            $response = $Client.PostAsync($Url, $content).GetAwaiter().GetResult()
        }
    }
    catch {
        $inner = $_.Exception
        while ($null -ne $inner.InnerException) {
            $inner = $inner.InnerException
        }
        return [pscustomobject]@{
            StatusCode = 0; Text = ''; Document = $null; RetryAfter = $null
            Reason = $inner.GetType().Name
        }
    }

    try {
        $text = $response.Content.ReadAsStringAsync().GetAwaiter().GetResult()
        $retryAfter = $null
        $header = $response.Headers.RetryAfter
        if ($null -ne $header -and $null -ne $header.Delta) {
            $retryAfter = $header.Delta.Value.TotalSeconds
        }
        elseif ($null -ne $header -and $null -ne $header.Date) {
            $until = $header.Date.Value - [DateTimeOffset]::UtcNow
            $retryAfter = [Math]::Max(0, $until.TotalSeconds)
        }
        $document = $null
        try {
            $document = ConvertFrom-Json -InputObject $text
        }
        catch {
            $document = $null
        }
        return [pscustomobject]@{
            StatusCode = [int]$response.StatusCode; Text = $text; Document = $document
            RetryAfter = $retryAfter; Reason = "HTTP $([int]$response.StatusCode)"
        }
    }
    finally {
        $response.Dispose()
    }
}


function Get-BackoffDelay {
    <# Exponential back-off with full jitter: uniform in [0, min(cap, base * 2^attempt)]. #>
    param([int]$Attempt, [double]$Base, [double]$Cap, [System.Random]$Random)

    return $Random.NextDouble() * [Math]::Min($Cap, $Base * [Math]::Pow(2, $Attempt))
}


function Invoke-AgentPost {
    <# POST with bounded retries; honours Retry-After; $null when it gave up for this run. #>
    param([hashtable]$Context, [string]$Path, $Body)

    $config = $Context.config
    $url = (Get-EndpointBase -Config $config) + $Path
    $json = ConvertTo-Json -InputObject $Body -Depth 20 -Compress
    $attempts = [int]$config.max_attempts
    for ($attempt = 0; $attempt -lt $attempts; $attempt++) {
        $answer = Invoke-AgentHttp -Client $Context.client -Method 'POST' -Url $url -Json $json
        if ($script:RetryStatuses -notcontains $answer.StatusCode) {
            return $answer
        }

        if ($attempt + 1 -ge $attempts) {
            Write-AgentLog WARNING 'API still failing; giving up for this run' @{
                path = $Path; reason = $answer.Reason; attempts = $attempt + 1
            }
            return $null
        }

        $delay = Get-BackoffDelay -Attempt $attempt -Base ([double]$config.backoff_base_seconds) `
            -Cap ([double]$config.backoff_max_seconds) -Random $Context.random
        if ($null -ne $answer.RetryAfter) {
            $delay += [double]$answer.RetryAfter
        }
        $left = [double]$config.max_run_seconds - $Context.clock.Elapsed.TotalSeconds
        if ($delay -gt $left) {
            Write-AgentLog WARNING 'no time left in this run to retry' @{
                path = $Path; reason = $answer.Reason
            }
            return $null
        }
        Write-AgentLog INFO 'API failed; retrying' @{
            path = $Path; reason = $answer.Reason; delay_seconds = [Math]::Round($delay, 3)
        }
        Start-Sleep -Milliseconds ([int][Math]::Ceiling($delay * 1000))
    }
    return $null
}


function Get-AnswerMessage {
    param($Answer)

    $message = Get-JsonValue $Answer.Document 'message'
    if ($null -ne $message) {
        return [string]$message
    }
    if ($Answer.Text.Length -gt 200) {
        return $Answer.Text.Substring(0, 200)
    }
    return $Answer.Text
}


function Get-AnswerSummary {
    <# What is stored beside a rejected report: the status and the server's own words. #>
    param($Answer)

    if ($null -ne $Answer.Document) {
        return [ordered]@{ status_code = $Answer.StatusCode; answer = $Answer.Document }
    }
    $text = $Answer.Text
    if ($text.Length -gt 2000) {
        $text = $text.Substring(0, 2000)
    }
    return [ordered]@{ status_code = $Answer.StatusCode; answer_text = $text }
}


function Test-JobNotFound {
    <# True for the 400 the server gives for a job id it does not know. Its code decides when
       there is one; only a server older than the code is read by its message. errors[].field
       'job_id' is no sign: a plain validation error on job_id names that field too. #>
    param($Answer)

    if ($null -eq $Answer -or $Answer.StatusCode -ne 400 -or $null -eq $Answer.Document) {
        return $false
    }
    $code = Get-JsonValue $Answer.Document 'code'
    if ($null -ne $code) {
        return ([string]$code -ceq $script:JobNotFoundCode)
    }
    return [regex]::IsMatch((Get-AnswerMessage $Answer), '\AJob [0-9]+ not found')
}
