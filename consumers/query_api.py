"""The two GET endpoints, behind JWT bearer authentication."""

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from pydantic import BeforeValidator
from sqlalchemy import Engine

from backuphub.http import ApiError, database_errors, envelope, job_not_found
from backuphub.metrics import AUTH_FAILURES
from backuphub.security import TokenRejected, verify_token
from consumers.queries import job_detail, list_jobs
from schemas.api import MAX_JOB_ID, MAX_OFFSET, lower_text

logger = logging.getLogger(__name__)

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_check(secret: str) -> Callable[..., dict[str, Any]]:
    """A dependency that accepts a valid bearer token and returns its claims."""

    def check(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            AUTH_FAILURES.labels("jwt").inc()
            raise ApiError(401, "Missing bearer token", headers=BEARER_CHALLENGE)
        try:
            return verify_token(secret, token.strip())
        except TokenRejected as error:
            AUTH_FAILURES.labels("jwt").inc()
            raise ApiError(401, f"Invalid token: {error}", headers=BEARER_CHALLENGE) from error

    return check


def query_router(engine: Engine, jwt_secret: str) -> APIRouter:
    router = APIRouter(prefix="/api/v1/aomei", dependencies=[Depends(bearer_check(jwt_secret))])

    def read(action: str, work: Callable[[Any], Any]) -> Any:
        with database_errors("query", action), engine.connect() as connection:
            return work(connection)

    @router.get("/jobs")
    async def jobs(
        active_only: bool = True,
        include_executions: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        status: Annotated[
            Literal["success", "failed", "warning"] | None, BeforeValidator(lower_text)
        ] = None,
        server: Annotated[str | None, Query(max_length=255, pattern=r"^[^\x00]*$")] = None,
    ) -> dict[str, Any]:
        page, total = await asyncio.to_thread(
            read,
            "list jobs",
            lambda connection: list_jobs(
                connection,
                active_only=active_only,
                include_executions=include_executions,
                limit=limit,
                offset=offset,
                status=status,
                server=server,
            ),
        )
        return envelope(True, f"{total} job(s)", page, total=total, limit=limit, offset=offset)

    @router.get("/jobs/{job_id}")
    async def job(job_id: Annotated[int, Path(ge=1, le=MAX_JOB_ID)]) -> dict[str, Any]:
        detail = await asyncio.to_thread(
            read, "job detail", lambda connection: job_detail(connection, job_id)
        )
        if detail is None:
            raise job_not_found(job_id)
        return envelope(True, "ok", detail)

    return router
