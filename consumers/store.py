"""Writing executions and copies: idempotent, batched, one transaction per batch.

The persister and the embedded pipeline both write through ``persist_executions``. Every row
is keyed by its execution id, so a batch written twice (a redelivered Kafka batch, an agent's
retry) leaves the tables as they were after the first write.
"""

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, Table, func, update
from sqlalchemy.dialects import postgresql, sqlite

from consumers.alert_store import ExecutionAlertContext
from schemas.events import ExecutionRecord, utc_now
from schemas.tables import backup_copies, backup_executions, backup_jobs, one_of

logger = logging.getLogger(__name__)


def _insert(connection: Connection, table: Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _execution_row(execution: ExecutionRecord, now: Any) -> dict[str, Any]:
    return {
        "execution_uid": execution.execution_id,
        "report_id": execution.report_id,
        "job_id": execution.job_id,
        "execution_date": execution.execution_date,
        "execution_result": execution.status,
        "reported_status": (execution.reported_status or "")[:64] or None,
        "backup_size_bytes": execution.backup_size_bytes,
        "duration_seconds": execution.duration_seconds,
        "start_time": execution.start_time,
        "end_time": execution.end_time,
        "error_message": execution.error_message,
        "details": execution.details,
        # History entries carry names of any length; the column holds 255.
        "task_name": execution.task_name[:255] if execution.task_name else None,
        "source_system": execution.source_system,
        "flags": ",".join(execution.flags)[:255],
        "received_at": execution.received_at,
        "created_at": now,
    }


def _latest_copies(executions: Iterable[ExecutionRecord]) -> list[ExecutionRecord]:
    """The newest execution per (job, copy type): one statement may touch a row only once."""
    latest: dict[tuple[int, str], ExecutionRecord] = {}
    for execution in executions:
        key = (execution.job_id, execution.copy_type)
        if key not in latest or execution.execution_date >= latest[key].execution_date:
            latest[key] = execution
    return list(latest.values())


def _copy_row(execution: ExecutionRecord, now: Any) -> dict[str, Any]:
    return {
        "job_id": execution.job_id,
        "copy_type": execution.copy_type,
        "media_type": execution.media_type or "disk",
        "storage_path": execution.storage_path,
        "last_backup_date": execution.execution_date,
        "last_backup_size": execution.backup_size_bytes,
        "status": execution.status,
        "updated_at": now,
    }


def _copy_upsert(connection: Connection, *, media_named: bool) -> Any:
    """The copy upsert; a report that names no media (or path) keeps the known one."""
    statement: Insert = _insert(connection, backup_copies)
    excluded = statement.excluded  # type: ignore[attr-defined]
    changes = {
        "storage_path": func.coalesce(excluded.storage_path, backup_copies.c.storage_path),
        "last_backup_date": excluded.last_backup_date,
        "last_backup_size": excluded.last_backup_size,
        "status": excluded.status,
        "updated_at": excluded.updated_at,
    }
    if media_named:
        changes["media_type"] = excluded.media_type
    return statement.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=["job_id", "copy_type"],
        set_=changes,
        where=backup_copies.c.last_backup_date <= excluded.last_backup_date,
    )


def _upsert_copies(connection: Connection, executions: Sequence[ExecutionRecord]) -> None:
    """Point each copy at its newest backup; an older run arriving late changes nothing."""
    now = utc_now()
    latest = _latest_copies(executions)

    for media_named in (True, False):
        rows = [
            _copy_row(execution, now)
            for execution in latest
            if (execution.media_type is not None) == media_named
        ]
        if rows:
            connection.execute(_copy_upsert(connection, media_named=media_named), rows)


# Batches at least this large go through COPY on PostgreSQL (see ``_copy_new_executions``).
COPY_THRESHOLD = 50
_STAGING = "_incoming_executions"


def _copy_new_executions(connection: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """PostgreSQL: COPY the batch into a session-local staging table, then one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``.

    A multi-row ``INSERT ... VALUES`` of thousands of rows spends most of its time in the
    driver turning one placeholder per value into SQL; COPY sends the rows as data. The staging
    table lives as long as the database session and is emptied at every commit (a rolled-back
    batch's rows were never visible); rows left from an earlier call in the same transaction
    are already stored, so they conflict and are not counted again.
    """
    columns = list(rows[0])
    names = ", ".join(columns)
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM backup_executions WITH NO DATA"
        )
        with cursor.copy(f"COPY {_STAGING} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[column] for column in columns])
        cursor.execute(
            f"INSERT INTO backup_executions ({names}) SELECT {names} FROM {_STAGING} "
            "ON CONFLICT (execution_uid) DO NOTHING RETURNING execution_uid"
        )
        return {str(uid) for (uid,) in cursor.fetchall()}


def _insert_new_executions(connection: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the rows whose execution id is not stored yet; the ids that were new."""
    if connection.dialect.name == "postgresql" and len(rows) >= COPY_THRESHOLD:
        return _copy_new_executions(connection, rows)
    statement = (
        _insert(connection, backup_executions)
        .on_conflict_do_nothing(index_elements=["execution_uid"])
        .returning(backup_executions.c.execution_uid)
    )
    return set(connection.execute(statement, rows).scalars().all())


def persist_executions(
    connection: Connection,
    executions: Sequence[ExecutionRecord],
    *,
    source: str = "persister",
    now: datetime | None = None,
) -> int:
    """Write a batch of executions in the caller's transaction; return how many were new.

    The alerts that the new executions raise or resolve are decided and queued in the same
    transaction (``consumers.alert_store``): a replayed batch finds its executions already
    there and decides nothing twice.
    """
    if not executions:
        return 0

    now = now or utc_now()
    alerting = ExecutionAlertContext(connection, executions)

    rows = [_execution_row(execution, now) for execution in executions]
    inserted = _insert_new_executions(connection, rows)

    new_executions = [e for e in executions if e.execution_id in inserted]
    _upsert_copies(connection, new_executions)

    touched_jobs = sorted({execution.job_id for execution in new_executions})
    if touched_jobs:
        connection.execute(
            update(backup_jobs)
            .where(one_of(connection, backup_jobs.c.id, touched_jobs))
            .values(updated_at=now)
        )

    alerting.apply(connection, new_executions, source, now)
    return len(new_executions)
