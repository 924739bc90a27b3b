"""The processing rules, as plain functions: status, duration, execution date, copies.

Both runtimes call these: the stream processor of the distributed deployment and the in-process
pipeline of the embedded one. Nothing here does I/O.
"""

import base64
import binascii
import logging
from datetime import UTC, datetime
from typing import Any

from processors.aomei.brlog import BrlogEntry, parse_brlog, parse_brlog_text
from schemas.api import MAX_CLOCK_AHEAD
from schemas.events import EventEnvelope, ExecutionRecord, derived_id

logger = logging.getLogger(__name__)

KNOWN_STATUSES = frozenset({"success", "failed", "warning"})
# Status of a run still in progress: a heartbeat, never an execution.
HEARTBEAT_STATUSES = frozenset({"running", "in_progress", "in progress"})

# Reported and computed durations may differ by clock rounding; beyond this they disagree.
DURATION_TOLERANCE_SECONDS = 60
DURATION_TOLERANCE_RATIO = 0.05


class ReportRejected(ValueError):
    """A report whose content cannot become an execution (kept aside, never dropped)."""


def status_key(reported: str | None) -> str:
    """A reported status as it is compared: trimmed, without regard to case."""
    return (reported or "").strip().lower()


def is_heartbeat(reported: str | None) -> bool:
    """Whether the status says a run is still in progress."""
    return status_key(reported) in HEARTBEAT_STATUSES


def normalise_status(reported: str | None) -> str:
    """Map a reported status onto success, failed or warning.

    ``unknown``, anything unrecognised and a missing status all become ``warning``: a run whose
    outcome is unclear must be looked at, but is not proven failed.
    """
    status = status_key(reported)
    return status if status in KNOWN_STATUSES else "warning"


def resolve_duration(
    start: datetime | None, end: datetime | None, reported: int | None
) -> tuple[int | None, list[str]]:
    """Return the run's duration in seconds and the flags raised while deciding it.

    A reported duration wins; it is computed from start and end only when missing. When both
    exist and disagree beyond rounding, the report is flagged so a person can look.
    """
    flags: list[str] = []
    computed: int | None = None

    if start is not None and end is not None:
        if end < start:
            flags.append("end_before_start")
        else:
            computed = int((end - start).total_seconds())

    if reported is None:
        return computed, flags

    if computed is not None:
        allowed = max(DURATION_TOLERANCE_SECONDS, computed * DURATION_TOLERANCE_RATIO)
        if abs(computed - reported) > allowed:
            flags.append("duration_mismatch")

    return reported, flags


def execution_date(end: datetime | None, received_at: datetime) -> datetime:
    """When the run counts as having happened: its end, else when its report arrived."""
    return end if end is not None else received_at


def media_type_for(storage_path: str | None, reported: str | None) -> str | None:
    """The copy's media: what the agent said, else what its path shows (a UNC path is a
    network share, any other a disk); None when the report says nothing of the copy, so the
    known media is kept."""
    if reported:
        return reported
    if not storage_path:
        return None
    if storage_path.startswith(("\\\\", "//")):
        return "network"
    return "disk"


def _from_fields(
    envelope: EventEnvelope, fields: dict[str, Any], copy: dict[str, Any]
) -> ExecutionRecord:
    """One execution from the contract's flat report fields (status or parsed_data)."""
    start = _time(fields.get("start_time"))
    end = _time(fields.get("end_time"))
    duration, flags = resolve_duration(start, end, fields.get("duration"))
    status = normalise_status(fields.get("status"))

    if fields.get("status") is not None and status_key(fields["status"]) not in KNOWN_STATUSES:
        flags.append("status_unrecognised")

    report_id = envelope.payload["report_id"]
    return ExecutionRecord(
        execution_id=derived_id("execution", envelope.job_id, report_id),
        report_id=report_id,
        job_id=envelope.job_id,
        status=status,  # type: ignore[arg-type]
        reported_status=fields.get("status"),
        execution_date=execution_date(end, envelope.received_at),
        start_time=start,
        end_time=end,
        duration_seconds=duration,
        backup_size_bytes=fields.get("backup_size"),
        error_message=fields.get("error_message") or None,
        details=fields.get("details"),
        task_name=fields.get("task_name"),
        copy_type=copy.get("copy_type") or "primary",
        media_type=media_type_for(copy.get("storage_path"), copy.get("media_type")),
        storage_path=copy.get("storage_path"),
        received_at=envelope.received_at,
        flags=flags,
    )


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def decode_raw_entries(raw: dict[str, Any]) -> list[BrlogEntry]:
    """Parse the run-history entries an agent sent, with the same parser the CLI uses.

    Raises ``ReportRejected`` when the bytes are not base64 or hold no readable entry.
    """
    if raw.get("format", "xml") == "base64":
        try:
            data = base64.b64decode(raw.get("data") or "", validate=True)
        except (binascii.Error, ValueError) as error:
            raise ReportRejected(f"raw_entries.data is not valid base64: {error}") from error
        result = parse_brlog(data)
    else:
        result = parse_brlog_text(raw.get("xml") or "")

    if not result.entries and result.problems:
        raise ReportRejected(f"raw_entries hold no readable entry: {result.problems[0].reason}")

    # The same bound the API puts on reported times: a run dated ahead is a wrong clock.
    latest_allowed = datetime.now(UTC) + MAX_CLOCK_AHEAD
    ahead = [entry for entry in result.entries if entry.epoch > latest_allowed.timestamp()]
    if ahead:
        raise ReportRejected(
            f"raw_entries hold an entry dated {ahead[0].time}, more than a day in the future "
            "(check the machine's clock)"
        )

    wanted_task = (raw.get("task_id") or "").strip("{}").lower()
    if not wanted_task:
        return list(result.entries)
    return [entry for entry in result.entries if entry.task_id == wanted_task]


def _from_history_entry(envelope: EventEnvelope, entry: BrlogEntry) -> ExecutionRecord:
    """One execution from one run-history entry.

    The id comes from the job, the task and the entry's time, so an entry delivered twice (a
    replay, or an agent that lost its state) is still one execution.
    """
    moment = datetime.fromisoformat(entry.time.removesuffix("Z"))
    error = None
    if entry.status == "failed":
        error = entry.detail or entry.result or f"AOMEI result code {entry.result_code}"

    return ExecutionRecord(
        execution_id=derived_id("brlog", envelope.job_id, entry.task_id, entry.time),
        report_id=envelope.payload["report_id"],
        job_id=envelope.job_id,
        status=entry.status,  # type: ignore[arg-type]
        reported_status=entry.result,
        execution_date=moment,
        details=entry.detail,
        error_message=error,
        task_name=entry.task_name,
        received_at=envelope.received_at,
        source_system="aomei_brlog",
    )


def executions_from_report(envelope: EventEnvelope) -> list[ExecutionRecord]:
    """Turn one accepted report into the executions it describes.

    A status report and a ``parsed_data`` log analysis each describe one run; raw history
    entries describe one run per entry.
    """
    body = envelope.payload["body"]

    if envelope.event_type == "report.status":
        if is_heartbeat(body.get("status")):
            return []  # a run in progress (the ingest API keeps these off the topic)
        return [_from_fields(envelope, body, body)]

    if envelope.event_type != "report.log_analysis":
        raise ReportRejected(f"not a report: {envelope.event_type}")

    executions = []
    if body.get("parsed_data"):
        executions.append(_from_fields(envelope, body["parsed_data"], {}))
    if body.get("raw_entries"):
        entries = decode_raw_entries(body["raw_entries"])
        executions.extend(_from_history_entry(envelope, entry) for entry in entries)
    return executions


def execution_event(execution: ExecutionRecord, source: str) -> EventEnvelope:
    """Wrap an execution in the envelope it travels in on the executions topic."""
    return EventEnvelope(
        event_id=execution.execution_id,
        event_type="execution.recorded",
        job_id=execution.job_id,
        occurred_at=execution.execution_date,
        received_at=execution.received_at,
        source=source,
        payload=execution.model_dump(mode="json"),
    )


def process_report(envelope: EventEnvelope, source: str) -> list[EventEnvelope]:
    """The events one report produces: one per execution.

    No alerts: whether a run opens or resolves an alert depends on the job's open alerts
    and history, which live in the database, so alerts are decided where the execution is
    written (``processors.alerting``, applied by ``consumers.alert_store``).
    """
    return [execution_event(execution, source) for execution in executions_from_report(envelope)]
