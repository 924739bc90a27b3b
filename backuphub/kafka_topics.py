"""The Kafka plumbing the services share: the topics, and producers and consumers set up alike.

Kafka would auto-create a topic on first use, but with the broker's default partition count
and only after the first write; a consumer started earlier would skip it. Every service
therefore declares the topics it touches at start.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)

from backuphub.metrics import CONSUMER_LAG, EVENTS_FAILED
from schemas.topics import Topics

logger = logging.getLogger(__name__)

# Partitions bound the parallelism of each consumer group; reports are keyed by job id.
PARTITIONS = 6

# The largest event: a raw history upload at the API's body limit, with its envelope. Kafka's
# own default (1 MB) would make such a report a 503 on every retry.
MAX_EVENT_BYTES = 10 * 1024 * 1024
TOPIC_CONFIG = {"max.message.bytes": str(MAX_EVENT_BYTES)}


# How the consumers fetch: the broker holds a fetch until it has this many bytes or this many
# milliseconds have passed. Under a trickle that turns hundreds of tiny fetches (and batches,
# and offset commits) a second into a few dozen larger ones, at the cost of up to 20 ms of
# end-to-end latency; under load the bytes are there at once and nothing waits.
FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 20


def durable_producer(
    bootstrap_servers: str, client_id: str, *, linger_ms: int = 0, **options: Any
) -> AIOKafkaProducer:
    """A producer whose acknowledged writes are on every in-sync replica (``acks=all``) and
    never doubled by its own retries (idempotent), for events up to ``MAX_EVENT_BYTES``."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=MAX_EVENT_BYTES,
        client_id=client_id,
        **options,
    )


def batch_consumer(
    bootstrap_servers: str, topic: str, group_id: str, client_id: str
) -> AIOKafkaConsumer:
    """A group member that commits its offsets itself, after its batch is done, and reads a
    new group's topic from the start."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        client_id=client_id,
    )


def record_lag(
    consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, Sequence[ConsumerRecord]]
) -> None:
    """Set the lag gauge of each partition a batch came from: how far its last record is from
    the partition's end. Partitions a rebalance moved away during the batch are skipped (the
    consumer no longer knows their end)."""
    held = consumer.assignment()
    for partition, taken in batches.items():
        if partition not in held or not taken:
            continue
        end = consumer.highwater(partition) or 0
        lag = max(0, end - (taken[-1].offset + 1))
        CONSUMER_LAG.labels(partition.topic, str(partition.partition)).set(lag)


async def set_aside(
    producer: AIOKafkaProducer, topic: str, record: ConsumerRecord, reason: str, stage: str
) -> "asyncio.Future[Any]":
    """Send an event that ``stage`` cannot handle to the dead-letter ``topic`` as it came,
    never drop it; when even that is too large, its place (topic, partition, offset) alone.
    Counted and logged; returns the delivery, for the caller to await with its other sends."""
    EVENTS_FAILED.labels(stage).inc()
    logger.error(
        "event set aside",
        extra={
            "stage": stage,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason[:300],
        },
    )
    headers = [
        ("reason", reason[:500].encode()),
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    try:
        return await producer.send(topic, record.value, key=record.key, headers=headers)
    except (MessageSizeTooLargeError, RecordTooLargeError):
        return await producer.send(topic, b"", key=record.key, headers=headers)


async def ensure_topics(
    bootstrap_servers: str, topics: Topics, *, replication: int = 1, timeout: float = 60.0
) -> bool:
    """Create missing topics; False when the broker could not be reached within ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.5
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in topics.all() if name not in existing]
            if missing:
                new = [
                    NewTopic(name, PARTITIONS, replication, topic_configs=TOPIC_CONFIG)
                    for name in missing
                ]
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(new)
                logger.info("topics created", extra={"topics": missing})
            return True
        except TopicAlreadyExistsError:
            return True
        except (KafkaError, OSError) as error:
            if asyncio.get_running_loop().time() + delay > deadline:
                logger.warning("topics not ensured", extra={"error": str(error)})
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


class KafkaClient(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ClientT = TypeVar("ClientT", bound=KafkaClient)


async def start_when_reachable(
    make_client: Callable[[], ClientT], *, name: str, stopping: asyncio.Event | None = None
) -> ClientT | None:
    """Start a Kafka client, retrying with back-off while the broker is away.

    Services start before (or without) their broker and connect when it comes; None when
    ``stopping`` is set first.
    """
    delay = 0.5
    while stopping is None or not stopping.is_set():
        client = make_client()
        try:
            await client.start()
        except (KafkaError, OSError) as error:
            logger.warning(
                "kafka not reachable, retrying",
                extra={"client": name, "error": str(error), "delay": delay},
            )
            with contextlib.suppress(Exception):
                await client.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        return client
    return None


async def events_written(bootstrap_servers: str, topic: str) -> int:
    """How many events were ever written to ``topic``: the sum of its partitions' end offsets
    (what the fault drills compare before and after a replay)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, number) for number in range(PARTITIONS)]
        return int(sum((await consumer.end_offsets(partitions)).values()))
    finally:
        await consumer.stop()
