"""The embedded deployment: ingest, processing and persistence in one process on SQLite.

A report runs through the same rules as in the distributed pipeline (``processors.rules``)
and the same writer (``consumers.store``), inside one SQLite transaction that is synced to
disk before the API answers 200. One writer at a time, as SQLite wants.

Alerts are decided and stored as in the distributed mode (``alerts`` table, ``alert_outbox``)
but nothing publishes the outbox to Kafka: ``GET /api/v1/alerts`` shows them, and
``backuphub notify --from-database`` delivers them from the outbox.
"""

import asyncio
import logging
import threading

from sqlalchemy import Engine

from backuphub.metrics import EVENTS_PROCESSED, ROWS_PERSISTED
from consumers.store import persist_executions
from ingest_api.app import database_reachable
from processors.rules import executions_from_report
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

    @property
    def write_lock(self) -> threading.Lock:
        """Held by every writer of this process (reports, the missing-backup check)."""
        return self._write_lock

    def _store(self, event: EventEnvelope) -> list[ExecutionRecord]:
        executions = executions_from_report(event)
        with self._write_lock, self.engine.begin() as connection:
            # The alerts these runs raise or resolve are stored in this same transaction,
            # with their events in the outbox (there is no Kafka in this mode).
            new_rows = persist_executions(connection, executions, source="embedded")
        ROWS_PERSISTED.inc(new_rows)
        return executions

    async def submit(self, event: EventEnvelope) -> None:
        executions = await asyncio.to_thread(self._store, event)

        for execution in executions:
            EVENTS_PROCESSED.labels(execution.status).inc()

    async def health(self) -> dict[str, bool]:
        return {"database": await asyncio.to_thread(database_reachable, self.engine)}
