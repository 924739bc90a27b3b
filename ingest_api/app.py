"""The ingest API: validates agents' reports and hands them to a durable sink.

The handlers are thin: authentication, body validation (pydantic, answered 400), a job check,
then ``sink.submit``. A 200 means the report is durable; a 503 with ``Retry-After`` means it
was not and must be sent again.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from backuphub.http import ApiError, envelope, install_common
from backuphub.metrics import AUTH_FAILURES, DATABASE_ERRORS, REPORTS_ACCEPTED, REPORTS_REJECTED
from backuphub.security import ApiKeys
from ingest_api.publish import ReportSink, SinkUnavailable
from ingest_api.registry import JobNotFound, JobRegistry, NameTaken
from ingest_api.reports import ReportKind, report_event
from processors.rules import ReportRejected, decode_raw_entries
from schemas.api import LogAnalysisRequest, RegisterRequest, StatusRequest
from schemas.events import utc_now

logger = logging.getLogger(__name__)


def _api_key_check(keys: ApiKeys) -> Callable[..., None]:
    def check(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if not keys.accepts(x_api_key):
            AUTH_FAILURES.labels("api_key").inc()
            REPORTS_REJECTED.labels("auth").inc()
            raise ApiError(401, "Invalid or missing API key")

    return check


def _database_failure(error: SQLAlchemyError, action: str) -> ApiError:
    DATABASE_ERRORS.labels("ingest").inc()
    logger.error("database error", extra={"action": action, "error": type(error).__name__})
    return ApiError(500, "Database error: the change was rolled back, retry later")


def ingest_router(keys: ApiKeys, registry: JobRegistry, sink: ReportSink, retry_after: int) -> Any:
    """The three POST endpoints the agents call."""
    router = APIRouter(prefix="/api/v1/aomei", dependencies=[Depends(_api_key_check(keys))])

    async def accept(kind: ReportKind, body: StatusRequest | LogAnalysisRequest) -> str:
        try:
            known = await registry.exists(body.job_id)
        except SQLAlchemyError as error:
            raise _database_failure(error, "job lookup") from error
        if not known:
            REPORTS_REJECTED.labels("unknown_job").inc()
            raise ApiError(
                400,
                f"Job {body.job_id} not found",
                errors=[{"field": "job_id", "message": f"no job with id {body.job_id}"}],
            )

        event = report_event(kind, body, utc_now())
        try:
            await sink.submit(event)
        except SQLAlchemyError as error:
            raise _database_failure(error, "store report") from error
        except SinkUnavailable as error:
            REPORTS_REJECTED.labels("unavailable").inc()
            logger.warning(
                "report not accepted",
                extra={"job_id": body.job_id, "event_id": event.event_id, "error": str(error)},
            )
            raise ApiError(
                503,
                "The report could not be stored right now; send it again later",
                headers={"Retry-After": str(retry_after)},
            ) from error

        REPORTS_ACCEPTED.labels(kind).inc()
        return str(event.payload["report_id"])

    @router.post("/register")
    async def register(body: RegisterRequest) -> dict[str, Any]:
        try:
            job = await registry.register(body)
        except JobNotFound as error:
            raise ApiError(
                400,
                str(error),
                errors=[{"field": "job_id", "message": f"no job with id {error.job_id}"}],
            ) from error
        except NameTaken as error:
            raise ApiError(
                400, str(error), errors=[{"field": "task_name", "message": str(error)}]
            ) from error
        except SQLAlchemyError as error:
            raise _database_failure(error, "register") from error

        logger.info("job registered", extra={"job_id": job.job_id, "job_created": job.created})
        data = {"job_id": job.job_id, "job_name": job.job_name, "backup_tool": "aomei"}
        return envelope(True, f"Job registered successfully with ID {job.job_id}", data)

    @router.post("/status")
    async def status(body: StatusRequest) -> dict[str, Any]:
        report_id = await accept("status", body)
        return envelope(
            True, f"Status updated successfully for job {body.job_id}", {"report_id": report_id}
        )

    @router.post("/log-analysis")
    async def log_analysis(body: LogAnalysisRequest) -> dict[str, Any]:
        if body.raw_entries is not None:
            try:
                await asyncio.to_thread(decode_raw_entries, body.raw_entries.model_dump())
            except ReportRejected as error:
                REPORTS_REJECTED.labels("validation").inc()
                raise ApiError(
                    400,
                    f"Invalid request data: {error}",
                    errors=[{"field": "raw_entries", "message": str(error)}],
                ) from error

        report_id = await accept("log_analysis", body)
        return envelope(True, "Log analysis processed successfully", {"report_id": report_id})

    return router


def database_reachable(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


def create_ingest_app(
    *,
    keys: ApiKeys,
    registry: JobRegistry,
    sink: ReportSink,
    retry_after: int = 5,
    extra_routers: tuple[Any, ...] = (),
    service: str = "ingest",
) -> FastAPI:
    """The ingest service; the embedded mode adds the query routes to the same app."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await sink.start()
        yield
        await sink.stop()

    app = FastAPI(title="backuphub ingest", lifespan=lifespan)
    install_common(app, service)
    app.include_router(ingest_router(keys, registry, sink, retry_after))
    for router in extra_routers:
        app.include_router(router)

    @app.get("/health", include_in_schema=False)
    async def health(request: Request) -> Any:
        checks = await sink.health()
        checks["database"] = await asyncio.to_thread(database_reachable, registry.engine)
        healthy = all(checks.values())
        body = envelope(healthy, "ok" if healthy else "degraded", checks)
        if not healthy:
            raise ApiError(503, f"degraded: {checks}")
        return body

    return app
