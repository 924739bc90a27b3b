"""The embedded deployment: ingest, processing and persistence in one process on SQLite.

A report runs through the same rules as in the distributed pipeline (``processors.rules``)
and the same writer (``consumers.store``), inside one SQLite transaction that is synced to
disk before the API answers 200. One writer at a time, as SQLite wants.
"""

import asyncio
import logging
import threading

from sqlalchemy import Engine

from backuphub.metrics import EVENTS_PROCESSED, ROWS_PERSISTED
from consumers.store import persist_executions
from ingest_api.app import database_reachable
from processors.rules import executions_from_report, failure_alert
from schemas.events import EventEnvelope, ExecutionRecord

logger = logging.getLogger(__name__)


class EmbeddedSink:
    """A ``ReportSink`` that processes and stores each report before answering."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = threading.Lock()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _store(self, event: EventEnvelope) -> list[ExecutionRecord]:
        executions = executions_from_report(event)
        with self._write_lock, self.engine.begin() as connection:
            new_rows = persist_executions(connection, executions)
        ROWS_PERSISTED.inc(new_rows)
        return executions

    async def submit(self, event: EventEnvelope) -> None:
        executions = await asyncio.to_thread(self._store, event)

        for execution in executions:
            EVENTS_PROCESSED.labels(execution.status).inc()
            alert = failure_alert(execution, source="embedded")
            if alert is not None:
                logger.warning(
                    "backup failed",
                    extra={"job_id": alert.job_id, "event_id": alert.event_id},
                )

    async def health(self) -> dict[str, bool]:
        return {"database": await asyncio.to_thread(database_reachable, self.engine)}
