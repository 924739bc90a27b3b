"""The outbox publisher: alert events from ``alert_outbox`` to the alerts topic.

Alerts are decided inside database transactions (``consumers.alert_store``), which cannot
also write to Kafka atomically. So each decision writes an outbox row in its transaction, and
this loop sends unpublished rows, oldest first, keyed by job id with ``acks=all``, and marks
them published only once the broker acknowledged them. A crash between the send and the mark
sends the row again: delivery is at-least-once, and the event id stored in the row is the
same every time, so subscribers drop the duplicate (``consumers.notify`` does).

Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several persist instances publish
different rows instead of the same ones twice. Published rows are pruned after a week.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import Connection, Engine, Row, delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from backuphub.kafka_topics import durable_producer, start_when_reachable
from backuphub.metrics import ALERTS_PUBLISHED, DATABASE_ERRORS
from schemas.events import utc_now
from schemas.tables import alert_outbox, one_of
from schemas.topics import Topics

logger = logging.getLogger(__name__)

BATCH = 200
SEND_TIMEOUT_SECONDS = 15.0
KEEP_PUBLISHED = timedelta(days=7)
PRUNE_EVERY_SECONDS = 3600.0


def claim_unpublished(connection: Connection, limit: int = BATCH) -> Sequence[Row]:
    """The oldest unpublished rows, locked for this transaction (others skip them)."""
    query = (
        select(alert_outbox)
        .where(alert_outbox.c.published_at.is_(None))
        .order_by(alert_outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return connection.execute(query).all()


def mark_published(connection: Connection, ids: Sequence[int]) -> None:
    connection.execute(
        update(alert_outbox)
        .where(one_of(connection, alert_outbox.c.id, ids))
        .values(published_at=utc_now())
    )


def prune_published(engine: Engine) -> int:
    """Delete rows published more than ``KEEP_PUBLISHED`` ago; how many went."""
    with engine.begin() as connection:
        result = connection.execute(
            delete(alert_outbox).where(alert_outbox.c.published_at < utc_now() - KEEP_PUBLISHED)
        )
    return int(result.rowcount or 0)


class OutboxPublisher:
    """Publishes queued alert events until stopped; wakes early when told rows are waiting."""

    def __init__(
        self, engine: Engine, bootstrap_servers: str, topics: Topics, *, idle_seconds: float = 1.0
    ) -> None:
        self.engine = engine
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.idle_seconds = idle_seconds
        self.producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Ask for a publish pass now; safe to call from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _start_producer(self, stopping: asyncio.Event) -> None:
        def producer() -> AIOKafkaProducer:
            return durable_producer(self.bootstrap_servers, "backuphub-alert-publisher")

        self.producer = await start_when_reachable(
            producer, name="alert publisher", stopping=stopping
        )

    async def publish_once(self) -> int:
        """Send one batch of unpublished rows and mark them; how many were published."""
        assert self.producer is not None
        producer = self.producer
        connection = await asyncio.to_thread(self.engine.connect)
        try:
            transaction = await asyncio.to_thread(connection.begin)
            rows = await asyncio.to_thread(claim_unpublished, connection)
            if not rows:
                await asyncio.to_thread(transaction.rollback)
                return 0

            sends = []
            for row in rows:
                headers = [
                    ("event_type", row.event_type.encode()),
                    ("event_id", row.event_id.encode()),
                ]
                sends.append(
                    await producer.send(
                        self.topics.alerts,
                        row.payload.encode(),
                        key=str(row.job_id).encode(),
                        headers=headers,
                    )
                )
            await asyncio.wait_for(asyncio.gather(*sends), timeout=SEND_TIMEOUT_SECONDS)

            await asyncio.to_thread(mark_published, connection, [row.id for row in rows])
            await asyncio.to_thread(transaction.commit)
        finally:
            await asyncio.to_thread(connection.close)

        ALERTS_PUBLISHED.inc(len(rows))
        for row in rows:
            logger.info(
                "alert event published",
                extra={"job_id": row.job_id, "event_id": row.event_id, "type": row.event_type},
            )
        return len(rows)

    async def run(self, stopping: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        await self._start_producer(stopping)
        if self.producer is None:
            return

        logger.info("alert publisher started", extra={"topic": self.topics.alerts})
        delay = 0.5
        next_prune = 0.0
        while not stopping.is_set():
            try:
                published = await self.publish_once()
                if self._loop.time() >= next_prune:
                    await asyncio.to_thread(prune_published, self.engine)
                    next_prune = self._loop.time() + PRUNE_EVERY_SECONDS
            except (KafkaError, TimeoutError, SQLAlchemyError, OSError) as error:
                if isinstance(error, SQLAlchemyError):
                    DATABASE_ERRORS.labels("alert_publisher").inc()
                logger.warning(
                    "alert publish failed, retrying",
                    extra={"error": type(error).__name__, "delay": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue

            delay = 0.5
            if published:
                continue  # more may be waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.idle_seconds)

    async def stop(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None
