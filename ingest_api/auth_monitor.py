"""Bursts of bad API keys: one ``auth_failure_burst`` alert per client address, then quiet.

The ingest API tells ``AuthFailureMonitor`` about every request refused for its API key. The
monitor keeps, per client address, the times of the last ``threshold`` failures; when they
all fall within ``window``, the source is in a burst and ONE alert is raised for it. Further
failures only keep the burst alive; once the source has been quiet for ``quiet`` the alert
is resolved. The alert is keyed by the source, not a job: its job id is null (0 in the
envelope) and its ``source`` is the address.

Memory is bounded: at most ``max_sources`` addresses are tracked (the least recently seen go
first) with at most ``threshold`` times each, and at most ``max_open`` bursts are open at once
(beyond that a burst is logged and counted, not alerted: a spray from many addresses
would otherwise become a storm of alerts).

The address is the TCP peer. Behind a reverse proxy every agent shares the proxy's address, so
a burst then means "some agents behind the proxy"; forwarded headers are not trusted, since
anyone could forge them to hide.

``KafkaAlertEmitter`` publishes the events with the ingest producer (distributed mode);
``DatabaseAlertEmitter`` stores them in the ``alerts`` table and outbox (embedded mode). The
monitor is per process: two ingest instances count separately, each raising its own alert
with its own stable id.
"""

import asyncio
import contextlib
import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from sqlalchemy import Engine, select

from backuphub.metrics import ALERT_EVENTS, AUTH_FAILURE_SOURCES
from consumers.alert_store import alert_event, apply_decisions
from processors.alerting import SEVERITY, Decision, RaiseAlert, ResolveAlert, alert_id_for
from schemas.events import EventEnvelope, utc_now
from schemas.tables import alerts

logger = logging.getLogger(__name__)

SOURCE = "ingest_api"


@dataclass
class _Burst:
    alert: RaiseAlert
    opened_at: datetime
    last_failure_at: datetime
    failures: int


class AuthFailureMonitor:
    """Sliding-window counts of API-key failures per client address."""

    def __init__(
        self,
        *,
        threshold: int = 20,
        window: timedelta = timedelta(seconds=60),
        quiet: timedelta = timedelta(minutes=5),
        max_sources: int = 10_000,
        max_open: int = 100,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.threshold = max(1, threshold)
        self.window = window
        self.quiet = quiet
        self.max_sources = max_sources
        self.max_open = max_open
        self.clock = clock
        self._recent: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._open: dict[str, _Burst] = {}
        self._lock = threading.Lock()

    def failure(self, source: str) -> list[Decision]:
        """Count one failure from ``source``; a raise decision when it starts a burst."""
        now = self.clock()
        with self._lock:
            burst = self._open.get(source)
            if burst is not None:
                burst.last_failure_at = now
                burst.failures += 1
                return []

            times = self._recent.pop(source, None) or deque(maxlen=self.threshold)
            times.append(now)
            self._recent[source] = times  # most recently seen last
            while len(self._recent) > self.max_sources:
                self._recent.popitem(last=False)
            AUTH_FAILURE_SOURCES.set(len(self._recent))

            if len(times) < self.threshold or now - times[0] > self.window:
                return []
            if len(self._open) >= self.max_open:
                logger.warning("auth failure burst not alerted: too many open", extra={})
                return []
            return [self._open_burst(source, times[0], now)]

    def _open_burst(self, source: str, first: datetime, now: datetime) -> RaiseAlert:
        alert = RaiseAlert(
            alert_id=alert_id_for("auth_failure_burst", source, first.isoformat()),
            kind="auth_failure_burst",
            job_id=None,
            source=source,
            message=(
                f"{self.threshold} requests with a bad API key from {source} within "
                f"{int(self.window.total_seconds())} s"
            ),
            triggered_at=first,
            details={
                "source": source,
                "threshold": self.threshold,
                "window_seconds": int(self.window.total_seconds()),
                "first_failure_at": first.isoformat(),
            },
        )
        self._open[source] = _Burst(alert, now, now, self.threshold)
        self._recent.pop(source, None)
        return alert

    def sweep(self) -> list[Decision]:
        """Resolve the bursts whose source has been quiet for ``quiet``; forget old counts."""
        now = self.clock()
        decisions: list[Decision] = []
        with self._lock:
            for source, burst in list(self._open.items()):
                if now - burst.last_failure_at < self.quiet:
                    continue
                del self._open[source]
                decisions.append(
                    ResolveAlert(
                        alert_id=burst.alert.alert_id,
                        kind=burst.alert.kind,
                        job_id=None,
                        source=source,
                        reason=(
                            f"no bad API key from {source} for "
                            f"{int(self.quiet.total_seconds())} s ({burst.failures} in the burst)"
                        ),
                    )
                )
            stale = [s for s, times in self._recent.items() if now - times[-1] > self.window]
            for source in stale:
                del self._recent[source]
            AUTH_FAILURE_SOURCES.set(len(self._recent))
        return decisions


def _row(
    alert: RaiseAlert, opened_at: datetime, resolved_at: datetime | None, reason: str | None
) -> dict[str, Any]:
    return {
        "alert_uid": alert.alert_id,
        "kind": alert.kind,
        "state": "resolved" if resolved_at is not None else "open",
        "severity": SEVERITY[alert.kind],
        "job_id": None,
        "source": alert.source,
        "message": alert.message,
        "details": json.dumps(alert.details),
        "execution_id": None,
        "triggered_at": alert.triggered_at,
        "opened_at": opened_at,
        "resolved_at": resolved_at,
        "resolved_reason": reason,
        "resolved_execution_id": None,
    }


class AlertEmitter(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def emit(self, decisions: list[Decision]) -> None: ...


class LoggingEmitter:
    """Only logs the decisions: for an app built without a place to send alerts (tests)."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def emit(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            logger.warning("auth failure burst", extra={"alert_id": decision.alert_id})


class DatabaseAlertEmitter:
    """Embedded mode: store the alerts like any other, in the ``alerts`` table and outbox.

    The monitor's state is in memory, so at start the bursts a previous run left open are
    resolved: nothing would resolve them otherwise, and they would block new ones.
    """

    def __init__(self, engine: Engine, write_lock: "threading.Lock | None" = None) -> None:
        self.engine = engine
        self.write_lock = write_lock or threading.Lock()

    def _resolve_leftovers(self) -> list[EventEnvelope]:
        now = utc_now()
        with self.write_lock, self.engine.begin() as connection:
            rows = connection.execute(
                select(alerts.c.alert_uid, alerts.c.source)
                .where(alerts.c.kind == "auth_failure_burst")
                .where(alerts.c.state != "resolved")
            ).all()
            decisions: list[Decision] = [
                ResolveAlert(
                    alert_id=row.alert_uid,
                    kind="auth_failure_burst",
                    job_id=None,
                    source=row.source,
                    reason="the ingest API restarted; its burst counts started afresh",
                )
                for row in rows
            ]
            return apply_decisions(connection, decisions, {}, SOURCE, now)

    async def start(self) -> None:
        await asyncio.to_thread(self._resolve_leftovers)

    async def stop(self) -> None:
        return None

    def _store(self, decisions: list[Decision]) -> list[EventEnvelope]:
        now = utc_now()
        with self.write_lock, self.engine.begin() as connection:
            return apply_decisions(connection, decisions, {}, SOURCE, now)

    async def emit(self, decisions: list[Decision]) -> None:
        events = await asyncio.to_thread(self._store, decisions)
        for event in events:
            ALERT_EVENTS.labels(event.payload["kind"], event.event_type).inc()


class KafkaAlertEmitter:
    """Distributed mode: publish the events to the alerts topic with the ingest producer.

    Events wait in a bounded queue and are sent with retries while the broker is away; when
    the queue is full the oldest event is dropped (logged), since an attack must not grow
    memory. Event ids are stable, so a retried send that did arrive is dropped downstream.
    """

    def __init__(self, producer: Callable[[], Any], topic: str, max_queued: int = 1000) -> None:
        self.producer = producer
        self.topic = topic
        self.queue: asyncio.Queue[EventEnvelope] = asyncio.Queue(maxsize=max_queued)
        self._opened: dict[str, tuple[RaiseAlert, datetime]] = {}
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sender = asyncio.create_task(self._send_forever())

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    def _event(self, decision: Decision, now: datetime) -> EventEnvelope | None:
        if isinstance(decision, RaiseAlert):
            self._opened[decision.alert_id] = (decision, now)
            return alert_event(_row(decision, now, None, None), None, SOURCE, now)
        opened = self._opened.pop(decision.alert_id, None)
        if opened is None:
            return None
        alert, opened_at = opened
        return alert_event(_row(alert, opened_at, now, decision.reason), None, SOURCE, now)

    async def emit(self, decisions: list[Decision]) -> None:
        now = utc_now()
        for decision in decisions:
            event = self._event(decision, now)
            if event is None:
                continue
            if self.queue.full():
                dropped = self.queue.get_nowait()
                logger.error(
                    "alert event dropped: queue full", extra={"event_id": dropped.event_id}
                )
            self.queue.put_nowait(event)
            ALERT_EVENTS.labels(event.payload["kind"], event.event_type).inc()

    async def _send_forever(self) -> None:
        while True:
            event = await self.queue.get()
            delay = 0.5
            while True:
                producer = self.producer()
                try:
                    if producer is None:
                        raise KafkaError("producer not connected")
                    await asyncio.wait_for(
                        producer.send_and_wait(self.topic, event.to_bytes(), key=b"0"), timeout=10
                    )
                    logger.warning(
                        "auth failure alert published",
                        extra={"event_id": event.event_id, "type": event.event_type},
                    )
                    break
                except (KafkaError, TimeoutError) as error:
                    logger.warning("alert publish failed", extra={"error": repr(error)})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)


def monitor_from(settings: Any) -> AuthFailureMonitor:
    """A monitor with the thresholds of ``backuphub.settings.Settings``."""
    return AuthFailureMonitor(
        threshold=settings.auth_burst_threshold,
        window=timedelta(seconds=settings.auth_burst_window_seconds),
        quiet=timedelta(seconds=settings.auth_burst_quiet_seconds),
    )
