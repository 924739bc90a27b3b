"""The job registry: which jobs exist, and registration that answers with an id at once.

Ids come from the database's own sequence (``backup_jobs.id``). Registration is rare (once per
task and machine) and must answer with a final id, so it writes straight to the database rather
than going through Kafka. Status reports, which are frequent, only need to know that a job
exists: an in-memory set of known ids answers that, and a miss asks the database once. Jobs are
never deleted, so a cached "exists" cannot go stale; a "does not exist" is never cached, so a
job registered through another ingest instance is found on its first report.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from schemas.api import RegisterRequest
from schemas.events import utc_now
from schemas.tables import backup_jobs

logger = logging.getLogger(__name__)


class JobNotFound(LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"Job {job_id} not found")
        self.job_id = job_id


class NameTaken(ValueError):
    """Renaming a job onto a name another job of the same server already has."""


@dataclass(frozen=True)
class RegisteredJob:
    job_id: int
    job_name: str
    created: bool


def _find_existing(engine: Engine, request: RegisterRequest) -> Row | None:
    """The job this registration refers to on its server.

    By task GUID first: it survives renames in AOMEI. Else by name, but a registration that
    carries a GUID only adopts a job that has none yet (one registered by name before): a
    job of another GUID is another task that happens to share the name.
    """
    server = request.target_server or ""
    columns = select(backup_jobs.c.id, backup_jobs.c.job_name).where(
        backup_jobs.c.target_server == server
    )
    with engine.connect() as connection:
        if request.task_guid:
            row = connection.execute(
                columns.where(backup_jobs.c.task_guid == request.task_guid)
            ).first()
            if row is not None:
                return row
            columns = columns.where(backup_jobs.c.task_guid.is_(None))

        return connection.execute(
            columns.where(backup_jobs.c.job_name == request.task_name)
            .order_by(backup_jobs.c.id)
            .limit(1)
        ).first()


def _changes(request: RegisterRequest) -> dict[str, object]:
    """The columns a registration of an existing job sets; fields the agent left out keep
    their stored value.

    The schedule is not among them: it decides when a job counts as missing, so once the job
    exists only an admin changes it (``PUT /jobs/{id}/schedule``), not any holder of an agent
    key. A schedule sent at registration takes effect when the job is created.
    """
    values: dict[str, object] = {"job_name": request.task_name, "updated_at": utc_now()}
    fields = request.model_fields_set
    if "job_type" in fields:
        values["job_type"] = request.job_type.value
    for name in ("target_path", "description", "task_guid"):
        if name in fields and getattr(request, name) is not None:
            values[name] = getattr(request, name)
    if "target_server" in fields:
        values["target_server"] = request.target_server or ""
    return values


def _update(engine: Engine, job_id: int, request: RegisterRequest) -> RegisteredJob:
    try:
        with engine.begin() as connection:
            result = connection.execute(
                update(backup_jobs).where(backup_jobs.c.id == job_id).values(**_changes(request))
            )
    except IntegrityError as error:
        raise NameTaken(
            f"another job on this server already has the task name {request.task_name!r}"
            " or this task GUID"
        ) from error

    if result.rowcount == 0:
        raise JobNotFound(job_id)
    return RegisteredJob(job_id, request.task_name, created=False)


def _create(engine: Engine, request: RegisterRequest) -> RegisteredJob:
    now = utc_now()
    values = {
        "job_name": request.task_name,
        "job_type": request.job_type.value,
        "backup_tool": "aomei",
        "target_server": request.target_server or "",
        "target_path": request.target_path,
        "description": request.description,
        "task_guid": request.task_guid,
        "created_at": now,
        "updated_at": now,
        **request.schedule_changes(),
    }
    with engine.begin() as connection:
        job_id = connection.execute(
            insert(backup_jobs).values(**values).returning(backup_jobs.c.id)
        ).scalar_one()
    return RegisteredJob(job_id, request.task_name, created=True)


def record_heartbeat(engine: Engine, job_id: int, at: datetime) -> bool:
    """Note that a run of the job is in progress now; False when there is no such job.

    A heartbeat is a "running" status report. It is state, not history: it is written
    straight to the job row (like a registration) instead of travelling through Kafka, never
    becomes an execution, and only keeps the missing-backup check quiet while it is recent
    (``processors.alerting.HEARTBEAT_FRESH``). A late heartbeat never moves the time back.
    """
    with engine.begin() as connection:
        result = connection.execute(
            update(backup_jobs)
            .where(backup_jobs.c.id == job_id)
            .where(
                (backup_jobs.c.last_heartbeat_at.is_(None)) | (backup_jobs.c.last_heartbeat_at < at)
            )
            .values(last_heartbeat_at=at)
        )
        if result.rowcount:
            return True
        found = connection.execute(select(backup_jobs.c.id).where(backup_jobs.c.id == job_id))
        return found.first() is not None


def register_job(engine: Engine, request: RegisterRequest) -> RegisteredJob:
    """Create or update a job; registering the same task twice gives the same id."""
    if request.job_id > 0:
        return _update(engine, request.job_id, request)

    existing = _find_existing(engine, request)
    if existing is not None:
        return _update(engine, existing.id, request)

    try:
        return _create(engine, request)
    except IntegrityError:
        # Two agents registered the same task at the same moment: the other insert won.
        existing = _find_existing(engine, request)
        if existing is None:
            raise
        return _update(engine, existing.id, request)


class JobRegistry:
    """Answers "does this job exist?" for the ingest path without a query per report."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._known: set[int] = set()

    def remember(self, job_id: int) -> None:
        self._known.add(job_id)

    def _lookup(self, job_id: int) -> bool:
        with self.engine.connect() as connection:
            found = connection.execute(
                select(backup_jobs.c.id).where(backup_jobs.c.id == job_id)
            ).first()
        return found is not None

    async def exists(self, job_id: int) -> bool:
        if job_id in self._known:
            return True

        found = await asyncio.to_thread(self._lookup, job_id)
        if found:
            self._known.add(job_id)
        return found

    async def heartbeat(self, job_id: int, at: datetime) -> bool:
        found = await asyncio.to_thread(record_heartbeat, self.engine, job_id, at)
        if found:
            self._known.add(job_id)
        return found

    async def register(self, request: RegisterRequest) -> RegisteredJob:
        job = await asyncio.to_thread(register_job, self.engine, request)
        self._known.add(job.job_id)
        return job
