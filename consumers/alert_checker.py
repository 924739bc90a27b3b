"""The missing-backup check: a periodic task of the persist service and of embedded serve.

Each pass looks at every active scheduled job, asks ``processors.alerting.decide_missing``
whether its expected run is overdue, and applies the decisions through
``consumers.alert_store`` in one transaction, with the events in the outbox. All the state is
in the ``alerts`` table, so a restarted checker neither forgets an open alert nor raises it
again; the clock is injectable, so tests move time instead of waiting.

Several persist instances may run the check at the same moment. On PostgreSQL each pass
first takes ``pg_try_advisory_xact_lock``: the one instance that gets it checks, the others
skip this pass instead of queueing behind it (their pass would only repeat the work). The lock
is transaction-scoped, so it is released by the commit or by the connection dying with a
crashed process; a session-level lock could outlive a crash on a pooled connection. The jobs'
row locks and the unique index on unresolved alerts (see ``consumers.alert_store``) still keep
one alert per job should two passes ever overlap. The embedded mode on SQLite is one process:
there the check takes the embedded sink's write lock instead.

The same pass refreshes the gauges ops watch: open alerts by kind, and how old each active
job's last successful backup is, as counts per age bucket (bounded labels, never one per job).
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError

from backuphub.metrics import (
    ALERT_CHECKS,
    ALERT_EVENTS,
    DATABASE_ERRORS,
    JOBS_BY_SUCCESS_AGE,
    OLDEST_SUCCESS_AGE,
    OPEN_ALERTS,
    OUTBOX_PENDING,
)
from consumers.alert_store import (
    apply_decisions,
    latest_execution_dates,
    load_jobs,
    open_alert_counts,
    open_alerts,
)
from processors.alerting import KINDS, Decision, JobSettings, decide_missing
from schemas.events import EventEnvelope, utc_now
from schemas.tables import alert_outbox, alerts, backup_executions, backup_jobs

logger = logging.getLogger(__name__)

# Key of the advisory lock held by the one instance that checks (0001 migrates under 4707101).
CHECK_LOCK_KEY = 4707102

AGE_BUCKETS = (("<1d", 1), ("1-2d", 2), ("2-7d", 7))


@dataclass(frozen=True)
class CheckResult:
    checked_jobs: int
    events: list[EventEnvelope]


class MissingBackupChecker:
    """Raises ``backup_missing`` for overdue jobs, once, and refreshes the ops gauges."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utc_now,
        source: str = "alert-checker",
        write_lock: "threading.Lock | None" = None,
        interval_seconds: float = 30.0,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.source = source
        self.write_lock = write_lock
        self.interval_seconds = interval_seconds
        self.on_events: Callable[[], None] | None = None

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[None]:
        if self.write_lock is None:
            yield
            return
        with self.write_lock:
            yield

    def check_once(self) -> CheckResult | None:
        """One pass; None when another instance holds the check's lock."""
        with self._serialised(), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                taken = connection.execute(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": CHECK_LOCK_KEY}
                ).scalar_one()
                if not taken:
                    ALERT_CHECKS.labels("skipped").inc()
                    return None

            now = self.clock()
            result = self._check(connection, now)

        ALERT_CHECKS.labels("done").inc()
        for event in result.events:
            ALERT_EVENTS.labels(event.payload["kind"], event.event_type).inc()
        return result

    def _check(self, connection: Connection, now: datetime) -> CheckResult:
        candidates = _candidate_jobs(connection)
        decisions = self._decide(
            connection, candidates, load_jobs(connection, candidates, lock=False), now
        )
        if not decisions:
            return CheckResult(len(candidates), [])

        # Lock only the jobs about to change, then decide again on what is committed now: an
        # execution the persister wrote meanwhile wins over the first look.
        concerned = sorted({d.job_id for d in decisions if d.job_id is not None})
        jobs = load_jobs(connection, concerned, lock=True)
        decisions = self._decide(connection, concerned, jobs, now)
        events = apply_decisions(connection, decisions, jobs, self.source, now)
        return CheckResult(len(candidates), events)

    def _decide(
        self,
        connection: Connection,
        job_ids: list[int],
        jobs: Mapping[int, JobSettings],
        now: datetime,
    ) -> list[Decision]:
        latest = latest_execution_dates(connection, job_ids)
        unresolved = open_alerts(connection, job_ids)

        decisions: list[Decision] = []
        for job_id in job_ids:
            job = jobs.get(job_id)
            if job is None:
                continue
            found = decide_missing(job, unresolved.get(job_id, {}), latest.get(job_id), now)
            decisions.extend(found)
        return decisions

    def refresh_gauges(self) -> None:
        """Open alerts by kind, outbox backlog, and last-success ages (bounded buckets)."""
        now = self.clock()
        with self.engine.connect() as connection:
            counts = open_alert_counts(connection)
            pending = connection.execute(
                select(func.count())
                .select_from(alert_outbox)
                .where(alert_outbox.c.published_at.is_(None))
            ).scalar_one()
            last_success = connection.execute(
                select(backup_jobs.c.id, func.max(backup_executions.c.execution_date))
                .select_from(
                    backup_jobs.outerjoin(
                        backup_executions,
                        (backup_executions.c.job_id == backup_jobs.c.id)
                        & (backup_executions.c.execution_result == "success"),
                    )
                )
                .where(backup_jobs.c.is_active.is_(True))
                .group_by(backup_jobs.c.id)
            ).all()

        for kind in KINDS:
            OPEN_ALERTS.labels(kind).set(counts.get(kind, 0))
        OUTBOX_PENDING.set(pending)

        buckets = dict.fromkeys([name for name, _ in AGE_BUCKETS] + [">7d", "never"], 0)
        oldest = 0.0
        for _job_id, newest in last_success:
            if newest is None:
                buckets["never"] += 1
                continue
            age = max(0.0, (now - newest).total_seconds())
            oldest = max(oldest, age)
            buckets[_age_bucket(age)] += 1
        for name, count in buckets.items():
            JOBS_BY_SUCCESS_AGE.labels(name).set(count)
        OLDEST_SUCCESS_AGE.set(oldest)

    async def run(self, stopping: asyncio.Event) -> None:
        """Check every ``interval_seconds`` until ``stopping`` is set; errors are retried."""
        logger.info("missing-backup check started", extra={"interval": self.interval_seconds})
        while not stopping.is_set():
            try:
                result = await asyncio.to_thread(self.check_once)
                await asyncio.to_thread(self.refresh_gauges)
            except SQLAlchemyError as error:
                ALERT_CHECKS.labels("failed").inc()
                DATABASE_ERRORS.labels("alert_checker").inc()
                logger.warning("missing-backup check failed", extra={"error": type(error).__name__})
            else:
                if result is not None and result.events and self.on_events is not None:
                    self.on_events()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.interval_seconds)


def _age_bucket(age_seconds: float) -> str:
    days = age_seconds / 86400
    for name, limit in AGE_BUCKETS:
        if days < limit:
            return name
    return ">7d"


def _candidate_jobs(connection: Connection) -> list[int]:
    """Active jobs that expect runs, and any job holding an unresolved missing alert."""
    scheduled = select(backup_jobs.c.id).where(
        backup_jobs.c.is_active.is_(True),
        or_(backup_jobs.c.schedule_type != "manual", backup_jobs.c.schedule_cron.is_not(None)),
    )
    missing = select(alerts.c.job_id).where(
        alerts.c.kind == "backup_missing", alerts.c.state != "resolved"
    )
    ids = {row[0] for row in connection.execute(scheduled)}
    ids |= {row[0] for row in connection.execute(missing) if row[0] is not None}
    return sorted(ids)
