"""The ingest API: validates agents' reports and hands them to a durable sink.

The report POSTs are served by ``ingest_api.gateway`` in front of this FastAPI app and handled
by ``ingest_api.intake``; registration, the key check (``/ping``), health and metrics are
FastAPI routes. A 200 means the report is durable; a 503 with ``Retry-After`` means it was not
and must be sent again.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from backuphub.http import ApiError, envelope, install_common, job_not_found
from backuphub.security import ApiKeys
from ingest_api.auth_monitor import AlertEmitter, AuthFailureMonitor, LoggingEmitter
from ingest_api.gateway import PREFIX, ReportGateway, describe_report_routes, require_api_key
from ingest_api.intake import ReportIntake, database_failure
from ingest_api.publish import ReportSink
from ingest_api.registry import JobNotFound, JobRegistry, NameTaken
from schemas.api import RegisterRequest

logger = logging.getLogger(__name__)


def _api_key_check(keys: ApiKeys, alarms: "AuthAlarms") -> Callable[..., Any]:
    async def check(request: Request) -> None:
        source = request.client.host if request.client else "unknown"
        await require_api_key(keys, alarms, request.headers.get("x-api-key"), source)

    return check


class AuthAlarms:
    """The auth-failure-burst monitor and where its alerts go, with a sweep that resolves them.

    Emitting never delays or fails the 401: a broken emitter is logged and the request goes on.
    """

    def __init__(
        self,
        monitor: AuthFailureMonitor | None = None,
        emitter: AlertEmitter | None = None,
        sweep_seconds: float = 5.0,
    ) -> None:
        self.monitor = monitor or AuthFailureMonitor()
        self.emitter: AlertEmitter = emitter or LoggingEmitter()
        self.sweep_seconds = sweep_seconds
        self._sweeper: asyncio.Task[None] | None = None

    async def failure(self, source: str) -> None:
        decisions = self.monitor.failure(source)
        if decisions:
            await self._emit(decisions)

    async def _emit(self, decisions: list[Any]) -> None:
        try:
            await self.emitter.emit(decisions)
        except Exception:
            logger.exception("auth failure alert not emitted")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            decisions = self.monitor.sweep()
            if decisions:
                await self._emit(decisions)

    async def start(self) -> None:
        await self.emitter.start()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.emitter.stop()


def agent_router(keys: ApiKeys, registry: JobRegistry, alarms: AuthAlarms) -> APIRouter:
    """The agents' routes other than reports: registration and the key check."""
    check = _api_key_check(keys, alarms)
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(check)])

    @router.post("/register")
    async def register(body: RegisterRequest) -> dict[str, Any]:
        try:
            job = await registry.register(body)
        except JobNotFound as error:
            raise job_not_found(error.job_id) from error
        except NameTaken as error:
            raise ApiError(
                400, str(error), errors=[{"field": "task_name", "message": str(error)}]
            ) from error
        except SQLAlchemyError as error:
            raise database_failure(error, "register") from error

        logger.info("job registered", extra={"job_id": job.job_id, "job_created": job.created})
        data = {"job_id": job.job_id, "job_name": job.job_name, "backup_tool": "aomei"}
        return envelope(True, f"Job registered successfully with ID {job.job_id}", data)

    @router.get("/ping")
    async def ping() -> dict[str, Any]:
        """Lets an agent check its key and the address without sending a report."""
        return envelope(True, "API key accepted")

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
    alarms: AuthAlarms | None = None,
    background: tuple[Callable[[], Any], ...] = (),
    max_in_flight: int = 256,
) -> FastAPI:
    """The ingest service; the embedded mode adds the query routes to the same app.

    ``background`` holds coroutine functions run for the app's lifetime (the embedded mode's
    missing-backup check); they are cancelled at shutdown. ``max_in_flight`` bounds the agent
    POSTs handled at once (``ReportGateway``).
    """
    alarms = alarms or AuthAlarms()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await sink.start()
        await alarms.start()
        tasks = [asyncio.create_task(work()) for work in background]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await alarms.stop()
        await sink.stop()

    app = FastAPI(title="backuphub ingest", lifespan=lifespan)
    install_common(app, service)
    app.add_middleware(
        ReportGateway,
        keys=keys,
        intake=ReportIntake(registry, sink, retry_after),
        alarms=alarms,
        limit=max_in_flight,
        retry_after=retry_after,
        service=service,
    )
    app.include_router(agent_router(keys, registry, alarms))
    for router in extra_routers:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = describe_report_routes(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

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
