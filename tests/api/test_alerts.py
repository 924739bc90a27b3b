"""Alerts end to end in the embedded app (SQLite): decided with the run, stored, listed, acked.

Also: schedules at registration and through the admin endpoint, heartbeats, the missing-
backup check with a controlled clock, auth-failure bursts, and every produced event checked
against ``schemas/alert_event.schema.json``.
"""

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from backuphub.embedded import EmbeddedSink
from backuphub.security import ApiKeys, issue_token
from consumers.alert_checker import MissingBackupChecker
from consumers.alerts_api import alert_routers
from consumers.query_api import query_router
from ingest_api.app import AuthAlarms, create_ingest_app
from ingest_api.auth_monitor import AuthFailureMonitor, DatabaseAlertEmitter
from ingest_api.registry import JobRegistry
from schemas.events import utc_now
from schemas.tables import alert_outbox, alerts, backup_executions
from tests.api.conftest import API_KEY, JWT_SECRET

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "alert_event.schema.json").read_text())


@pytest.fixture
def sink(engine: Engine) -> EmbeddedSink:
    return EmbeddedSink(engine)


@pytest.fixture
def app_client(engine: Engine, sink: EmbeddedSink) -> Iterator[TestClient]:
    monitor = AuthFailureMonitor(threshold=5, window=timedelta(seconds=60))
    app = create_ingest_app(
        keys=ApiKeys([API_KEY]),
        registry=JobRegistry(engine),
        sink=sink,
        extra_routers=(query_router(engine, JWT_SECRET), *alert_routers(engine, JWT_SECRET)),
        alarms=AuthAlarms(monitor, DatabaseAlertEmitter(engine, sink.write_lock)),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def bearer(role: str, subject: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, subject=subject, role=role)}"}


AGENT = {"X-API-Key": API_KEY}


def register(client: TestClient, name: str, **fields: Any) -> int:
    answer = client.post(
        "/api/v1/aomei/register",
        json={"job_id": 0, "task_name": name, "target_server": "srv1", **fields},
        headers=AGENT,
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["data"]["job_id"])


def report(client: TestClient, job_id: int, status: str, end: datetime, **fields: Any) -> None:
    body = {"job_id": job_id, "status": status, "end_time": end.isoformat(), **fields}
    answer = client.post("/api/v1/aomei/status", json=body, headers=AGENT)
    assert answer.status_code == 200, answer.text


def outbox_events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(alert_outbox.c.payload).order_by(alert_outbox.c.id))
        return [json.loads(row[0]) for row in rows]


def test_failure_then_success_raises_once_and_resolves(app_client: TestClient, engine: Engine):
    job = register(app_client, "Nightly")
    start = datetime(2025, 6, 1, 2, 0)

    report(app_client, job, "failed", start, error_message="disk full")
    report(app_client, job, "failed", start + timedelta(days=1))
    report(app_client, job, "warning", start + timedelta(days=2))

    listed = app_client.get("/api/v1/alerts", params={"state": "open"}, headers=bearer("viewer"))
    assert listed.status_code == 200, listed.text
    [alert] = listed.json()["data"]
    assert alert["kind"] == "backup_failed" and alert["job_name"] == "Nightly"
    assert "disk full" in alert["message"]

    report(app_client, job, "success", start + timedelta(days=3))
    events = outbox_events(engine)
    assert [(e["event_type"], e["payload"]["kind"]) for e in events] == [
        ("alert.raised", "backup_failed"),
        ("alert.resolved", "backup_failed"),
    ]
    assert events[0]["payload"]["alert_id"] == events[1]["payload"]["alert_id"]
    assert events[0]["event_id"] != events[1]["event_id"]
    for event in events:
        jsonschema.validate(event, SCHEMA, format_checker=jsonschema.FormatChecker())

    resolved = app_client.get(
        "/api/v1/alerts", params={"state": "resolved"}, headers=bearer("viewer")
    )
    assert resolved.json()["total"] == 1


def test_a_replayed_report_decides_nothing_twice(app_client: TestClient, engine: Engine):
    job = register(app_client, "Replay")
    body = {"status": "failed", "report_id": "same-report-1"}
    report(app_client, job, end=datetime(2025, 6, 1), **body)
    report(app_client, job, end=datetime(2025, 6, 1), **body)

    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(alerts)).scalar_one() == 1
        assert connection.execute(select(func.count()).select_from(alert_outbox)).scalar_one() == 1


def test_list_filters_paging_and_acknowledge(app_client: TestClient):
    jobs = [register(app_client, f"Job {n}") for n in range(3)]
    for job in jobs:
        report(app_client, job, "failed", datetime(2025, 6, 1))

    page = app_client.get("/api/v1/alerts", params={"limit": 2}, headers=bearer("viewer")).json()
    assert page["total"] == 3 and len(page["data"]) == 2 and page["limit"] == 2

    only = app_client.get("/api/v1/alerts", params={"job_id": jobs[1]}, headers=bearer("viewer"))
    [alert] = only.json()["data"]

    acked = app_client.post(
        f"/api/v1/alerts/{alert['alert_id']}/acknowledge", headers=bearer("viewer", "bob")
    )
    assert acked.status_code == 200, acked.text
    assert acked.json()["data"]["state"] == "acknowledged"
    assert acked.json()["data"]["acknowledged_by"] == "bob"

    by_state = app_client.get(
        "/api/v1/alerts", params={"state": "acknowledged"}, headers=bearer("viewer")
    )
    assert [a["alert_id"] for a in by_state.json()["data"]] == [alert["alert_id"]]

    # Still unresolved: a failure does not open a second one; a success resolves it.
    report(app_client, jobs[1], "failed", datetime(2025, 6, 2))
    report(app_client, jobs[1], "success", datetime(2025, 6, 3))
    after = app_client.get("/api/v1/alerts", params={"job_id": jobs[1]}, headers=bearer("viewer"))
    assert [a["state"] for a in after.json()["data"]] == ["resolved"]

    assert app_client.get("/api/v1/alerts").status_code == 401
    assert (
        app_client.post("/api/v1/alerts/nope/acknowledge", headers=bearer("viewer")).status_code
        == 400
    )
    unknown = "/api/v1/alerts/00000000-0000-0000-0000-000000000000/acknowledge"
    assert app_client.post(unknown, headers=bearer("viewer")).status_code == 404
    bad_kind = app_client.get("/api/v1/alerts", params={"kind": "nope"}, headers=bearer("viewer"))
    assert bad_kind.status_code == 400


def test_schedule_at_registration_is_validated(app_client: TestClient):
    answer = app_client.post(
        "/api/v1/aomei/register",
        json={
            "job_id": 0,
            "task_name": "Bad",
            "schedule_cron": "61 * * * *",
            "schedule_timezone": "Mars/Base",
        },
        headers=AGENT,
    )
    assert answer.status_code == 400
    fields = {error["field"] for error in answer.json()["errors"]}
    assert fields == {"schedule_cron", "schedule_timezone"}
    assert "minute" in json.dumps(answer.json()["errors"])

    both = app_client.post(
        "/api/v1/aomei/register",
        json={
            "job_id": 0,
            "task_name": "Both",
            "schedule_type": "daily",
            "schedule_cron": "@daily",
        },
        headers=AGENT,
    )
    assert both.status_code == 400


def test_schedule_endpoint_is_admin_only(app_client: TestClient, engine: Engine):
    job = register(app_client, "Weekly", schedule_type="weekly", grace_seconds=600)
    body = {
        "schedule_cron": "30 2 * * *",
        "schedule_timezone": "Europe/Paris",
        "grace_seconds": 900,
    }

    path = f"/api/v1/aomei/jobs/{job}/schedule"
    assert app_client.put(path, json=body, headers=bearer("viewer")).status_code == 403
    assert app_client.put(path, json=body).status_code == 401

    answer = app_client.put(path, json=body, headers=bearer("admin"))
    assert answer.status_code == 200, answer.text
    schedule = answer.json()["data"]
    assert schedule["schedule_type"] == "cron"
    assert schedule["schedule_cron"] == "30 2 * * *"
    assert schedule["schedule_timezone"] == "Europe/Paris"
    assert schedule["max_duration_seconds"] is None

    missing = app_client.put(
        "/api/v1/aomei/jobs/99999/schedule", json=body, headers=bearer("admin")
    )
    assert missing.status_code == 400
    assert missing.json()["code"] == "job_not_found"
    bad = app_client.put(path, json={"schedule_timezone": "No/Where"}, headers=bearer("admin"))
    assert bad.status_code == 400


def test_a_running_report_is_a_heartbeat_not_an_execution(app_client: TestClient, engine: Engine):
    job = register(app_client, "Long", schedule_type="daily")
    answer = app_client.post(
        "/api/v1/aomei/status", json={"job_id": job, "status": "Running"}, headers=AGENT
    )
    assert answer.status_code == 200, answer.text

    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(backup_executions))
        assert count.scalar_one() == 0

    unknown = app_client.post(
        "/api/v1/aomei/status", json={"job_id": 4242, "status": "in_progress"}, headers=AGENT
    )
    assert unknown.status_code == 400


def test_missing_check_raises_once_across_restarts_and_a_run_resolves(
    app_client: TestClient, engine: Engine, sink: EmbeddedSink
):
    job = register(app_client, "Daily", schedule_type="daily", grace_seconds=3600)
    # Runs dated ahead of the real clock are refused, so the job is made older instead.
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE backup_jobs SET created_at = :then, schedule_updated_at = :then "
                "WHERE id = :job"
            ),
            {"then": utc_now() - timedelta(days=4), "job": job},
        )
    clock = [utc_now() - timedelta(days=1)]

    def checker() -> MissingBackupChecker:
        return MissingBackupChecker(engine, clock=lambda: clock[0], write_lock=sink.write_lock)

    first = checker().check_once()
    assert first is not None and [e.payload["kind"] for e in first.events] == ["backup_missing"]

    clock[0] += timedelta(days=1)
    assert checker().check_once().events == []  # type: ignore[union-attr]  # a "restart"

    report(app_client, job, "success", clock[0] - timedelta(hours=1))
    kinds = [(e["event_type"], e["payload"]["kind"]) for e in outbox_events(engine)]
    assert kinds == [("alert.raised", "backup_missing"), ("alert.resolved", "backup_missing")]
    for event in outbox_events(engine):
        jsonschema.validate(event, SCHEMA, format_checker=jsonschema.FormatChecker())

    assert checker().check_once().events == []  # type: ignore[union-attr]
    checker().refresh_gauges()


def test_concurrent_checks_on_sqlite_raise_one_alert(app_client: TestClient, engine: Engine, sink):
    register(app_client, "Hourly", schedule_type="hourly")
    now = utc_now() + timedelta(days=2)
    results: list[Any] = []

    def check() -> None:
        checker = MissingBackupChecker(engine, clock=lambda: now, write_lock=sink.write_lock)
        results.append(checker.check_once())

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sum(len(result.events) for result in results) == 1


def test_bad_api_keys_raise_one_burst_alert(app_client: TestClient, engine: Engine):
    for _ in range(12):
        answer = app_client.post(
            "/api/v1/aomei/status", json={"job_id": 1, "status": "ok"}, headers={"X-API-Key": "no"}
        )
        assert answer.status_code == 401

    [event] = outbox_events(engine)
    assert event["payload"]["kind"] == "auth_failure_burst"
    assert event["job_id"] == 0 and event["payload"]["job_id"] is None
    assert event["payload"]["source"] == "testclient"
    jsonschema.validate(event, SCHEMA, format_checker=jsonschema.FormatChecker())

    # A restart forgets the counts: the burst left open is resolved, not left forever.
    asyncio.run(DatabaseAlertEmitter(engine).start())
    [_, resolved] = outbox_events(engine)
    assert resolved["event_type"] == "alert.resolved"
    assert resolved["payload"]["alert_id"] == event["payload"]["alert_id"]
