"""The persister: executions from Kafka into PostgreSQL, offsets committed after the rows.

Each poll's batch is written in one database transaction; only after that commit are the
Kafka offsets committed. A crash in between replays the batch, and the execution id as unique
key makes the replay a no-op. While the database is down the batch is retried with back-off
and no offset moves, so the backlog waits in Kafka.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from backuphub.kafka_topics import (
    batch_consumer,
    durable_producer,
    ensure_topics,
    record_lag,
    set_aside,
    start_when_reachable,
)
from backuphub.metrics import (
    DATABASE_ERRORS,
    PERSIST_SECONDS,
    ROWS_PERSISTED,
)
from consumers.store import persist_executions
from schemas.events import EventEnvelope, ExecutionRecord
from schemas.topics import Topics

logger = logging.getLogger(__name__)


def persister_group(topics: Topics) -> str:
    """The persister's consumer group: one per deployment (topic prefix), so deployments or
    test runs that share a broker never take each other's partitions."""
    return f"{topics.prefix}persister"


MAX_BATCH = 5000
# How long a batch waits for more records after its first one (see Persister._next_batch).
# Each batch costs about 10 ms of CPU whatever its size (a dozen statements, the offset
# commit); 150 ms rather than 50 ms makes batches three times larger under load, for about a
# third less CPU per row, while the end-to-end p99 stays near half a second.
BATCH_LINGER_SECONDS = 0.15


def decode_execution(record: ConsumerRecord) -> ExecutionRecord:
    envelope = EventEnvelope.from_bytes(record.value)
    return ExecutionRecord.model_validate(envelope.payload)


def refused_for_good(error: SQLAlchemyError) -> bool:
    """Whether the database refused the rows themselves (a constraint, a value it cannot hold,
    a value the driver cannot send), so retrying the same batch can never succeed; anything
    else (connection lost, server down, lock timeout) is worth waiting for."""
    if isinstance(error, IntegrityError | DataError):
        return True
    return isinstance(error, StatementError) and not isinstance(error, DBAPIError)


def write_batch(engine: Engine, executions: Sequence[ExecutionRecord]) -> int:
    """Write one batch in one transaction; the number of new rows."""
    with engine.begin() as connection:
        return persist_executions(connection, executions)


class Persister:
    """Consumes the executions topic and writes it to the database."""

    def __init__(self, engine: Engine, bootstrap_servers: str, topics: Topics) -> None:
        self.engine = engine
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.consumer: AIOKafkaConsumer | None = None
        self.dead_letters: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        # Called after a batch added rows (their alerts may wait in the outbox).
        self.on_written: Callable[[], None] | None = None
        # When the current run of failed writes began; None while writes succeed.
        self.failing_since: float | None = None

    async def _connect(self) -> None:
        await ensure_topics(self.bootstrap_servers, self.topics, timeout=3600)

        def consumer() -> AIOKafkaConsumer:
            return batch_consumer(
                self.bootstrap_servers,
                self.topics.executions,
                persister_group(self.topics),
                "backuphub-persister",
            )

        def producer() -> AIOKafkaProducer:
            return durable_producer(self.bootstrap_servers, "backuphub-persister")

        self.dead_letters = await start_when_reachable(
            producer, name="dead-letter producer", stopping=self._stopping
        )
        self.consumer = await start_when_reachable(
            consumer, name="persister consumer", stopping=self._stopping
        )

    async def _set_aside(self, record: ConsumerRecord, reason: str) -> None:
        """Keep an event that cannot be written on the dead-letter topic, never drop it."""
        assert self.dead_letters is not None
        topic = self.topics.dead_letters
        await (await set_aside(self.dead_letters, topic, record, reason, stage="persist"))

    async def _write_with_retry(self, executions: list[ExecutionRecord]) -> int | None:
        """Write until the database takes it. None when the batch holds a row it refuses."""
        delay = 0.5
        while True:
            started = time.perf_counter()
            try:
                written = await asyncio.to_thread(write_batch, self.engine, executions)
            except SQLAlchemyError as error:
                if refused_for_good(error):
                    return None
                DATABASE_ERRORS.labels("persister").inc()
                self.failing_since = self.failing_since or time.monotonic()
                logger.warning(
                    "database write failed, retrying",
                    extra={
                        "error": type(error).__name__,
                        "delay": delay,
                        "rows": len(executions),
                        "first_execution_id": executions[0].execution_id if executions else None,
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.failing_since = None
            PERSIST_SECONDS.observe(time.perf_counter() - started)
            return written

    def writes_stalled(self, after_seconds: float = 30.0) -> bool:
        """Whether writes have been failing for longer than ``after_seconds``."""
        since = self.failing_since
        return since is not None and time.monotonic() - since > after_seconds

    async def _handle(self, records: list[ConsumerRecord]) -> None:
        executions: list[ExecutionRecord] = []
        sources: list[ConsumerRecord] = []
        for record in records:
            try:
                executions.append(decode_execution(record))
                sources.append(record)
            except (ValidationError, ValueError) as error:
                await self._set_aside(record, f"undecodable: {error}")

        written = await self._write_with_retry(executions)
        if written is None:
            # One row broke the batch (e.g. a job that no longer exists): write them one by one
            # so only the bad ones are set aside.
            written = 0
            for execution, record in zip(executions, sources, strict=True):
                single = await self._write_with_retry([execution])
                if single is None:
                    await self._set_aside(record, "refused by the database")
                else:
                    written += single

        ROWS_PERSISTED.inc(written)
        if written and self.on_written is not None:
            self.on_written()

    async def _next_batch(
        self, consumer: AIOKafkaConsumer
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Up to ``MAX_BATCH`` records: what arrives within ``BATCH_LINGER_SECONDS`` of the
        first one. Each batch costs a few round trips whatever its size, so at a steady trickle
        a short wait for company writes far fewer, larger batches."""
        batches = await consumer.getmany(timeout_ms=500, max_records=MAX_BATCH)
        taken = sum(len(records) for records in batches.values())
        if not taken:
            return batches
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BATCH_LINGER_SECONDS
        while taken < MAX_BATCH and (left := deadline - loop.time()) > 0:
            more = await consumer.getmany(
                timeout_ms=max(1, int(left * 1000)), max_records=MAX_BATCH - taken
            )
            for partition, records in more.items():
                batches.setdefault(partition, []).extend(records)
                taken += len(records)
        return batches

    async def run(self) -> None:
        await self._connect()
        if self.consumer is None:
            return
        consumer = self.consumer
        logger.info("persister consuming", extra={"topic": self.topics.executions})

        while not self._stopping.is_set():
            batches = await self._next_batch(consumer)
            records = [record for partition in batches.values() for record in partition]
            if not records:
                continue

            await self._handle(records)

            try:
                await consumer.commit()
            except KafkaError as error:
                # The rows are committed; the batch will be replayed and found already there.
                logger.warning("offset commit failed", extra={"error": str(error)})

            record_lag(consumer, batches)

    async def stop(self) -> None:
        self._stopping.set()
        for client in (self.consumer, self.dead_letters):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
