"""What every HTTP service of the project shares: the response envelope, error answers,
request metrics and the ``/metrics`` endpoint.
"""

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backuphub.metrics import DATABASE_ERRORS, REPORTS_REJECTED, REQUESTS

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 200, in the envelope the agents understand."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers
        self.errors = errors
        self.code = code


def job_not_found(job_id: int, status_code: int = 400) -> ApiError:
    """The answer for a job id that names no job; ``code`` lets an agent re-register."""
    return ApiError(
        status_code,
        f"Job {job_id} not found",
        errors=[{"field": "job_id", "message": f"no job with id {job_id}"}],
        code="job_not_found",
    )


def database_failure(
    error: SQLAlchemyError,
    service: str,
    action: str,
    message: str = "Database error, retry later",
) -> ApiError:
    """The 500 the API documents for a database failure, counted and logged by its action."""
    DATABASE_ERRORS.labels(service).inc()
    logger.error("database error", extra={"action": action, "error": type(error).__name__})
    return ApiError(500, message)


@contextlib.contextmanager
def database_errors(service: str, action: str) -> Iterator[None]:
    """Turn a database failure inside the block into ``database_failure``'s 500; the
    transaction, if any, has been rolled back by then."""
    try:
        yield
    except SQLAlchemyError as error:
        raise database_failure(error, service, action) from error


def envelope(success: bool, message: str, data: Any = None, **extra: Any) -> dict[str, Any]:
    return {"success": success, "message": message, "data": data, **extra}


def field_errors(items: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Each failing field of pydantic's error list as a dotted path with pydantic's reason,
    without the input value."""
    errors = []
    for item in items:
        if item.get("type") == "json_invalid":
            # The location of a JSON syntax error is a character offset, not a field.
            errors.append({"field": "body", "message": "the body is not valid JSON"})
            continue
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        errors.append({"field": ".".join(location) or "body", "message": item.get("msg", "")})
    return errors


def error_body(error: ApiError) -> dict[str, Any]:
    """The envelope of an ``ApiError`` answer."""
    body = envelope(False, error.message)
    if error.code is not None:
        body["code"] = error.code
    if error.errors is not None:
        body["errors"] = error.errors
    return body


def invalid_request(items: Iterable[Mapping[str, Any]]) -> ApiError:
    """The 400 for a body that failed validation, naming every failing field."""
    errors = field_errors(items)
    REPORTS_REJECTED.labels("validation").inc()
    fields = ", ".join(sorted({item["field"] for item in errors}))
    return ApiError(400, f"Invalid request data: {fields}", errors=errors)


async def _on_api_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error_body(error), status_code=error.status_code, headers=error.headers)


async def _on_validation_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    answer = invalid_request(error.errors())
    return JSONResponse(error_body(answer), status_code=answer.status_code)


async def _on_http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    body = envelope(False, str(error.detail))
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _on_unexpected(request: Request, error: Exception) -> Response:
    logger.exception("unhandled error", extra={"path": request.url.path})
    return JSONResponse(envelope(False, "Internal server error"), status_code=500)


class RequestCounter:
    """Counts answers by route template and status code.

    Plain ASGI rather than an ``@app.middleware`` function: that form wraps every request in
    extra tasks and streams, which costs more than the count itself on the hot path.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        status = {"code": 500}

        async def remember_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            REQUESTS.labels(self.service, endpoint, str(status["code"])).inc()


# The largest accepted request body: a raw history upload (2 MB of XML, or its base64) plus
# the rest of the report. Larger bodies are refused before they are read into memory.
MAX_BODY_BYTES = 8 * 1024 * 1024


def body_too_large(limit: int) -> bytes:
    """The body of the 413 for a request body over ``limit`` bytes."""
    return json.dumps(envelope(False, f"Request body over {limit} bytes")).encode()


class BodyLimit:
    """Answers 413 to a body over ``MAX_BODY_BYTES``, by its Content-Length or, when it is
    sent in chunks, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send) -> None:
        body = body_too_large(self.limit)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)


class _BodyTooLarge(Exception):
    pass


def install_common(app: FastAPI, service: str) -> None:
    """Error answers in the envelope, request counting, and ``/metrics``."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)

    app.add_middleware(BodyLimit)
    app.add_middleware(RequestCounter, service=service)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)


def metrics_text() -> bytes:
    """This process's metrics; with ``PROMETHEUS_MULTIPROC_DIR`` set (``backuphub ingest
    --workers N``), those of every process that shares the folder, summed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
