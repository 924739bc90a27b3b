"""What happens to a validated report: the job check, the durable write, the answer.

Plain coroutines with no web framework in them; ``ingest_api.gateway`` calls them for the
agents' POSTs. Each returns the envelope of a 200 or raises ``ApiError`` with the answer the
agent gets instead.
"""

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from backuphub import http
from backuphub.http import ApiError, envelope, job_not_found
from backuphub.metrics import REPORTS_ACCEPTED, REPORTS_REJECTED
from ingest_api.publish import ReportSink, SinkUnavailable
from ingest_api.registry import JobRegistry
from ingest_api.reports import ReportKind, report_event
from processors.rules import ReportRejected, decode_raw_entries, is_heartbeat
from schemas.api import LogAnalysisRequest, StatusRequest
from schemas.events import utc_now

logger = logging.getLogger(__name__)


def database_failure(error: SQLAlchemyError, action: str) -> ApiError:
    """The 500 for a database error during ``action``; whatever it changed was rolled back."""
    message = "Database error: the change was rolled back, retry later"
    return http.database_failure(error, "ingest", action, message)


class ReportIntake:
    """Takes status and log-analysis reports for known jobs and hands them to the sink."""

    def __init__(self, registry: JobRegistry, sink: ReportSink, retry_after: int) -> None:
        self.registry = registry
        self.sink = sink
        self.retry_after = retry_after

    async def status(self, body: StatusRequest) -> dict[str, Any]:
        if is_heartbeat(body.status):
            return await self.heartbeat(body)

        report_id = await self.accept("status", body)
        message = f"Status updated successfully for job {body.job_id}"
        return envelope(True, message, {"report_id": report_id})

    async def log_analysis(self, body: LogAnalysisRequest) -> dict[str, Any]:
        if body.raw_entries is not None:
            # Parsed here as well as in the processor, so a history the parser cannot read
            # is refused to the agent (400) instead of being acknowledged and set aside.
            try:
                await asyncio.to_thread(decode_raw_entries, body.raw_entries.model_dump())
            except ReportRejected as error:
                REPORTS_REJECTED.labels("validation").inc()
                raise ApiError(
                    400,
                    f"Invalid request data: {error}",
                    errors=[{"field": "raw_entries", "message": str(error)}],
                ) from error

        report_id = await self.accept("log_analysis", body)
        return envelope(True, "Log analysis processed successfully", {"report_id": report_id})

    async def heartbeat(self, body: StatusRequest) -> dict[str, Any]:
        """A run in progress: noted on the job (see ``record_heartbeat``), not an execution."""
        try:
            found = await self.registry.heartbeat(body.job_id, utc_now())
        except SQLAlchemyError as error:
            raise database_failure(error, "heartbeat") from error
        if not found:
            REPORTS_REJECTED.labels("unknown_job").inc()
            raise job_not_found(body.job_id)

        REPORTS_ACCEPTED.labels("heartbeat").inc()
        logger.debug("heartbeat", extra={"job_id": body.job_id})
        return envelope(True, f"Heartbeat recorded for job {body.job_id}", {"running": True})

    async def accept(self, kind: ReportKind, body: StatusRequest | LogAnalysisRequest) -> str:
        """Make the report durable; its report id once it is."""
        try:
            known = await self.registry.exists(body.job_id)
        except SQLAlchemyError as error:
            raise database_failure(error, "job lookup") from error
        if not known:
            REPORTS_REJECTED.labels("unknown_job").inc()
            raise job_not_found(body.job_id)

        event = report_event(kind, body, utc_now())
        try:
            await self.sink.submit(event)
        except SQLAlchemyError as error:
            raise database_failure(error, "store report") from error
        except SinkUnavailable as error:
            REPORTS_REJECTED.labels("unavailable").inc()
            logger.warning(
                "report not accepted",
                extra={"job_id": body.job_id, "event_id": event.event_id, "error": str(error)},
            )
            raise ApiError(
                503,
                "The report could not be stored right now; send it again later",
                headers={"Retry-After": str(self.retry_after)},
            ) from error

        REPORTS_ACCEPTED.labels(kind).inc()
        return str(event.payload["report_id"])
