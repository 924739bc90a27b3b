"""Turning a validated request into the report event that goes to Kafka."""

import hashlib
from datetime import datetime
from typing import Literal

import orjson

from schemas.api import LogAnalysisRequest, StatusRequest
from schemas.events import EventEnvelope, derived_id

ReportKind = Literal["status", "log_analysis"]


def report_id_for(body: StatusRequest | LogAnalysisRequest, received_at: datetime) -> str:
    """The report's idempotency key.

    Agents that send ``report_id`` choose it themselves and keep it across retries. For a
    report without one, the key is a hash of its content: the same body sent again is the same
    report. A body without any time of its own cannot tell two runs apart from one run sent
    twice; for those the day it arrived is part of the key, so a daily job's identical reports
    still count once a day.
    """
    if body.report_id:
        return body.report_id

    content = body.model_dump(mode="json", exclude={"report_id"})
    times = _times(body)
    if not times:
        content["_received_day"] = received_at.date().isoformat()
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"h:{digest[:40]}"


def _times(body: StatusRequest | LogAnalysisRequest) -> list[datetime]:
    if isinstance(body, StatusRequest):
        return [t for t in (body.start_time, body.end_time) if t is not None]
    if body.raw_entries is not None:
        return [datetime.min]  # history entries carry their own times
    parsed = body.parsed_data
    return [t for t in (parsed.start_time, parsed.end_time) if t is not None] if parsed else []


def report_event(
    kind: ReportKind, body: StatusRequest | LogAnalysisRequest, received_at: datetime
) -> EventEnvelope:
    """The envelope of an accepted report; its event id is derived from the report id."""
    report_id = report_id_for(body, received_at)
    return EventEnvelope(
        event_id=derived_id("report", body.job_id, report_id),
        event_type="report.status" if kind == "status" else "report.log_analysis",
        job_id=body.job_id,
        occurred_at=getattr(body, "end_time", None),
        received_at=received_at,
        source="ingest_api",
        payload={"report_id": report_id, "body": body.model_dump(mode="json")},
    )
