"""The simplest design a user might pick instead of backuphub: one FastAPI app that writes each
report straight to PostgreSQL inside the request.

Plain ``def`` endpoints (FastAPI runs them in its thread pool), SQLAlchemy's defaults for the
connection pool, one ``INSERT`` and one ``COMMIT`` per request. It validates with the same
request models as backuphub and writes the same ``backup_executions`` table (so the same
exactly-once count applies), but does no processing beyond the status and an id. A row is
committed before the 200, so end-to-end latency equals the POST latency.

``python -m benchmarks.baseline_app --port N`` (``DATABASE_URL`` and ``AOMEI_API_KEYS`` from
the environment). Loopback only.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from sqlalchemy import create_engine, insert
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from backuphub.database import migrate
from schemas.api import LogAnalysisRequest, RegisterRequest, StatusRequest
from schemas.tables import backup_executions, backup_jobs

NAMESPACE = uuid.UUID("5b0c3e0e-7d4a-4d38-9a55-3f1f5cbb6a10")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def create_app(database_url: str, api_keys: list[str]) -> FastAPI:
    engine = create_engine(database_url)  # SQLAlchemy's default pool: 5 + 10 overflow
    migrate(engine)
    app = FastAPI(title="baseline")

    def check(key: str | None) -> None:
        if key not in api_keys:
            raise HTTPException(401, "Invalid or missing API key")

    def store(job_id: int, report_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        status = str(fields.get("status") or "").lower()
        row = {
            "execution_uid": str(uuid.uuid5(NAMESPACE, f"{job_id}|{report_id}")),
            "report_id": report_id,
            "job_id": job_id,
            "execution_date": fields.get("end_time") or _now(),
            "execution_result": status if status in ("success", "failed") else "warning",
            "reported_status": fields.get("status"),
            "backup_size_bytes": fields.get("backup_size"),
            "duration_seconds": fields.get("duration"),
            "start_time": fields.get("start_time"),
            "end_time": fields.get("end_time"),
            "error_message": fields.get("error_message"),
            "details": fields.get("details"),
            "task_name": fields.get("task_name"),
            "received_at": _now(),
            "created_at": _now(),
        }
        statement = postgresql.insert(backup_executions).on_conflict_do_nothing(
            index_elements=["execution_uid"]
        )
        try:
            with engine.begin() as connection:
                connection.execute(statement, row)
        except IntegrityError as error:  # the job does not exist
            raise HTTPException(400, f"Job {job_id} not found") from error
        return {"success": True, "message": "ok", "data": {"report_id": report_id}}

    @app.post("/api/v1/aomei/register")
    def register(
        body: RegisterRequest, x_api_key: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        check(x_api_key)
        now = _now()
        with engine.begin() as connection:
            job_id = connection.execute(
                insert(backup_jobs)
                .values(
                    job_name=body.task_name,
                    job_type=body.job_type.value,
                    target_server=body.target_server or "",
                    target_path=body.target_path,
                    created_at=now,
                    updated_at=now,
                )
                .returning(backup_jobs.c.id)
            ).scalar_one()
        return {"success": True, "message": "registered", "data": {"job_id": job_id}}

    @app.post("/api/v1/aomei/status")
    def status(
        body: StatusRequest, x_api_key: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        check(x_api_key)
        return store(body.job_id, body.report_id or uuid.uuid4().hex, body.model_dump())

    @app.post("/api/v1/aomei/log-analysis")
    def log_analysis(
        body: LogAnalysisRequest, x_api_key: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        check(x_api_key)
        fields = body.parsed_data.model_dump() if body.parsed_data else {"status": "warning"}
        return store(body.job_id, body.report_id or uuid.uuid4().hex, fields)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"success": True, "message": "ok", "data": None}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the write-per-request baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    keys = [k.strip() for k in os.environ.get("AOMEI_API_KEYS", "").split(",") if k.strip()]
    app = create_app(os.environ["DATABASE_URL"], keys)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
