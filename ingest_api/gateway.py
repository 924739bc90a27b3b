"""The agents' report POSTs as a plain ASGI layer in front of the FastAPI app.

Every agent posts at the top of the hour, so these two routes carry nearly all the traffic.
Through FastAPI's routing, dependency solving and middleware stack a report cost about twice
the CPU of the work itself (measured with py-spy under the benchmark's load). Here a report
takes one path with the same steps in the same order:

1. admission: at most ``limit`` agent POSTs at once; one more is answered 503 with
   ``Retry-After`` before its body is read (a flood of retrying agents then meets fast
   refusals instead of a queue that outlasts the publish timeout);
2. the body limit (413), by Content-Length and while reading;
3. the API key (401, counted by the auth-failure monitor);
4. the body, parsed and validated in one pass by pydantic (400 naming each failing field);
5. ``ReportIntake``, which returns the 200's envelope or raises the ``ApiError`` to answer.

Around them it answers as FastAPI's routing did: another method is a 405 naming POST, the path
with a trailing slash is a 307 to the path without, and a request whose client went away before
its body ended is dropped unanswered and unprocessed. Everything else (registration, reads,
health, metrics, the OpenAPI page) goes on to FastAPI, whose OpenAPI description also lists
these routes (``describe_report_routes``).
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.datastructures import URL
from starlette.types import ASGIApp, Receive, Scope, Send

from backuphub.http import (
    MAX_BODY_BYTES,
    ApiError,
    body_too_large,
    envelope,
    error_body,
    invalid_request,
)
from backuphub.metrics import AUTH_FAILURES, REPORTS_REJECTED, REQUESTS
from backuphub.security import ApiKeys
from ingest_api.intake import ReportIntake
from schemas.api import LogAnalysisRequest, StatusRequest

logger = logging.getLogger(__name__)

PREFIX = "/api/v1/aomei"
STATUS_PATH = f"{PREFIX}/status"
LOG_ANALYSIS_PATH = f"{PREFIX}/log-analysis"
REGISTER_PATH = f"{PREFIX}/register"

Handler = Callable[[Any], Awaitable[dict[str, Any]]]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]

JSON = (b"content-type", b"application/json")


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    """The connection closed before the body was complete: there is no report to handle."""


def _first_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a header (as Starlette's ``headers.get`` gives it)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def require_api_key(keys: ApiKeys, alarms: Any, presented: str | None, source: str) -> None:
    """Raise the 401 unless ``presented`` is an accepted key; a refusal is counted and told to
    the auth-failure monitor (``alarms.failure``) under the client's address ``source``."""
    if keys.accepts(presented):
        return

    AUTH_FAILURES.labels("api_key").inc()
    REPORTS_REJECTED.labels("auth").inc()
    await alarms.failure(source)
    raise ApiError(401, "Invalid or missing API key")


class ReportGateway:
    """Serves the report POSTs itself; passes every other request to ``app``.

    ``alarms`` is the ``AuthAlarms`` of the app (``failure(source)`` is awaited on a bad key).
    Registration is admitted here too (it is an agent POST) but handled by ``app``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        intake: ReportIntake,
        alarms: Any,
        limit: int,
        retry_after: int,
        service: str = "ingest",
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.keys = keys
        self.alarms = alarms
        self.limit = limit
        self.service = service
        self.max_body = max_body
        self.in_flight = 0
        self.routes: dict[str, tuple[type[BaseModel], Handler]] = {
            STATUS_PATH: (StatusRequest, intake.status),
            LOG_ANALYSIS_PATH: (LogAnalysisRequest, intake.log_analysis),
        }
        self.slashed = {f"{path}/": path for path in self.routes}
        refusal = orjson.dumps(envelope(False, "Too many reports at once; send it again later"))
        self.refusal: Answer = (503, refusal, [(b"retry-after", str(retry_after).encode())])
        not_allowed = orjson.dumps(envelope(False, "Method Not Allowed"))
        self.not_allowed: Answer = (405, not_allowed, [(b"allow", b"POST")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if path in self.routes and scope["method"] != "POST":
            await self._send(send, path, self.not_allowed)
            return
        if path in self.slashed:
            location = str(URL(scope=scope).replace(path=self.slashed[path]))
            await self._send(send, path, (307, b"", [(b"location", location.encode())]))
            return
        if scope["method"] != "POST" or (path not in self.routes and path != REGISTER_PATH):
            await self.app(scope, receive, send)
            return

        if self.in_flight >= self.limit:
            REPORTS_REJECTED.labels("overloaded").inc()
            await self._send(send, path, self.refusal)
            return

        self.in_flight += 1
        try:
            if path == REGISTER_PATH:
                await self.app(scope, receive, send)
            else:
                await self._send(send, path, await self._answer(scope, receive))
        except _ClientGone:
            logger.debug("client went away before its body ended", extra={"path": path})
        finally:
            self.in_flight -= 1

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        model, handler = self.routes[scope["path"]]
        try:
            declared = _first_header(scope, b"content-length") or b""
            if declared.isdigit() and int(declared) > self.max_body:
                raise _BodyTooLarge

            await self._check_key(_first_header(scope, b"x-api-key"), scope)
            raw = await self._read_body(receive)
            try:
                body = model.model_validate_json(raw)
            except ValidationError as error:
                raise invalid_request(error.errors(include_url=False)) from None

            data = await handler(body)
        except _BodyTooLarge:
            return 413, body_too_large(self.max_body), [(b"connection", b"close")]
        except ApiError as error:
            extra = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
            return error.status_code, orjson.dumps(error_body(error)), extra
        except _ClientGone:
            raise
        except Exception:
            logger.exception("unhandled error", extra={"path": scope["path"]})
            return 500, orjson.dumps(envelope(False, "Internal server error")), []

        return 200, orjson.dumps(data), []

    async def _check_key(self, presented: bytes | None, scope: Scope) -> None:
        key = presented.decode("latin-1") if presented is not None else None
        client = scope.get("client")
        await require_api_key(self.keys, self.alarms, key, client[0] if client else "unknown")

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _send(self, send: Send, path: str, answer: Answer) -> None:
        status, body, extra = answer
        headers = [JSON, (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        REQUESTS.labels(self.service, path, str(status)).inc()


def describe_report_routes(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the gateway's routes to FastAPI's OpenAPI ``schema`` (FastAPI cannot see them)."""
    paths = schema.setdefault("paths", {})
    for path, model, summary in (
        (STATUS_PATH, StatusRequest, "Report a backup run's status"),
        (LOG_ANALYSIS_PATH, LogAnalysisRequest, "Report runs read from AOMEI's history"),
    ):
        paths[path] = {"post": _operation(path, model, summary)}
    return schema


def _operation(path: str, model: type[BaseModel], summary: str) -> dict[str, Any]:
    answers = {
        "200": "accepted: the report is durable",
        "400": "invalid body (each failing field named) or unknown job (code job_not_found)",
        "401": "missing or wrong X-API-Key",
        "413": f"body over {MAX_BODY_BYTES} bytes",
        "500": "database error, nothing kept",
        "503": "not stored right now; send it again after Retry-After seconds",
    }
    # The operation ids FastAPI gave these routes when it served them: generated clients that
    # name their calls by it keep their names.
    operation_id = path.removeprefix("/").replace("/", "_").replace("-", "_") + "_post"
    name = path.rsplit("/", 1)[1].replace("-", "_")
    return {
        "summary": summary,
        "operationId": f"{name}_{operation_id}",
        "parameters": [
            {"name": "X-API-Key", "in": "header", "required": True, "schema": {"type": "string"}}
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline_definitions(model)}},
        },
        "responses": {code: {"description": text} for code, text in answers.items()},
    }


def _inline_definitions(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` written in place (the bodies are not
    recursive), so the operation stands alone in the OpenAPI document."""
    schema = model.model_json_schema()
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
