"""Alerts and schedules over HTTP, behind JWT bearer authentication.

- ``GET /api/v1/alerts``: alerts, newest first, filtered by state (open, acknowledged,
  resolved), kind and job, paged with limit and offset (the total comes along);
- ``POST /api/v1/alerts/{alert_id}/acknowledge``: someone is on it; the token's subject is
  recorded. The alert stays unresolved until a later success resolves it;
- ``PUT /api/v1/aomei/jobs/{job_id}/schedule``: set a job's whole schedule; admins only.

Mounted by the persist service's query app and by embedded serve.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BeforeValidator
from sqlalchemy import Connection, Engine, select, update

from backuphub.http import ApiError, database_errors, envelope, job_not_found
from consumers.alert_store import acknowledge_alert, list_alerts
from consumers.query_api import bearer_check
from processors.alerting import AlertKind
from schemas.api import MAX_JOB_ID, MAX_OFFSET, ScheduleRequest, lower_text
from schemas.events import utc_now
from schemas.tables import backup_jobs

logger = logging.getLogger(__name__)


def alert_routers(
    engine: Engine, jwt_secret: str, write_lock: "threading.Lock | None" = None
) -> tuple[APIRouter, APIRouter]:
    """The alerts router and the schedule router. ``write_lock``: the embedded writers' lock."""
    claims_of = bearer_check(jwt_secret)

    @contextlib.contextmanager
    def serialised() -> Iterator[None]:
        if write_lock is None:
            yield
            return
        with write_lock:
            yield

    def run(action: str, work: Callable[[Connection], Any], *, write: bool = False) -> Any:
        with database_errors("query", action):
            if not write:
                with engine.connect() as connection:
                    return work(connection)
            with serialised(), engine.begin() as connection:
                return work(connection)

    alerts = APIRouter(prefix="/api/v1/alerts")

    @alerts.get("")
    async def alert_list(
        _claims: Annotated[dict[str, Any], Depends(claims_of)],
        state: Annotated[
            Literal["open", "acknowledged", "resolved"] | None, BeforeValidator(lower_text)
        ] = None,
        kind: Annotated[AlertKind | None, BeforeValidator(lower_text)] = None,
        job_id: Annotated[int | None, Query(ge=0, le=MAX_JOB_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        page, total = await asyncio.to_thread(
            run,
            "list alerts",
            lambda connection: list_alerts(
                connection, state=state, kind=kind, job_id=job_id, limit=limit, offset=offset
            ),
        )
        return envelope(True, f"{total} alert(s)", page, total=total, limit=limit, offset=offset)

    @alerts.post("/{alert_id}/acknowledge")
    async def acknowledge(
        alert_id: Annotated[str, Path(max_length=36, pattern=r"^[0-9A-Fa-f-]+$")],
        claims: Annotated[dict[str, Any], Depends(claims_of)],
    ) -> dict[str, Any]:
        who = str(claims.get("sub") or "unknown")
        alert = await asyncio.to_thread(
            run,
            "acknowledge alert",
            lambda connection: acknowledge_alert(connection, alert_id[:36], who, utc_now()),
            write=True,
        )
        if alert is None:
            raise ApiError(404, f"Alert {alert_id[:36]} not found")
        logger.info("alert acknowledged", extra={"alert_id": alert["alert_id"], "by": who})
        return envelope(True, f"Alert acknowledged by {who}", alert)

    def admin_claims(claims: Annotated[dict[str, Any], Depends(claims_of)]) -> dict[str, Any]:
        if claims.get("role") != "admin":
            raise ApiError(403, "This needs the admin role")
        return claims

    schedules = APIRouter(prefix="/api/v1/aomei")

    @schedules.put("/jobs/{job_id}/schedule")
    async def set_schedule(
        job_id: Annotated[int, Path(ge=1, le=MAX_JOB_ID)],
        body: ScheduleRequest,
        claims: Annotated[dict[str, Any], Depends(admin_claims)],
    ) -> dict[str, Any]:
        values = body.schedule_changes()

        def write(connection: Connection) -> dict[str, Any] | None:
            now = utc_now()
            result = connection.execute(
                update(backup_jobs)
                .where(backup_jobs.c.id == job_id)
                .values(**values, schedule_updated_at=now, updated_at=now)
            )
            if result.rowcount == 0:
                return None
            row = connection.execute(select(backup_jobs).where(backup_jobs.c.id == job_id)).one()
            return schedule_of(row)

        schedule = await asyncio.to_thread(run, "set schedule", write, write=True)
        if schedule is None:
            raise job_not_found(job_id)
        logger.info("job schedule set", extra={"job_id": job_id, "by": claims.get("sub")})
        return envelope(True, f"Schedule of job {job_id} updated", schedule)

    return alerts, schedules


def schedule_of(row: Any) -> dict[str, Any]:
    """A job's schedule as the API shows it."""
    return {
        "job_id": row.id,
        "schedule_type": row.schedule_type,
        "schedule_cron": row.schedule_cron,
        "schedule_timezone": row.schedule_timezone or "UTC",
        "grace_seconds": row.grace_seconds,
        "max_duration_seconds": row.max_duration_seconds,
        "schedule_updated_at": (
            row.schedule_updated_at.isoformat() if row.schedule_updated_at else None
        ),
        "last_heartbeat_at": row.last_heartbeat_at.isoformat() if row.last_heartbeat_at else None,
    }
