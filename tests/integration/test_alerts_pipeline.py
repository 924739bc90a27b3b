"""Alerts on the real broker and PostgreSQL: decided once, published, delivered once.

The service trio (ingest, processor, persist) runs for real. The missing-backup check is also
run in the test process against the same database, with a clock the test moves, so a "day
later" takes no time; what it decides is published by the trio's own outbox publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine, text

from backuphub.database import make_engine
from backuphub.kafka_topics import PARTITIONS
from consumers.alert_checker import MissingBackupChecker
from consumers.notify import DeliveryLedger, KafkaNotifyService, Notifier
from consumers.notify_targets import SIGNATURE_HEADER, TIMESTAMP_HEADER, parse_config
from schemas.events import utc_now
from schemas.topics import Topics
from tests.integration.running_services import Agent, ServiceTrio

pytestmark = pytest.mark.integration

ALERT_DEADLINE = 45.0  # seconds from a report (or a check) to its alert on the topic


@pytest.fixture(scope="module")
def agent(trio: ServiceTrio) -> Iterator[Agent]:
    client = trio.agent()
    yield client
    client.close()


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


def read_alerts(bootstrap: str, topic: str, *, seconds: float) -> list[dict[str, Any]]:
    """Every event on the alerts topic after ``seconds`` of reading from the start."""

    async def read() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, partition) for partition in range(PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            events: list[dict[str, Any]] = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=300)
                for records in batches.values():
                    events.extend(json.loads(record.value) for record in records)
            return events
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(read(), timeout=seconds + 30))


def wait_for_alerts(
    trio: ServiceTrio, job_id: int, wanted: list[tuple[str, str]], *, settle: float = 2.0
) -> list[dict[str, Any]]:
    """The job's alert events once ``wanted`` (type, kind) are all there, plus ``settle`` s to
    catch any duplicate; fails after ``ALERT_DEADLINE``."""
    topic = Topics(trio.topic_prefix).alerts
    deadline = time.monotonic() + ALERT_DEADLINE
    while True:
        events = [
            event
            for event in read_alerts(trio.bootstrap_servers, topic, seconds=1.0)
            if event["job_id"] == job_id
        ]
        seen = [(e["event_type"], e["payload"]["kind"]) for e in events]
        if all(item in seen for item in wanted):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"alerts of job {job_id}: wanted {wanted}, saw {seen}")
    time.sleep(settle)
    return [
        event
        for event in read_alerts(trio.bootstrap_servers, topic, seconds=1.0)
        if event["job_id"] == job_id
    ]


def test_a_failed_report_reaches_the_alerts_topic_within_seconds(
    trio: ServiceTrio, agent: Agent
) -> None:
    job = agent.register(unique("Failing"), "srv-alerts")
    started = time.monotonic()
    agent.accepted("status", {"job_id": job, "status": "failed", "error_message": "VSS error"})

    events = wait_for_alerts(trio, job, [("alert.raised", "backup_failed")])
    assert time.monotonic() - started < ALERT_DEADLINE
    [event] = events
    assert event["payload"]["job_id"] == job
    assert "VSS error" in event["payload"]["message"]

    # A second failure opens nothing new; a success resolves the one alert.
    agent.accepted("status", {"job_id": job, "status": "failed", "report_id": unique("f2")})
    agent.accepted("status", {"job_id": job, "status": "success", "report_id": unique("ok")})
    events = wait_for_alerts(trio, job, [("alert.resolved", "backup_failed")])
    assert [(e["event_type"], e["payload"]["kind"]) for e in events] == [
        ("alert.raised", "backup_failed"),
        ("alert.resolved", "backup_failed"),
    ]


def test_a_missing_daily_backup_alerts_once_across_restarts_and_its_run_resolves_it(
    trio: ServiceTrio, agent: Agent, engine: Engine
) -> None:
    job = agent.register(unique("Daily"), "srv-alerts", schedule_type="daily", grace_seconds=3600)
    # Runs dated ahead of the real clock are refused, so the job is made older instead: two
    # whole days without a run by the time the check looks.
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE backup_jobs SET created_at = :then, schedule_updated_at = :then "
                "WHERE id = :job"
            ),
            {"then": utc_now() - timedelta(days=4), "job": job},
        )
    clock = [utc_now() - timedelta(days=1)]

    first = MissingBackupChecker(engine, clock=lambda: clock[0]).check_once()
    assert first is not None
    assert [(e.event_type, e.payload["kind"]) for e in first.events if e.job_id == job] == [
        ("alert.raised", "backup_missing")
    ]

    # The persist service restarts, and the check runs again (a new instance) a day later.
    trio.restart("persister")
    clock[0] += timedelta(days=1)
    again = MissingBackupChecker(engine, clock=lambda: clock[0]).check_once()
    assert again is not None and again.events == []

    events = wait_for_alerts(trio, job, [("alert.raised", "backup_missing")])
    assert [(e["event_type"], e["payload"]["kind"]) for e in events] == [
        ("alert.raised", "backup_missing")
    ]

    # Its next run resolves it: one resolved event.
    end = (clock[0] - timedelta(hours=2)).isoformat()
    agent.accepted("status", {"job_id": job, "status": "success", "end_time": end})
    events = wait_for_alerts(trio, job, [("alert.resolved", "backup_missing")])
    assert [(e["event_type"], e["payload"]["kind"]) for e in events] == [
        ("alert.raised", "backup_missing"),
        ("alert.resolved", "backup_missing"),
    ]
    assert events[0]["payload"]["alert_id"] == events[1]["payload"]["alert_id"]


def test_two_checkers_at_once_raise_one_alert(database_url: str, agent: Agent) -> None:
    job = agent.register(unique("Hourly"), "srv-alerts", schedule_type="hourly")
    now = utc_now() + timedelta(hours=5)
    engines = [make_engine(database_url) for _ in range(2)]
    barrier = threading.Barrier(2)
    raised: list[int] = []

    def check(engine: Engine) -> None:
        barrier.wait(timeout=10)
        for _ in range(5):
            result = MissingBackupChecker(engine, clock=lambda: now).check_once()
            if result is not None:
                raised.extend(e.job_id for e in result.events if e.event_type == "alert.raised")

    try:
        threads = [threading.Thread(target=check, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for engine in engines:
            engine.dispose()

    assert raised.count(job) == 1


# --- delivery ---------------------------------------------------------------------------------


class Receiver:
    """A webhook on 127.0.0.1 that fails the first ``failures`` requests about ``job_id``
    with 503 (the topic also holds earlier tests' alerts: those get 200)."""

    def __init__(self, secret: str, failures: int, job_id: int) -> None:
        self.secret = secret
        self.failures = failures
        self.job_id = job_id
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                mine = [r for r in receiver.requests if json.loads(r[2])["job_id"] == job_id]
                about_job = json.loads(body)["job_id"] == receiver.job_id
                code = 503 if about_job and len(mine) < receiver.failures else 200
                receiver.requests.append((code, dict(self.headers), body))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(body) for code, _, body in self.requests if code == 200]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_webhook_gets_each_alert_signed_and_exactly_once(
    trio: ServiceTrio, agent: Agent, tmp_path: Path
) -> None:
    secret = secrets.token_hex(16)
    job = agent.register(unique("Webhook"), "srv-alerts")

    with Receiver(secret, failures=2, job_id=job) as receiver:
        config = parse_config(
            {
                "targets": [
                    {"name": "ops", "type": "webhook", "url": receiver.url, "secret": secret}
                ],
                "retry": {"max_attempts": 5, "base_delay_seconds": 0.05, "max_delay_seconds": 0.2},
                "timeout_seconds": 5,
            }
        )
        ledger = DeliveryLedger.in_state_dir(tmp_path / "notify")
        agent.accepted("status", {"job_id": job, "status": "failed", "error_message": "no disk"})

        async def run_notify() -> None:
            notifier = Notifier(config, ledger)
            service = KafkaNotifyService(
                notifier, trio.bootstrap_servers, Topics(trio.topic_prefix)
            )
            task = asyncio.create_task(service.run())
            deadline = time.monotonic() + ALERT_DEADLINE
            try:
                while time.monotonic() < deadline:
                    if any(e["job_id"] == job for e in receiver.delivered()):
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # a duplicate would show up now
            finally:
                await service.stop()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                await notifier.close()

            # The same event again (a redelivery) is not sent twice.
            for event in list(receiver.delivered()):
                from schemas.events import EventEnvelope

                envelope = EventEnvelope.model_validate(event)
                [outcome] = await Notifier(config, ledger).deliver(envelope)
                assert outcome.status == "duplicate"

        asyncio.run(asyncio.wait_for(run_notify(), timeout=ALERT_DEADLINE + 30))

    mine = [r for r in receiver.requests if json.loads(r[2])["job_id"] == job]
    assert [code for code, _, _ in mine] == [503, 503, 200]
    _code, headers, body = mine[-1]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 120
    event = json.loads(body)
    assert event["event_type"] == "alert.raised"
    assert event["payload"]["kind"] == "backup_failed"
    assert datetime.fromisoformat(event["received_at"])
