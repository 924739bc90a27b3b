"""The Faust app: reports in, normalised executions out.

Alerts are not emitted here: they are decided in the persister's transaction against the
``alerts`` table (``processors.alerting``, ``consumers.alert_store``), because only there is
the state that keeps one open alert per job and kind without repeats.

The agent only wires topics to ``processors.rules.process_report``; the rules themselves are
plain functions. Concurrency stays 1, so offsets are committed in order, and nothing inside
the agent blocks the event loop (the rules are pure CPU on one small report).

Output events carry ids derived from the report, so when the processor dies between writing
its output and committing its input offset, the replay produces the same ids and the
persister and alert subscribers see duplicates they already know how to ignore.
"""

import asyncio
import logging
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from backuphub.kafka_topics import MAX_EVENT_BYTES, ensure_topics
from backuphub.metrics import EVENTS_FAILED, EVENTS_PROCESSED
from backuphub.settings import Settings
from processors.rules import ReportRejected, process_report
from schemas.events import EventEnvelope
from schemas.topics import DEFAULT_PREFIX, Topics

logger = logging.getLogger(__name__)

SOURCE = "processors"


def _broker_url(bootstrap_servers: str) -> str:
    hosts = [host.strip() for host in bootstrap_servers.split(",") if host.strip()]
    return ";".join(f"kafka://{host}" for host in hosts)


def processor_app_id(topics: Topics) -> str:
    """The Faust app id, which is also its consumer group and names its internal topics.

    Deployments that share a broker under different topic prefixes must not share a group:
    each would take part in the other's rebalances (a SIGKILLed worker stalls them all until
    its session times out) and could be handed partitions of topics it does not process. The
    default prefix keeps the historical id, so an existing deployment keeps its offsets.
    """
    if topics.prefix == DEFAULT_PREFIX:
        return "backuphub-processor"
    return f"{topics.prefix}processor"


def create_processor_app(
    settings: Settings, *, web_host: str = "127.0.0.1", web_port: int = 8001
) -> faust.App:
    app = faust.App(
        processor_app_id(settings.topics),
        broker=_broker_url(settings.kafka_bootstrap_servers),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_replication_factor=1,
        # The topics are created before the worker starts (ensure_topics). Letting Faust
        # declare them again on every rebalance crashed the worker when the broker went away
        # at that moment; it needs no leader topic either (no leader-only timers here).
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=MAX_EVENT_BYTES,
        # Faust's default (no linger, 16 KiB batches) sends nearly every execution in a
        # produce request of its own; a few ms of linger cut the processor's CPU per report.
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        # A SIGKILLed worker holds its partitions until its session expires: Faust's default of
        # 60 s stalls the restarted processor that long; Kafka's own default is 10 s.
        broker_session_timeout=10.0,
        web_bind=web_host,
        web_port=web_port,
        web_enabled=True,
    )
    topics = settings.topics
    reports = app.topic(topics.reports, key_type=bytes, value_type=bytes)
    executions = app.topic(topics.executions, key_type=bytes, value_type=bytes)
    dead_letters = app.topic(topics.dead_letters, key_type=bytes, value_type=bytes)

    @app.agent(reports, concurrency=1)
    async def process(stream: Any) -> None:
        async for key, value in stream.items():
            try:
                envelope = EventEnvelope.from_bytes(value)
                events = process_report(envelope, SOURCE)
            except (ValidationError, ReportRejected, ValueError) as error:
                EVENTS_FAILED.labels("process").inc()
                logger.error("report set aside", extra={"key": key, "error": str(error)[:300]})
                await dead_letters.send(key=key, value=value)
                continue

            for event in events:
                await executions.send(key=str(event.job_id).encode(), value=event.to_bytes())
                EVENTS_PROCESSED.labels(event.payload["status"]).inc()

            logger.debug(
                "report processed",
                extra={"job_id": envelope.job_id, "event_id": envelope.event_id},
            )

    @app.page("/metrics")
    async def metrics(web: Any, _request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    @app.page("/health")
    async def health(web: Any, _request: Any) -> Any:
        # Known gap: when the group's assignment is computed while the broker is coming back,
        # Faust's assignor can find the reports topic without partitions and assign none,
        # and nothing asks again until the next rebalance. ``assigned_partitions`` 0 shows
        # it here; restarting the processor resolves it. A consume loop of our own (plain
        # aiokafka) instead of Faust would close the gap.
        assigned = [tp for tp in app.consumer.assignment() if tp.topic == topics.reports]
        data = {"kafka": True, "assigned_partitions": len(assigned)}
        return web.json({"success": True, "message": "ok", "data": data})

    return app


def run_processor(settings: Settings, *, web_host: str = "127.0.0.1", web_port: int = 8001) -> None:
    """Run the Faust worker in the foreground until it is stopped."""
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, settings.topics, timeout=3600))
    app = create_processor_app(settings, web_host=web_host, web_port=web_port)
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()
