"""Alert decisions, as plain functions: what to raise and what to resolve, and nothing else.

The functions here read what the caller hands over (the job's settings, its open alerts, its
recent durations, the new execution, the current time) and answer with decisions. They do no
I/O, so the rules are tested alone with a controlled clock; the caller applies the decisions
where the state lives (``consumers.alert_store``, inside the persister's batch transaction, the
embedded sink's transaction, and the missing-backup check's transaction).

The rules, per job and kind, keep at most ONE open alert until it is resolved:

- ``backup_failed``: a failed run raises it; only a later *successful* run resolves it (a
  warning after a failure does not, so a job that alternates never flaps).
- ``backup_warning``: a warning run raises it, unless ``backup_failed`` is already open (the
  job is already in a worse state); a later successful run resolves it.
- ``duration_exceeded``: a run longer than the job's ``max_duration_seconds`` or, when that is
  unset, far beyond the job's own recent successful runs (see ``duration_limit``); a later
  successful run within the limit resolves it.
- ``backup_missing``: no run by the end of the expected window plus the grace (see
  ``expected_run``); any later execution dated in or after the missed window resolves it.
- ``auth_failure_burst``: decided by ``AuthFailureMonitor`` in the ingest API; keyed by the
  client address, not by a job.

An execution dated before the newest execution already stored for its job is *late* (a
history upload, a replay): it says nothing about the job's current state and changes no
alert. Within one batch executions are taken in time order, and an alert raised and resolved
by the same batch is dropped with its resolution: both happened before anyone could act.
"""

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from processors.schedules import (
    PERIOD_STARTS,
    ScheduleError,
    load_zone,
    next_fire,
    parse_cron,
    previous_fire,
)
from schemas.events import ExecutionRecord, derived_id

AlertKind = Literal[
    "backup_failed", "backup_warning", "duration_exceeded", "backup_missing", "auth_failure_burst"
]
KINDS: tuple[AlertKind, ...] = (
    "backup_failed",
    "backup_warning",
    "duration_exceeded",
    "backup_missing",
    "auth_failure_burst",
)
SEVERITY: dict[str, str] = {
    "backup_failed": "critical",
    "backup_warning": "warning",
    "duration_exceeded": "warning",
    "backup_missing": "critical",
    "auth_failure_burst": "warning",
}

# Learned duration limit: this many times the median of the recent successful runs...
DURATION_MEDIAN_FACTOR = 3
# ...over at least this many runs (of the last DURATION_HISTORY), and never closer than
# DURATION_MIN_EXCESS seconds to the median, so a 10-second job does not alert at 31 s.
DURATION_MIN_RUNS = 5
DURATION_HISTORY = 10
DURATION_MIN_EXCESS = 300

# A "running" heartbeat younger than this says a run is in progress: not missing.
HEARTBEAT_FRESH = timedelta(hours=1)

# Grace after the deadline when a job sets none: half the period, at most four hours.
MAX_DEFAULT_GRACE = timedelta(hours=4)


@dataclass(frozen=True)
class JobSettings:
    """What the rules need to know about a job."""

    job_id: int
    job_name: str
    schedule_type: str = "manual"
    schedule_cron: str | None = None
    schedule_timezone: str | None = None
    grace_seconds: int | None = None
    max_duration_seconds: int | None = None
    is_active: bool = True
    # Expectations start from here: when the job was created or its schedule last changed.
    schedule_since: datetime | None = None
    last_heartbeat_at: datetime | None = None


@dataclass(frozen=True)
class OpenAlert:
    """An alert that is open (or acknowledged) and not yet resolved."""

    alert_id: str
    kind: str
    triggered_at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RaiseAlert:
    """Open a new alert of ``kind`` for the job (or the source, for auth bursts)."""

    alert_id: str
    kind: str
    job_id: int | None
    message: str
    triggered_at: datetime
    execution_id: str | None = None
    source: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return SEVERITY[self.kind]

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.kind, job_id=self.job_id, source=self.source)


@dataclass(frozen=True)
class ResolveAlert:
    """Resolve the open alert ``alert_id``."""

    alert_id: str
    kind: str
    job_id: int | None
    reason: str
    execution_id: str | None = None
    source: str | None = None


Decision = RaiseAlert | ResolveAlert


@dataclass(frozen=True)
class Expectation:
    """A run the schedule expects: one dated at or after ``window_start``, by ``deadline``."""

    window_start: datetime
    deadline: datetime


def dedupe_key(kind: str, *, job_id: int | None = None, source: str | None = None) -> str:
    """The key that at most one unresolved alert may hold: the job's (or source's) kind."""
    if source is not None:
        return f"source:{source}:{kind}"
    return f"job:{job_id}:{kind}"


def alert_id_for(kind: str, subject: object, trigger: object) -> str:
    """A deterministic alert id: the same trigger decided twice is the same alert."""
    return derived_id("alert", kind, subject, trigger)


# --- executions ----------------------------------------------------------------------------


def duration_limit(job: JobSettings, recent_durations: Sequence[int]) -> tuple[int, str] | None:
    """The longest acceptable run in seconds and where it comes from; None when unknown.

    ``max_duration_seconds`` wins. Without it the limit is learned from the job's own recent
    successful runs (oldest first; the last ``DURATION_HISTORY`` count).
    """
    if job.max_duration_seconds:
        return job.max_duration_seconds, "max_duration_seconds"

    history = list(recent_durations)[-DURATION_HISTORY:]
    if len(history) < DURATION_MIN_RUNS:
        return None

    median = statistics.median(history)
    limit = max(DURATION_MEDIAN_FACTOR * median, median + DURATION_MIN_EXCESS)
    return int(limit), f"{DURATION_MEDIAN_FACTOR}x median of last {len(history)} runs"


def _raise_for_execution(kind: str, job: JobSettings, execution: ExecutionRecord) -> RaiseAlert:
    messages = {
        "backup_failed": f"Backup '{job.job_name}' failed",
        "backup_warning": f"Backup '{job.job_name}' finished with warnings",
    }
    message = messages.get(kind, f"Backup '{job.job_name}': {kind}")
    if execution.error_message:
        message = f"{message}: {execution.error_message[:300]}"

    return RaiseAlert(
        alert_id=alert_id_for(kind, job.job_id, execution.execution_id),
        kind=kind,
        job_id=job.job_id,
        message=message,
        triggered_at=execution.execution_date,
        execution_id=execution.execution_id,
        details={
            "status": execution.status,
            "reported_status": execution.reported_status,
            "execution_date": execution.execution_date.isoformat(),
        },
    )


def _resolve(alert: OpenAlert, job: JobSettings, reason: str, execution_id: str | None) -> Any:
    return ResolveAlert(
        alert_id=alert.alert_id,
        kind=alert.kind,
        job_id=job.job_id,
        reason=reason,
        execution_id=execution_id,
    )


def decide_execution(
    job: JobSettings,
    open_alerts: Mapping[str, OpenAlert],
    recent_durations: Sequence[int],
    execution: ExecutionRecord,
) -> list[Decision]:
    """The decisions one (not late) execution makes, given the job's open alerts by kind."""
    decisions: list[Decision] = []
    status = execution.status

    if status == "failed" and "backup_failed" not in open_alerts:
        decisions.append(_raise_for_execution("backup_failed", job, execution))
    if status == "warning" and not {"backup_failed", "backup_warning"} & open_alerts.keys():
        decisions.append(_raise_for_execution("backup_warning", job, execution))

    if status == "success":
        for kind in ("backup_failed", "backup_warning"):
            alert = open_alerts.get(kind)
            if alert is not None and execution.execution_date >= alert.triggered_at:
                reason = f"backup succeeded at {execution.execution_date.isoformat()}"
                decisions.append(_resolve(alert, job, reason, execution.execution_id))

    missing = open_alerts.get("backup_missing")
    if missing is not None and execution.execution_date >= missing.triggered_at:
        reason = f"a run was reported at {execution.execution_date.isoformat()}"
        decisions.append(_resolve(missing, job, reason, execution.execution_id))

    decisions.extend(_duration_decisions(job, open_alerts, recent_durations, execution))
    return decisions


def _duration_decisions(
    job: JobSettings,
    open_alerts: Mapping[str, OpenAlert],
    recent_durations: Sequence[int],
    execution: ExecutionRecord,
) -> list[Decision]:
    duration = execution.duration_seconds
    if duration is None:
        return []

    limit = duration_limit(job, recent_durations)
    open_alert = open_alerts.get("duration_exceeded")

    if limit is not None and duration > limit[0]:
        if open_alert is not None:
            return []
        seconds, basis = limit
        return [
            RaiseAlert(
                alert_id=alert_id_for("duration_exceeded", job.job_id, execution.execution_id),
                kind="duration_exceeded",
                job_id=job.job_id,
                message=(
                    f"Backup '{job.job_name}' ran {duration} s, longer than its limit of "
                    f"{seconds} s ({basis})"
                ),
                triggered_at=execution.execution_date,
                execution_id=execution.execution_id,
                details={"duration_seconds": duration, "limit_seconds": seconds, "basis": basis},
            )
        ]

    if open_alert is not None and execution.status == "success":
        reason = f"a successful run took {duration} s, within the limit"
        return [_resolve(open_alert, job, reason, execution.execution_id)]
    return []


def evaluate_executions(
    job: JobSettings,
    open_alerts: Mapping[str, OpenAlert],
    recent_durations: Sequence[int],
    executions: Sequence[ExecutionRecord],
    latest_known: datetime | None,
) -> list[Decision]:
    """The decisions a batch of one job's new executions makes, in time order.

    ``latest_known`` is the newest execution date the job had before this batch: anything
    older is late and decides nothing. ``recent_durations`` are the job's stored successful
    durations, oldest first.
    """
    state = dict(open_alerts)
    durations = list(recent_durations)
    decisions: list[Decision] = []

    for execution in sorted(executions, key=lambda e: (e.execution_date, e.execution_id)):
        if latest_known is not None and execution.execution_date < latest_known:
            continue

        for decision in decide_execution(job, state, durations, execution):
            decisions.append(decision)
            if isinstance(decision, RaiseAlert):
                state[decision.kind] = OpenAlert(
                    decision.alert_id, decision.kind, decision.triggered_at, decision.details
                )
            else:
                state.pop(decision.kind, None)

        if execution.status == "success" and execution.duration_seconds is not None:
            durations.append(execution.duration_seconds)

    return drop_raised_and_resolved(decisions)


def drop_raised_and_resolved(decisions: Sequence[Decision]) -> list[Decision]:
    """Remove each alert that the same batch both raised and resolved, with its resolution."""
    raised = {d.alert_id for d in decisions if isinstance(d, RaiseAlert)}
    resolved = {d.alert_id for d in decisions if isinstance(d, ResolveAlert)}
    transient = raised & resolved
    return [decision for decision in decisions if decision.alert_id not in transient]


# --- missing backups -------------------------------------------------------------------------


def default_grace(period: timedelta) -> timedelta:
    """Half the schedule's period, at most ``MAX_DEFAULT_GRACE``."""
    return min(period / 2, MAX_DEFAULT_GRACE)


def expected_run(job: JobSettings, now: datetime) -> Expectation | None:
    """The newest run the job's schedule expects to have been reported by ``now``.

    None for manual or inactive jobs, for an expectation that began before
    ``schedule_since`` (a new job, or a schedule just changed), and for a schedule that never
    fires. Raises ``ScheduleError`` for a schedule that cannot be read.
    """
    if not job.is_active:
        return None

    zone = load_zone(job.schedule_timezone)
    if job.schedule_cron:
        return _cron_expectation(job, now, zone)
    if job.schedule_type not in PERIOD_STARTS:
        return None  # manual: never missing
    return _period_expectation(job, now, zone)


def _grace(job: JobSettings, period: timedelta) -> timedelta:
    if job.grace_seconds is not None:
        return timedelta(seconds=job.grace_seconds)
    return default_grace(period)


def _cron_expectation(job: JobSettings, now: datetime, zone: Any) -> Expectation | None:
    """A cron job: the run fired at ``s`` ends by ``s + grace``; the newest such ``s``."""
    schedule = parse_cron(job.schedule_cron or "")
    latest = previous_fire(schedule, zone, now)
    if latest is None:
        return None
    following = next_fire(schedule, zone, latest)
    period = (following - latest) if following is not None else timedelta(days=1)
    grace = _grace(job, period)

    fire = previous_fire(schedule, zone, now - grace)
    if fire is None or (job.schedule_since is not None and fire < job.schedule_since):
        return None
    return Expectation(window_start=fire, deadline=fire + grace)


def _period_expectation(job: JobSettings, now: datetime, zone: Any) -> Expectation | None:
    """A fixed type: some run in the period ``[a, b)``, checked at ``b + grace``."""
    schedule = parse_cron(PERIOD_STARTS[job.schedule_type])
    current = previous_fire(schedule, zone, now)
    if current is None:
        return None
    following = next_fire(schedule, zone, current)
    grace = _grace(job, (following - current) if following else timedelta(days=1))

    end = previous_fire(schedule, zone, now - grace)
    start = previous_fire(schedule, zone, end - timedelta(seconds=1)) if end else None
    if end is None or start is None:
        return None
    if job.schedule_since is not None and start < job.schedule_since:
        return None
    return Expectation(window_start=start, deadline=end + grace)


def heartbeat_is_fresh(job: JobSettings, now: datetime) -> bool:
    """A run reported as in progress within ``HEARTBEAT_FRESH`` is not missing."""
    beat = job.last_heartbeat_at
    return beat is not None and now - beat <= HEARTBEAT_FRESH


def decide_missing(
    job: JobSettings,
    open_alerts: Mapping[str, OpenAlert],
    last_execution_at: datetime | None,
    now: datetime,
) -> list[Decision]:
    """Raise ``backup_missing`` when the expected run is overdue; resolve a stale one.

    An open missing alert is resolved here too when an execution dated in its window exists
    (normally the execution's own transaction resolves it), or when the job no longer expects
    runs (made manual or inactive).
    """
    try:
        expectation = expected_run(job, now)
    except ScheduleError:
        return []

    open_alert = open_alerts.get("backup_missing")
    if open_alert is not None:
        if last_execution_at is not None and last_execution_at >= open_alert.triggered_at:
            reason = f"a run was reported at {last_execution_at.isoformat()}"
            return [_resolve(open_alert, job, reason, None)]
        if not job.is_active or (job.schedule_type == "manual" and not job.schedule_cron):
            return [_resolve(open_alert, job, "the job no longer has a schedule", None)]
        return []

    if expectation is None or now < expectation.deadline:
        return []
    if last_execution_at is not None and last_execution_at >= expectation.window_start:
        return []
    if heartbeat_is_fresh(job, now):
        return []

    window = expectation.window_start.isoformat()
    last = last_execution_at.isoformat() if last_execution_at else "never"
    return [
        RaiseAlert(
            alert_id=alert_id_for("backup_missing", job.job_id, window),
            kind="backup_missing",
            job_id=job.job_id,
            message=(
                f"Backup '{job.job_name}' has no run since {window} UTC "
                f"(deadline {expectation.deadline.isoformat()} UTC; last run: {last})"
            ),
            triggered_at=expectation.window_start,
            details={
                "window_start": window,
                "deadline": expectation.deadline.isoformat(),
                "last_execution_at": last_execution_at.isoformat() if last_execution_at else None,
                "schedule": job.schedule_cron or job.schedule_type,
                "timezone": job.schedule_timezone or "UTC",
            },
        )
    ]
