"""The stream processor: reports in, normalised executions out, offsets committed after both.

A plain consume-process-produce loop on aiokafka around the rules in ``processors.rules``:

1. take a batch of reports (up to ``MAX_BATCH``, whatever one poll returns);
2. run the rules on each; a report they refuse goes to the dead-letter topic as it came;
3. publish every execution, keyed by job id so a job's runs stay in order on one partition;
4. wait until the broker has acknowledged all of them (``acks=all``, idempotent producer);
5. only then commit the batch's input offsets.

A crash anywhere before step 5 replays the batch. The executions' ids are derived from the
report, so the replay publishes the same ids and the persister writes each run once. When a
publish fails (the broker gone longer than the producer's own retries), the batch is not
committed: the same batch is processed and published again, with back-off, until the broker
takes it (or the processor stops, leaving the batch to whoever resumes from the offsets).

This is not a Faust app. Under the benchmark's load Faust's per-event machinery (its consumer
thread, conductor, stream and attached sends) cost about nine times the CPU of the rules
themselves, and its assignor could leave a worker without partitions after a broker restart
until the next rebalance (docs/DESIGN.md, "Where the CPU goes"). The loop needs neither
tables nor windows: each report is processed on its own.
"""

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)
from pydantic import ValidationError

from backuphub.kafka_topics import (
    batch_consumer,
    durable_producer,
    ensure_topics,
    record_lag,
    set_aside,
    start_when_reachable,
)
from backuphub.metrics import EVENTS_PROCESSED
from processors.rules import ReportRejected, process_report
from schemas.events import EventEnvelope
from schemas.topics import DEFAULT_PREFIX, Topics

logger = logging.getLogger(__name__)

SOURCE = "processors"
MAX_BATCH = 1000


def processor_group(topics: Topics) -> str:
    """The processor's consumer group.

    Deployments that share a broker under different topic prefixes must not share a group:
    each would take part in the other's rebalances and could be handed partitions of topics it
    does not read. The default prefix keeps the id earlier releases used, so an existing
    deployment resumes from its committed offsets.
    """
    if topics.prefix == DEFAULT_PREFIX:
        return "backuphub-processor"
    return f"{topics.prefix}processor"


class PublishFailed(RuntimeError):
    """An output of the batch was not acknowledged by the broker; the batch is redone."""


class ReportProcessor:
    """Consumes the reports topic and publishes each report's executions."""

    def __init__(self, bootstrap_servers: str, topics: Topics) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        # When the current run of failed publishes began; None while they succeed.
        self.failing_since: float | None = None

    async def _connect(self) -> None:
        await ensure_topics(self.bootstrap_servers, self.topics, timeout=3600)

        def producer() -> AIOKafkaProducer:
            # A batch's executions leave together: a few ms of linger fill produce requests
            # instead of sending one per execution.
            return durable_producer(self.bootstrap_servers, "backuphub-processor", linger_ms=5)

        def consumer() -> AIOKafkaConsumer:
            return batch_consumer(
                self.bootstrap_servers,
                self.topics.reports,
                processor_group(self.topics),
                "backuphub-processor",
            )

        self.producer = await start_when_reachable(
            producer, name="processor producer", stopping=self._stopping
        )
        self.consumer = await start_when_reachable(
            consumer, name="processor consumer", stopping=self._stopping
        )

    def assigned_partitions(self) -> int:
        """How many partitions of the reports topic this processor holds right now."""
        if self.consumer is None:
            return 0
        return sum(1 for tp in self.consumer.assignment() if tp.topic == self.topics.reports)

    def publishing_stalled(self, after_seconds: float = 30.0) -> bool:
        """Whether publishes have been failing for longer than ``after_seconds``."""
        since = self.failing_since
        return since is not None and time.monotonic() - since > after_seconds

    async def _publish(self, records: list[ConsumerRecord]) -> None:
        """Publish the outputs of ``records`` and wait for the broker to acknowledge them."""
        assert self.producer is not None
        producer = self.producer
        deliveries: list[asyncio.Future[Any]] = []
        statuses: list[str] = []

        for record in records:
            try:
                report = EventEnvelope.from_bytes(record.value)
                events = process_report(report, SOURCE)
            except (ValidationError, ReportRejected, ValueError) as error:
                deliveries.append(await self._set_aside(record, str(error)))
                continue
            except Exception as error:
                # A rule that breaks on one report must not stop every report behind it.
                logger.exception("rules failed", extra={"offset": record.offset})
                deliveries.append(await self._set_aside(record, f"rules failed: {error!r}"))
                continue

            try:
                for event in events:
                    value = event.to_bytes()
                    key = str(event.job_id).encode()
                    deliveries.append(await producer.send(self.topics.executions, value, key=key))
                    statuses.append(event.payload["status"])
            except (MessageSizeTooLargeError, RecordTooLargeError) as error:
                # Retrying can never make it fit: the report is kept for a person instead.
                deliveries.append(await self._set_aside(record, f"execution too large: {error}"))

        results = await asyncio.gather(*deliveries, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise PublishFailed(f"{len(failures)} of {len(results)} not acknowledged") from (
                failures[0]
            )

        for status in statuses:
            EVENTS_PROCESSED.labels(status).inc()

    async def _set_aside(self, record: ConsumerRecord, reason: str) -> "asyncio.Future[Any]":
        """Send a report the rules cannot turn into executions to the dead-letter topic, as it
        came; when even that is too large, its place (topic, partition, offset) alone."""
        assert self.producer is not None
        return await set_aside(
            self.producer, self.topics.dead_letters, record, reason, stage="process"
        )

    async def _handle(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        records = [record for partition in batches.values() for record in partition]
        delay = 0.5
        while True:
            try:
                await self._publish(records)
            except (PublishFailed, KafkaError) as error:
                if self._stopping.is_set():
                    return  # not committed: the batch is replayed after the restart
                self.failing_since = self.failing_since or time.monotonic()
                logger.warning(
                    "publishing failed, the batch is processed again",
                    extra={"error": repr(error)[:300], "reports": len(records), "delay": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.failing_since = None
            break

        try:
            await consumer.commit(
                {partition: taken[-1].offset + 1 for partition, taken in batches.items()}
            )
        except (CommitFailedError, KafkaError) as error:
            # The outputs are published; whoever takes these partitions replays the batch and
            # publishes the same ids again, which downstream already ignores.
            logger.warning("offset commit failed", extra={"error": str(error)})

        record_lag(consumer, batches)

    async def run(self) -> None:
        try:
            await self._connect()
            if self.consumer is None:
                return
            consumer = self.consumer
            logger.info("processor consuming", extra={"topic": self.topics.reports})

            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=MAX_BATCH)
                if batches:
                    await self._handle(consumer, batches)
        finally:
            self._finished.set()

    async def stop(self, grace_seconds: float = 15.0) -> None:
        """Let the batch in hand finish (bounded), then close the producer, then the consumer
        (which leaves the group, so its partitions move at once)."""
        self._stopping.set()
        if self.consumer is not None:  # connected, so run() is in its loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout=grace_seconds)
        for client in (self.producer, self.consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
