"""Where accepted reports go: a durable write that either finishes in time or fails fast.

``ReportSink`` is what the HTTP layer needs. ``KafkaReportSink`` writes to Kafka with an
idempotent producer and ``acks=all``; the embedded pipeline (``backuphub.embedded``) writes to
SQLite. Either way ``submit`` returns only once the report is durable, and raises
``SinkUnavailable`` (answered 503 with Retry-After) rather than hang.
"""

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from backuphub.kafka_topics import durable_producer, ensure_topics, start_when_reachable
from backuphub.metrics import PUBLISH_SECONDS
from schemas.events import EventEnvelope
from schemas.topics import Topics

logger = logging.getLogger(__name__)


class SinkUnavailable(RuntimeError):
    """The report could not be made durable in time; the agent should retry later."""


class ReportSink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, event: EventEnvelope) -> None: ...

    async def health(self) -> dict[str, bool]: ...


class KafkaReportSink:
    """Publishes reports to the reports topic, keyed by job id so a job's reports stay ordered.

    The producer starts in the background and keeps retrying while the broker is away, so the
    API can start (and answer 503) before Kafka is up.
    """

    def __init__(self, bootstrap_servers: str, topics: Topics, timeout_seconds: float) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.timeout_seconds = timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._starter: asyncio.Task[None] | None = None

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The connected producer, None until Kafka answered (auth-burst alerts use it too)."""
        return self._producer

    def _new_producer(self) -> AIOKafkaProducer:
        # Reports that arrive within 2 ms share one produce request. Longer (5 ms was measured)
        # saves CPU at a steady 1,000 reports/s but lowers the rate under full load: each
        # partition has one request in flight, and every request would wait longer.
        return durable_producer(
            self.bootstrap_servers,
            "backuphub-ingest",
            linger_ms=2,
            request_timeout_ms=int(self.timeout_seconds * 1000) + 2000,
            retry_backoff_ms=100,
        )

    async def _start_until_ready(self) -> None:
        await ensure_topics(self.bootstrap_servers, self.topics)
        self._producer = await start_when_reachable(self._new_producer, name="ingest producer")
        logger.info("kafka producer started", extra={"servers": self.bootstrap_servers})

    async def start(self) -> None:
        self._starter = asyncio.create_task(self._start_until_ready())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._starter), timeout=self.timeout_seconds)

    async def stop(self) -> None:
        if self._starter is not None and not self._starter.done():
            self._starter.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def submit(self, event: EventEnvelope) -> None:
        producer = self._producer
        if producer is None:
            raise SinkUnavailable("kafka producer not connected")

        started = time.perf_counter()
        try:
            # A send that times out here may still reach the broker later; the report id makes
            # the agent's retry of it harmless.
            # asyncio.timeout, not wait_for: no extra task per report on the hot path.
            async with asyncio.timeout(self.timeout_seconds):
                await producer.send_and_wait(
                    self.topics.reports, event.to_bytes(), key=str(event.job_id).encode()
                )
        except (TimeoutError, KafkaError) as error:
            raise SinkUnavailable(f"kafka write not acknowledged: {error!r}") from error

        PUBLISH_SECONDS.observe(time.perf_counter() - started)

    async def health(self) -> dict[str, bool]:
        producer = self._producer
        if producer is None:
            return {"kafka": False}
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=2)
        except (TimeoutError, KafkaError, OSError):
            return {"kafka": False}
        return {"kafka": True}
