"""The read side: jobs, their latest execution and their copies, as the GET endpoints show them."""

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, ScalarSelect, func, select

from schemas.tables import backup_copies, backup_executions, backup_jobs


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _latest_result() -> ScalarSelect[Any]:
    """The result of each job's newest execution, as a correlated scalar subquery."""
    return (
        select(backup_executions.c.execution_result)
        .where(backup_executions.c.job_id == backup_jobs.c.id)
        .order_by(backup_executions.c.execution_date.desc(), backup_executions.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _job_item(row: Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_name": row.job_name,
        "job_type": row.job_type,
        "backup_tool": row.backup_tool,
        "target_server": row.target_server or None,
        "target_path": row.target_path,
        "description": row.description,
        "task_guid": row.task_guid,
        "is_active": row.is_active,
        "schedule_type": row.schedule_type,
        "retention_days": row.retention_days,
        "last_result": row.last_result,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def _execution_item(row: Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "execution_date": _iso(row.execution_date),
        "execution_result": row.execution_result,
        "backup_size_bytes": row.backup_size_bytes,
        "duration_seconds": row.duration_seconds,
        "start_time": _iso(row.start_time),
        "end_time": _iso(row.end_time),
        "error_message": row.error_message,
        "details": row.details,
        "source_system": row.source_system,
        "report_id": row.report_id,
        "flags": [flag for flag in row.flags.split(",") if flag],
    }


def recent_executions(connection: Connection, job_id: int, limit: int) -> list[dict[str, Any]]:
    rows = connection.execute(
        select(backup_executions)
        .where(backup_executions.c.job_id == job_id)
        .order_by(backup_executions.c.execution_date.desc(), backup_executions.c.id.desc())
        .limit(limit)
    ).all()
    return [_execution_item(row) for row in rows]


def list_jobs(
    connection: Connection,
    *,
    active_only: bool = True,
    include_executions: bool = False,
    executions_limit: int = 10,
    limit: int = 100,
    offset: int = 0,
    status: str | None = None,
    server: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One page of jobs and the total that match the filters.

    ``status`` filters on the result of each job's newest execution.
    """
    last_result = _latest_result().label("last_result")
    query = select(backup_jobs, last_result)

    if active_only:
        query = query.where(backup_jobs.c.is_active.is_(True))
    if server is not None:
        query = query.where(backup_jobs.c.target_server == server)
    if status is not None:
        query = query.where(_latest_result() == status)

    total = connection.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = connection.execute(query.order_by(backup_jobs.c.id).limit(limit).offset(offset)).all()

    jobs = [_job_item(row) for row in rows]
    if include_executions:
        for job in jobs:
            job["executions"] = recent_executions(connection, job["id"], executions_limit)
    return jobs, total


def job_detail(connection: Connection, job_id: int) -> dict[str, Any] | None:
    """A job with its newest execution and every copy; None when there is no such job."""
    job = connection.execute(select(backup_jobs).where(backup_jobs.c.id == job_id)).first()
    if job is None:
        return None

    latest = connection.execute(
        select(backup_executions)
        .where(backup_executions.c.job_id == job_id)
        .order_by(backup_executions.c.execution_date.desc(), backup_executions.c.id.desc())
        .limit(1)
    ).first()
    copies = connection.execute(
        select(backup_copies)
        .where(backup_copies.c.job_id == job_id)
        .order_by(backup_copies.c.copy_type)
    ).all()

    return {
        "job_id": job.id,
        "job_name": job.job_name,
        "job_type": job.job_type,
        "backup_tool": job.backup_tool,
        "target_server": job.target_server or None,
        "target_path": job.target_path,
        "task_guid": job.task_guid,
        "is_active": job.is_active,
        "schedule_type": job.schedule_type,
        "latest_execution": None
        if latest is None
        else {
            "date": _iso(latest.execution_date),
            "result": latest.execution_result,
            "size": latest.backup_size_bytes,
            "duration": latest.duration_seconds,
            "error": latest.error_message,
            "flags": [flag for flag in latest.flags.split(",") if flag],
        },
        "copies": [
            {
                "type": copy.copy_type,
                "media": copy.media_type,
                "status": copy.status,
                "last_backup": _iso(copy.last_backup_date),
                "size": copy.last_backup_size,
                "path": copy.storage_path,
            }
            for copy in copies
        ],
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
    }
