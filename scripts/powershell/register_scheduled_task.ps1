<#
.SYNOPSIS
    Register (or remove) the Windows scheduled task that runs the backuphub AOMEI agent.

.DESCRIPTION
    Creates a task that runs aomei_integration.ps1 as SYSTEM at start-up and then every
    -EveryMinutes minutes, one run at a time. A run that finds the API down leaves its reports
    in the spool; the next run sends them, so a short interval is what bounds the delay.

    Run from an elevated PowerShell. The API key is read by the agent from config.json (or the
    AOMEI_API_KEY variable of the SYSTEM account); -ProtectConfig limits config.json to SYSTEM
    and Administrators so the key is not readable by other users.

.PARAMETER ScheduledTaskName
    Name of the scheduled task (default "backuphub AOMEI agent").

.PARAMETER ScriptPath
    The agent script (default: aomei_integration.ps1 beside this script).

.PARAMETER ConfigPath
    The agent's configuration (default: config.json beside this script).

.PARAMETER EveryMinutes
    Minutes between runs (5 to 1440, default 60).

.PARAMETER ProtectConfig
    Restrict config.json to SYSTEM and Administrators (removes inherited permissions).

.PARAMETER Unregister
    Remove the scheduled task instead of creating it.

.EXAMPLE
    .\register_scheduled_task.ps1 -EveryMinutes 30 -ProtectConfig
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [string]$ScheduledTaskName = 'backuphub AOMEI agent',
    [string]$ScriptPath = '',
    [string]$ConfigPath = '',
    [ValidateRange(5, 1440)]
    [int]$EveryMinutes = 60,
    [switch]$ProtectConfig,
    [switch]$Unregister
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'

if (-not $ScriptPath) {
    $ScriptPath = Join-Path $PSScriptRoot 'aomei_integration.ps1'
}
if (-not $ConfigPath) {
    $ConfigPath = Join-Path $PSScriptRoot 'config.json'
}

$principal = [Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    [Console]::Error.WriteLine('Run this script from an elevated PowerShell (as Administrator).')
    exit 2
}

if ($Unregister) {
    if ($PSCmdlet.ShouldProcess($ScheduledTaskName, 'Unregister scheduled task')) {
        Unregister-ScheduledTask -TaskName $ScheduledTaskName -Confirm:$false
        Write-Output "Removed scheduled task '$ScheduledTaskName'."
    }
    exit 0
}

foreach ($path in @($ScriptPath, $ConfigPath)) {
    if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
        [Console]::Error.WriteLine("Not found: $path")
        exit 2
    }
}
$ScriptPath = (Resolve-Path -LiteralPath $ScriptPath).Path
$ConfigPath = (Resolve-Path -LiteralPath $ConfigPath).Path

$restrict = 'Restrict to SYSTEM and Administrators'
if ($ProtectConfig -and $PSCmdlet.ShouldProcess($ConfigPath, $restrict)) {
    # SIDs, not names: "Administrators" is "Administrateurs" on a French Windows.
    & icacls.exe $ConfigPath /inheritance:r /grant:r '*S-1-5-18:F' '*S-1-5-32-544:F' | Out-Null
    if ($LASTEXITCODE -ne 0) {
        [Console]::Error.WriteLine("icacls could not restrict $ConfigPath (exit $LASTEXITCODE).")
        exit 2
    }
}

$arguments = '-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "{0}" -ConfigPath "{1}"' -f
    $ScriptPath, $ConfigPath
$action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arguments

$start = (Get-Date).AddMinutes(2)
$repeat = New-TimeSpan -Minutes $EveryMinutes
$triggers = @(
    (New-ScheduledTaskTrigger -AtStartup),
    (New-ScheduledTaskTrigger -Once -At $start -RepetitionInterval $repeat)
)

$runAs = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
$settings = New-ScheduledTaskSettingsSet -MultipleInstances IgnoreNew -StartWhenAvailable `
    -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
    -ExecutionTimeLimit (New-TimeSpan -Minutes 30)

if ($PSCmdlet.ShouldProcess($ScheduledTaskName, 'Register scheduled task')) {
    Register-ScheduledTask -TaskName $ScheduledTaskName -Action $action -Trigger $triggers `
        -Principal $runAs -Settings $settings -Force `
        -Description 'Sends new AOMEI Backupper run history entries to backuphub.' | Out-Null
    Write-Output "Registered '$ScheduledTaskName': every $EveryMinutes minutes and at start-up."
    Write-Output "Last result codes: 0 delivered, 1 spooled for later, 2 configuration,"
    Write-Output "3 API key refused, 4 reports rejected (see the spool's rejected folder)."
}
