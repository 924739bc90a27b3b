"""Alerts where their state lives: the ``alerts`` table and the ``alert_outbox``.

The decisions come from ``processors.alerting``; this module loads what they need, applies
them in the caller's transaction, and writes one outbox row per raised or resolved alert in
that same transaction. So an alert exists exactly when its event is queued, and a crash
between the two is impossible. ``consumers.outbox`` then publishes the rows.

Two guards keep one unresolved alert per (job, kind), whichever process decides:

- the jobs concerned are locked (``SELECT ... FOR UPDATE`` on PostgreSQL, in id order so two
  writers never deadlock) before their alerts are read, so the persister and the missing-
  backup check decide one after the other, each seeing what the other committed;
- a partial unique index on ``dedupe_key`` over unresolved rows refuses a second one
  anyway, and the insert skips it (``ON CONFLICT DO NOTHING``) without writing an event.
"""

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Row, and_, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from processors.alerting import (
    DURATION_HISTORY,
    Decision,
    JobSettings,
    OpenAlert,
    RaiseAlert,
    ResolveAlert,
    evaluate_executions,
)
from schemas.events import EventEnvelope, ExecutionRecord, derived_id
from schemas.tables import alert_outbox, alerts, backup_executions, backup_jobs, one_of

logger = logging.getLogger(__name__)

UNRESOLVED_STATES = ("open", "acknowledged")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_settings(row: Row) -> JobSettings:
    return JobSettings(
        job_id=row.id,
        job_name=row.job_name,
        schedule_type=row.schedule_type,
        schedule_cron=row.schedule_cron,
        schedule_timezone=row.schedule_timezone,
        grace_seconds=row.grace_seconds,
        max_duration_seconds=row.max_duration_seconds,
        is_active=bool(row.is_active),
        schedule_since=row.schedule_updated_at or row.created_at,
        last_heartbeat_at=row.last_heartbeat_at,
    )


def load_jobs(
    connection: Connection, job_ids: Iterable[int], *, lock: bool
) -> dict[int, JobSettings]:
    """The jobs' settings; with ``lock``, their rows stay locked until the transaction ends."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}

    query = (
        select(backup_jobs)
        .where(one_of(connection, backup_jobs.c.id, ids))
        .order_by(backup_jobs.c.id)
    )
    if lock:
        query = query.with_for_update()
    return {row.id: job_settings(row) for row in connection.execute(query)}


def open_alerts(connection: Connection, job_ids: Iterable[int]) -> dict[int, dict[str, OpenAlert]]:
    """Each job's unresolved alerts, by kind."""
    ids = sorted(set(job_ids))
    found: dict[int, dict[str, OpenAlert]] = {job_id: {} for job_id in ids}
    if not ids:
        return found

    rows = connection.execute(
        select(alerts)
        .where(one_of(connection, alerts.c.job_id, ids))
        .where(alerts.c.state != "resolved")
    )
    for row in rows:
        found[row.job_id][row.kind] = OpenAlert(
            row.alert_uid, row.kind, row.triggered_at, json.loads(row.details or "{}")
        )
    return found


# On PostgreSQL the two history reads below take each job's newest rows from the
# (job_id, execution_date) index, so they cost the same after years of runs as after a week;
# the portable forms (for SQLite) read every run of the batch's jobs.
_LATEST_DATES_PG = text(
    """
    SELECT wanted.job_id,
           (SELECT max(execution_date) FROM backup_executions WHERE job_id = wanted.job_id)
    FROM unnest(CAST(:job_ids AS integer[])) AS wanted(job_id)
    """
)
_RECENT_DURATIONS_PG = text(
    """
    SELECT wanted.job_id, recent.duration_seconds
    FROM unnest(CAST(:job_ids AS integer[])) AS wanted(job_id)
    CROSS JOIN LATERAL (
        SELECT duration_seconds, execution_date, id
        FROM backup_executions
        WHERE job_id = wanted.job_id
          AND execution_result = 'success'
          AND duration_seconds IS NOT NULL
        ORDER BY execution_date DESC, id DESC
        LIMIT :history
    ) AS recent
    ORDER BY wanted.job_id, recent.execution_date, recent.id
    """
)


def latest_execution_dates(
    connection: Connection, job_ids: Iterable[int]
) -> dict[int, datetime | None]:
    """The newest execution date of each job (None for a job without executions)."""
    ids = sorted(set(job_ids))
    latest: dict[int, datetime | None] = dict.fromkeys(ids)
    if not ids:
        return latest

    if connection.dialect.name == "postgresql":
        for job_id, newest in connection.execute(_LATEST_DATES_PG, {"job_ids": ids}):
            latest[job_id] = newest
        return latest

    rows = connection.execute(
        select(backup_executions.c.job_id, func.max(backup_executions.c.execution_date))
        .where(one_of(connection, backup_executions.c.job_id, ids))
        .group_by(backup_executions.c.job_id)
    )
    for job_id, newest in rows:
        latest[job_id] = newest
    return latest


def recent_durations(connection: Connection, job_ids: Iterable[int]) -> dict[int, list[int]]:
    """The durations of each job's last successful runs, oldest first."""
    ids = sorted(set(job_ids))
    found: dict[int, list[int]] = {job_id: [] for job_id in ids}
    if not ids:
        return found

    if connection.dialect.name == "postgresql":
        parameters = {"job_ids": ids, "history": DURATION_HISTORY}
        for job_id, duration in connection.execute(_RECENT_DURATIONS_PG, parameters):
            found[job_id].append(int(duration))
        return found

    position = (
        func.row_number()
        .over(
            partition_by=backup_executions.c.job_id,
            order_by=(backup_executions.c.execution_date.desc(), backup_executions.c.id.desc()),
        )
        .label("position")
    )
    ranked = (
        select(
            backup_executions.c.job_id,
            backup_executions.c.duration_seconds,
            backup_executions.c.execution_date,
            backup_executions.c.id,
            position,
        )
        .where(one_of(connection, backup_executions.c.job_id, ids))
        .where(backup_executions.c.execution_result == "success")
        .where(backup_executions.c.duration_seconds.is_not(None))
        .subquery()
    )
    rows = connection.execute(
        select(ranked.c.job_id, ranked.c.duration_seconds)
        .where(ranked.c.position <= DURATION_HISTORY)
        .order_by(ranked.c.job_id, ranked.c.execution_date, ranked.c.id)
    )
    for job_id, duration in rows:
        found[job_id].append(int(duration))
    return found


# --- events ----------------------------------------------------------------------------------


def alert_payload(row: Row | Mapping[str, Any], job_name: str | None) -> dict[str, Any]:
    """The payload of an alert event (documented in ``schemas/alert_event.schema.json``)."""
    get = row._mapping.get if isinstance(row, Row) else row.get
    state = get("state")
    return {
        "alert_id": get("alert_uid"),
        "kind": get("kind"),
        "state": "resolved" if state == "resolved" else "open",
        "severity": get("severity"),
        "job_id": get("job_id"),
        "job_name": job_name,
        "source": get("source"),
        "message": get("message"),
        "triggered_at": _iso(get("triggered_at")),
        "opened_at": _iso(get("opened_at")),
        "resolved_at": _iso(get("resolved_at")),
        "execution_id": get("execution_id"),
        "resolved_reason": get("resolved_reason"),
        "resolved_execution_id": get("resolved_execution_id"),
        "details": json.loads(get("details") or "{}"),
    }


def alert_event(
    row: Row | Mapping[str, Any], job_name: str | None, source: str, now: datetime
) -> EventEnvelope:
    """The event announcing an alert's current state, with an id stable across replays."""
    get = row._mapping.get if isinstance(row, Row) else row.get
    payload = alert_payload(row, job_name)
    resolved = payload["state"] == "resolved"
    event_type: Literal["alert.raised", "alert.resolved"] = (
        "alert.resolved" if resolved else "alert.raised"
    )
    occurred = get("resolved_at") if resolved else get("opened_at")
    return EventEnvelope(
        event_id=derived_id(payload["alert_id"], event_type),
        event_type=event_type,
        job_id=payload["job_id"] or 0,
        occurred_at=occurred,
        received_at=now,
        source=source,
        payload=payload,
    )


def queue_event(connection: Connection, event: EventEnvelope, now: datetime) -> None:
    """Write the event to the outbox, in the caller's transaction."""
    connection.execute(
        insert(alert_outbox).values(
            event_id=event.event_id,
            event_type=event.event_type,
            alert_uid=event.payload["alert_id"],
            job_id=event.job_id,
            payload=event.to_bytes().decode(),
            created_at=now,
        )
    )


# --- applying decisions ------------------------------------------------------------------------


def _insert_ignoring_duplicates(connection: Connection) -> Any:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(alerts).on_conflict_do_nothing()
    return sqlite.insert(alerts).on_conflict_do_nothing()


def raise_alert(
    connection: Connection,
    decision: RaiseAlert,
    job_name: str | None,
    source: str,
    now: datetime,
) -> EventEnvelope | None:
    """Open the alert and queue its event; None when an unresolved one already holds the key."""
    values = {
        "alert_uid": decision.alert_id,
        "dedupe_key": decision.dedupe_key,
        "kind": decision.kind,
        "state": "open",
        "severity": decision.severity,
        "job_id": decision.job_id,
        "source": decision.source,
        "message": decision.message[:4000],
        "details": json.dumps(decision.details, default=str),
        "execution_id": decision.execution_id,
        "triggered_at": decision.triggered_at,
        "opened_at": now,
        "updated_at": now,
    }
    statement = _insert_ignoring_duplicates(connection).values(**values).returning(alerts.c.id)
    if connection.execute(statement).first() is None:
        logger.info(
            "alert already open",
            extra={"job_id": decision.job_id, "kind": decision.kind, "alert_id": decision.alert_id},
        )
        return None

    event = alert_event(values, job_name, source, now)
    queue_event(connection, event, now)
    logger.warning(
        "alert raised",
        extra={"job_id": decision.job_id, "kind": decision.kind, "event_id": event.event_id},
    )
    return event


def resolve_alert(
    connection: Connection,
    decision: ResolveAlert,
    job_name: str | None,
    source: str,
    now: datetime,
) -> EventEnvelope | None:
    """Resolve the alert and queue its event; None when it was not unresolved any more."""
    row = connection.execute(
        update(alerts)
        .where(alerts.c.alert_uid == decision.alert_id)
        .where(alerts.c.state != "resolved")
        .values(
            state="resolved",
            resolved_at=now,
            resolved_reason=decision.reason[:1000],
            resolved_execution_id=decision.execution_id,
            updated_at=now,
        )
        .returning(*alerts.c)
    ).first()
    if row is None:
        return None

    event = alert_event(row, job_name, source, now)
    queue_event(connection, event, now)
    logger.info(
        "alert resolved",
        extra={"job_id": decision.job_id, "kind": decision.kind, "event_id": event.event_id},
    )
    return event


def apply_decisions(
    connection: Connection,
    decisions: Sequence[Decision],
    jobs: Mapping[int, JobSettings],
    source: str,
    now: datetime,
) -> list[EventEnvelope]:
    """Apply decisions in order, in the caller's transaction; the events they queued."""
    events = []
    for decision in decisions:
        job = jobs.get(decision.job_id) if decision.job_id is not None else None
        job_name = job.job_name if job is not None else None
        if isinstance(decision, RaiseAlert):
            event = raise_alert(connection, decision, job_name, source, now)
        else:
            event = resolve_alert(connection, decision, job_name, source, now)
        if event is not None:
            events.append(event)
    return events


class ExecutionAlertContext:
    """What the execution rules need, read before a batch is written (jobs locked first)."""

    def __init__(self, connection: Connection, executions: Sequence[ExecutionRecord]) -> None:
        job_ids = {execution.job_id for execution in executions}
        timed = {e.job_id for e in executions if e.duration_seconds is not None}
        self.jobs = load_jobs(connection, job_ids, lock=True)
        self.latest_before = latest_execution_dates(connection, job_ids)
        self.durations = recent_durations(connection, timed)

    def apply(
        self,
        connection: Connection,
        new_executions: Sequence[ExecutionRecord],
        source: str,
        now: datetime,
    ) -> list[EventEnvelope]:
        """Decide and apply the alerts of the executions that were actually new."""
        by_job: dict[int, list[ExecutionRecord]] = {}
        for execution in new_executions:
            by_job.setdefault(execution.job_id, []).append(execution)
        if not by_job:
            return []

        alerts_by_job = open_alerts(connection, by_job)
        events: list[EventEnvelope] = []
        for job_id in sorted(by_job):
            job = self.jobs.get(job_id)
            if job is None:
                continue
            decisions = evaluate_executions(
                job,
                alerts_by_job.get(job_id, {}),
                self.durations.get(job_id, []),
                by_job[job_id],
                self.latest_before.get(job_id),
            )
            events.extend(apply_decisions(connection, decisions, self.jobs, source, now))
        return events


# --- reading and acknowledging --------------------------------------------------------------------


def _alert_item(row: Row) -> dict[str, Any]:
    item = alert_payload(row, row.job_name)
    item["state"] = row.state
    item["acknowledged_at"] = _iso(row.acknowledged_at)
    item["acknowledged_by"] = row.acknowledged_by
    return item


def list_alerts(
    connection: Connection,
    *,
    state: str | None = None,
    kind: str | None = None,
    job_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One page of alerts, newest first, and the total that match the filters."""
    query = select(alerts, backup_jobs.c.job_name).select_from(
        alerts.outerjoin(backup_jobs, backup_jobs.c.id == alerts.c.job_id)
    )
    if state is not None:
        query = query.where(alerts.c.state == state)
    if kind is not None:
        query = query.where(alerts.c.kind == kind)
    if job_id is not None:
        query = query.where(alerts.c.job_id == job_id)

    total = connection.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = connection.execute(
        query.order_by(alerts.c.opened_at.desc(), alerts.c.id.desc()).limit(limit).offset(offset)
    ).all()
    return [_alert_item(row) for row in rows], int(total)


def acknowledge_alert(
    connection: Connection, alert_id: str, who: str, now: datetime
) -> dict[str, Any] | None:
    """Mark an open alert acknowledged by ``who``; None when there is no such alert.

    Acknowledging keeps the alert unresolved (it still blocks a duplicate and is still
    resolved by a later success); acknowledging twice keeps the first acknowledgement.
    """
    connection.execute(
        update(alerts)
        .where(and_(alerts.c.alert_uid == alert_id, alerts.c.state == "open"))
        .values(
            state="acknowledged", acknowledged_at=now, acknowledged_by=who[:255], updated_at=now
        )
    )
    row = connection.execute(
        select(alerts, backup_jobs.c.job_name)
        .select_from(alerts.outerjoin(backup_jobs, backup_jobs.c.id == alerts.c.job_id))
        .where(alerts.c.alert_uid == alert_id)
    ).first()
    return None if row is None else _alert_item(row)


def open_alert_counts(connection: Connection) -> dict[str, int]:
    """Unresolved alerts by kind."""
    rows = connection.execute(
        select(alerts.c.kind, func.count())
        .where(alerts.c.state != "resolved")
        .group_by(alerts.c.kind)
    )
    return {kind: int(count) for kind, count in rows}
