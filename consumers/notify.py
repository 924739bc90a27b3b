"""``backuphub notify``: delivers alert events to people and tools, each exactly once if it can.

Events come from the alerts topic (a consumer group; distributed mode) or, with
``--from-database``, from the ``alert_outbox`` table (the embedded mode, which has no Kafka).
Each event goes to every configured target that wants it (``consumers.notify_targets``).

Guarantees:

- nothing is lost: a Kafka offset is committed (an outbox row marked) only after each of its
  event's deliveries either succeeded or was *parked*;
- a failing delivery is retried with exponential back-off and full jitter, a bounded number
  of times; then it is parked in the ledger with its event, logged, and counted
  (``backuphub_notify_deliveries_total{outcome="parked"}``), for a person to look at;
- nothing is sent twice from one ledger: the ledger (table ``alert_deliveries``, SQLite under
  the state dir unless ``--ledger-url`` names another database) records each (event id,
  target) that was delivered, so a redelivered event, a replay after a crash, or the same
  alert published twice by the outbox is skipped. Instances that should share this guarantee
  must share the ledger (point ``--ledger-url`` at PostgreSQL).
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from backuphub.database import make_engine
from backuphub.kafka_topics import ensure_topics, start_when_reachable
from backuphub.metrics import CONSUMER_LAG, NOTIFY_DELIVERIES, NOTIFY_SECONDS
from consumers.notify_targets import DeliveryFailed, NotifyConfig, Target, send
from schemas.events import EventEnvelope, utc_now
from schemas.tables import alert_outbox
from schemas.topics import Topics

logger = logging.getLogger(__name__)


def group_id(topics: Topics) -> str:
    """The consumer group: one per deployment (topic prefix), so deployments sharing a broker
    each deliver their own alerts."""
    return f"{topics.prefix}notify"


ledger_metadata = MetaData()
alert_deliveries = Table(
    "alert_deliveries",
    ledger_metadata,
    Column("event_id", String(64), primary_key=True),
    Column("target", String(255), primary_key=True),
    Column("status", String(16), nullable=False),  # delivered | parked
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("event", Text, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)


class DeliveryLedger:
    """What was delivered or parked, per (event id, target)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        ledger_metadata.create_all(engine)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> "DeliveryLedger":
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(make_engine(f"sqlite:///{state_dir / 'notify.db'}"))

    def settled(self, event_id: str, target: str) -> str | None:
        """``delivered`` or ``parked`` when this delivery was settled before; else None."""
        with self.engine.connect() as connection:
            return connection.execute(
                select(alert_deliveries.c.status).where(
                    alert_deliveries.c.event_id == event_id, alert_deliveries.c.target == target
                )
            ).scalar()

    def record(
        self, event: EventEnvelope, target: str, status: str, attempts: int, error: str | None
    ) -> None:
        values = {
            "status": status,
            "attempts": attempts,
            "last_error": error,
            "event": event.to_bytes().decode(),
            "updated_at": utc_now(),
        }
        with self.engine.begin() as connection:
            try:
                with connection.begin_nested():
                    connection.execute(
                        insert(alert_deliveries).values(
                            event_id=event.event_id, target=target, **values
                        )
                    )
            except IntegrityError:
                connection.execute(
                    update(alert_deliveries)
                    .where(alert_deliveries.c.event_id == event.event_id)
                    .where(alert_deliveries.c.target == target)
                    .values(**values)
                )

    def parked(self) -> list[tuple[str, str, str | None]]:
        """Parked deliveries: (event id, target, last error)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    alert_deliveries.c.event_id,
                    alert_deliveries.c.target,
                    alert_deliveries.c.last_error,
                ).where(alert_deliveries.c.status == "parked")
            ).all()
        return [(row[0], row[1], row[2]) for row in rows]


@dataclass(frozen=True)
class Outcome:
    target: str
    status: str  # delivered | parked | duplicate
    attempts: int


class Notifier:
    """Delivers one event to every target that wants it: retried, parked, never twice."""

    def __init__(
        self,
        config: NotifyConfig,
        ledger: DeliveryLedger,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.rng = rng or random.Random()
        self.client = httpx.AsyncClient(timeout=config.timeout_seconds, follow_redirects=False)

    async def close(self) -> None:
        await self.client.aclose()

    async def deliver(self, event: EventEnvelope) -> list[Outcome]:
        targets = [target for target in self.config.targets if target.wants(event)]
        return list(await asyncio.gather(*(self._deliver(target, event) for target in targets)))

    async def _deliver(self, target: Target, event: EventEnvelope) -> Outcome:
        context = {"event_id": event.event_id, "job_id": event.job_id, "target": target.name}
        settled = await asyncio.to_thread(self.ledger.settled, event.event_id, target.name)
        if settled is not None:
            NOTIFY_DELIVERIES.labels(target.type, "duplicate").inc()
            logger.info("alert already settled, not sent again", extra={**context, "as": settled})
            return Outcome(target.name, "duplicate", 0)

        policy = self.config.retry
        error = ""
        attempt = 0
        for attempt in range(1, policy.max_attempts + 1):
            try:
                await send(self.client, target, event, self.config.timeout_seconds)
            except DeliveryFailed as failure:
                error = str(failure)
                if failure.permanent or attempt == policy.max_attempts:
                    break
                NOTIFY_DELIVERIES.labels(target.type, "retried").inc()
                delay = policy.delay(attempt, self.rng.random())
                logger.warning(
                    "alert delivery failed, retrying",
                    extra={**context, "attempt": attempt, "error": error, "delay": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                continue

            await asyncio.to_thread(
                self.ledger.record, event, target.name, "delivered", attempt, None
            )
            NOTIFY_DELIVERIES.labels(target.type, "delivered").inc()
            NOTIFY_SECONDS.observe(max(0.0, (utc_now() - event.received_at).total_seconds()))
            logger.info("alert delivered", extra={**context, "attempts": attempt})
            return Outcome(target.name, "delivered", attempt)

        await asyncio.to_thread(self.ledger.record, event, target.name, "parked", attempt, error)
        NOTIFY_DELIVERIES.labels(target.type, "parked").inc()
        logger.error(
            "alert delivery parked", extra={**context, "attempts": attempt, "error": error}
        )
        return Outcome(target.name, "parked", attempt)


def decode(raw: bytes) -> EventEnvelope | None:
    """The alert event in ``raw``; None (logged) for anything else."""
    try:
        event = EventEnvelope.from_bytes(raw)
    except (ValidationError, ValueError) as error:
        logger.error("undecodable alert event skipped", extra={"error": str(error)[:300]})
        return None
    if event.event_type not in ("alert.raised", "alert.resolved"):
        logger.error("not an alert event, skipped", extra={"event_id": event.event_id})
        return None
    return event


class KafkaNotifyService:
    """Consumes the alerts topic; commits only after each event was delivered or parked."""

    def __init__(self, notifier: Notifier, bootstrap_servers: str, topics: Topics) -> None:
        self.notifier = notifier
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()

    async def _connect(self) -> None:
        await ensure_topics(self.bootstrap_servers, self.topics, timeout=3600)

        def consumer() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                self.topics.alerts,
                bootstrap_servers=self.bootstrap_servers,
                group_id=group_id(self.topics),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id="backuphub-notify",
            )

        self.consumer = await start_when_reachable(
            consumer, name="notify consumer", stopping=self._stopping
        )

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        for record in records:
            event = decode(record.value)
            if event is not None:
                await self.notifier.deliver(event)

    async def run(self) -> None:
        await self._connect()
        consumer = self.consumer
        if consumer is None:
            return
        logger.info("notify consuming", extra={"topic": self.topics.alerts})

        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=100)
            for partition, records in batches.items():
                await self.handle(records)
                try:
                    await consumer.commit({partition: records[-1].offset + 1})
                except KafkaError as error:
                    # Delivered and recorded: a replay finds them in the ledger.
                    logger.warning("offset commit failed", extra={"error": str(error)})
                end = consumer.highwater(partition) or 0
                lag = max(0, end - (records[-1].offset + 1))
                CONSUMER_LAG.labels(partition.topic, str(partition.partition)).set(lag)

    async def stop(self) -> None:
        self._stopping.set()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()


class OutboxNotifyService:
    """Embedded mode: delivers the outbox's unpublished events, then marks them published.

    In this mode nothing else publishes the outbox, so "published" means "delivered or
    parked by notify". One notify process per database (SQLite is one machine anyway).
    """

    def __init__(self, notifier: Notifier, engine: Engine, *, idle_seconds: float = 2.0) -> None:
        self.notifier = notifier
        self.engine = engine
        self.idle_seconds = idle_seconds
        self._stopping = asyncio.Event()

    def _pending(self) -> list[tuple[int, str]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(alert_outbox.c.id, alert_outbox.c.payload)
                .where(alert_outbox.c.published_at.is_(None))
                .order_by(alert_outbox.c.id)
                .limit(100)
            ).all()
        return [(row[0], row[1]) for row in rows]

    def _mark(self, row_id: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(alert_outbox)
                .where(alert_outbox.c.id == row_id)
                .values(published_at=utc_now())
            )

    async def pass_once(self) -> int:
        """Deliver what is waiting; how many events were settled."""
        rows = await asyncio.to_thread(self._pending)
        for row_id, payload in rows:
            event = decode(payload.encode())
            if event is not None:
                await self.notifier.deliver(event)
            await asyncio.to_thread(self._mark, row_id)
        return len(rows)

    async def run(self) -> None:
        logger.info("notify delivering from the database outbox")
        while not self._stopping.is_set():
            try:
                settled = await self.pass_once()
            except SQLAlchemyError as error:
                logger.warning("outbox read failed", extra={"error": type(error).__name__})
                settled = 0
            if not settled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.idle_seconds)

    async def stop(self) -> None:
        self._stopping.set()


async def serve_notify(
    service: KafkaNotifyService | OutboxNotifyService, notifier: Notifier
) -> None:
    """Run until cancelled or the process is told to stop (SIGTERM/SIGINT)."""
    import signal

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(service.stop()))
    started = time.monotonic()
    try:
        await service.run()
    finally:
        await service.stop()
        await notifier.close()
        logger.info("notify stopped", extra={"ran_seconds": round(time.monotonic() - started)})
