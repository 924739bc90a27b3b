"""The ingest API: validates agents' reports and hands them to a durable sink.

The handlers are thin: authentication, body validation (pydantic, answered 400), a job check,
then ``sink.submit``. A 200 means the report is durable; a 503 with ``Retry-After`` means it
was not and must be sent again.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from backuphub.http import ApiError, envelope, install_common, job_not_found
from backuphub.metrics import AUTH_FAILURES, DATABASE_ERRORS, REPORTS_ACCEPTED, REPORTS_REJECTED
from backuphub.security import ApiKeys
from ingest_api.auth_monitor import AlertEmitter, AuthFailureMonitor, LoggingEmitter
from ingest_api.publish import ReportSink, SinkUnavailable
from ingest_api.registry import JobNotFound, JobRegistry, NameTaken
from ingest_api.reports import ReportKind, report_event
from processors.rules import ReportRejected, decode_raw_entries, is_heartbeat
from schemas.api import LogAnalysisRequest, RegisterRequest, StatusRequest
from schemas.events import utc_now

logger = logging.getLogger(__name__)

BodyT = TypeVar("BodyT", bound=BaseModel)


def _api_key_check(keys: ApiKeys, alarms: "AuthAlarms") -> Callable[..., Any]:
    async def check(request: Request) -> None:
        if not keys.accepts(request.headers.get("x-api-key")):
            AUTH_FAILURES.labels("api_key").inc()
            REPORTS_REJECTED.labels("auth").inc()
            await alarms.failure(request.client.host if request.client else "unknown")
            raise ApiError(401, "Invalid or missing API key")

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


def json_body(model: type[BodyT]) -> Callable[[Request], Any]:
    """A dependency that reads the request body as ``model`` with pydantic's own JSON parser.

    FastAPI's body parameters decode JSON with the standard library and then validate the
    Python objects field by field; this does both in one pass in pydantic-core. A failure is
    the same ``RequestValidationError`` (located under ``body``), so the 400 is unchanged.
    """

    async def parse(request: Request) -> BodyT:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as error:
            errors = [
                {**item, "loc": ("body", *item.get("loc", ()))}
                for item in error.errors(include_url=False, include_context=False)
            ]
            raise RequestValidationError(errors) from None

    return parse


def _inline_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema with its ``$defs`` written in place (the bodies are not recursive)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref", "")
        if reference.startswith("#/$defs/"):
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return {**resolve(definitions[reference.rsplit("/", 1)[1]]), **resolve(rest)}
        return {key: resolve(value) for key, value in node.items()}

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI description of a body read by ``json_body`` (FastAPI cannot see it)."""
    schema = _inline_definitions(model.model_json_schema())
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _database_failure(error: SQLAlchemyError, action: str) -> ApiError:
    DATABASE_ERRORS.labels("ingest").inc()
    logger.error("database error", extra={"action": action, "error": type(error).__name__})
    return ApiError(500, "Database error: the change was rolled back, retry later")


def ingest_router(
    keys: ApiKeys,
    registry: JobRegistry,
    sink: ReportSink,
    retry_after: int,
    alarms: AuthAlarms | None = None,
) -> Any:
    """The three POST endpoints the agents call."""
    check = _api_key_check(keys, alarms or AuthAlarms())
    router = APIRouter(prefix="/api/v1/aomei", dependencies=[Depends(check)])

    async def accept(kind: ReportKind, body: StatusRequest | LogAnalysisRequest) -> str:
        try:
            known = await registry.exists(body.job_id)
        except SQLAlchemyError as error:
            raise _database_failure(error, "job lookup") from error
        if not known:
            REPORTS_REJECTED.labels("unknown_job").inc()
            raise job_not_found(body.job_id)

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
            raise job_not_found(error.job_id) from error
        except NameTaken as error:
            raise ApiError(
                400, str(error), errors=[{"field": "task_name", "message": str(error)}]
            ) from error
        except SQLAlchemyError as error:
            raise _database_failure(error, "register") from error

        logger.info("job registered", extra={"job_id": job.job_id, "job_created": job.created})
        data = {"job_id": job.job_id, "job_name": job.job_name, "backup_tool": "aomei"}
        return envelope(True, f"Job registered successfully with ID {job.job_id}", data)

    @router.get("/ping")
    async def ping() -> dict[str, Any]:
        """Lets an agent check its key and the address without sending a report."""
        return envelope(True, "API key accepted")

    @router.post("/status", openapi_extra=_request_body(StatusRequest))
    async def status(
        body: Annotated[StatusRequest, Depends(json_body(StatusRequest))],
    ) -> dict[str, Any]:
        if is_heartbeat(body.status):
            return await heartbeat(body)
        report_id = await accept("status", body)
        return envelope(
            True, f"Status updated successfully for job {body.job_id}", {"report_id": report_id}
        )

    async def heartbeat(body: StatusRequest) -> dict[str, Any]:
        """A run in progress: noted on the job (see ``record_heartbeat``), not an execution."""
        try:
            found = await registry.heartbeat(body.job_id, utc_now())
        except SQLAlchemyError as error:
            raise _database_failure(error, "heartbeat") from error
        if not found:
            REPORTS_REJECTED.labels("unknown_job").inc()
            raise job_not_found(body.job_id)
        REPORTS_ACCEPTED.labels("heartbeat").inc()
        logger.debug("heartbeat", extra={"job_id": body.job_id})
        return envelope(True, f"Heartbeat recorded for job {body.job_id}", {"running": True})

    @router.post("/log-analysis", openapi_extra=_request_body(LogAnalysisRequest))
    async def log_analysis(
        body: Annotated[LogAnalysisRequest, Depends(json_body(LogAnalysisRequest))],
    ) -> dict[str, Any]:
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


REPORT_PATHS = frozenset(
    {"/api/v1/aomei/register", "/api/v1/aomei/status", "/api/v1/aomei/log-analysis"}
)


class ReportAdmission:
    """Sheds load before it queues: at most ``limit`` agent POSTs are handled at once by this
    process, and one more is answered 503 with ``Retry-After`` straight away.

    Without it a flood (thousands of agents retrying together after an outage) is taken in
    whole, and every request waits behind all the others, far past the publish timeout that is
    meant to bound it. With it the admitted requests stay fast and the rest are told when to
    come back, which is what a 503 already means to the agents. Plain ASGI: a refusal costs
    no routing, no body read and no validation.
    """

    def __init__(self, app: ASGIApp, limit: int, retry_after: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        body = orjson.dumps(envelope(False, "Too many reports at once; send it again later"))
        self.refusal_body = body
        self.refusal_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in REPORT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            REPORTS_REJECTED.labels("overloaded").inc()
            await send(
                {"type": "http.response.start", "status": 503, "headers": self.refusal_headers}
            )
            await send({"type": "http.response.body", "body": self.refusal_body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


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
    POSTs handled at once (``ReportAdmission``).
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
    app.add_middleware(ReportAdmission, limit=max_in_flight, retry_after=retry_after)
    app.include_router(ingest_router(keys, registry, sink, retry_after, alarms))
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
