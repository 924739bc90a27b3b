"""The whole pipeline on the real broker and PostgreSQL: agent reports in, jobs API out.

Every report goes ingest -> Kafka -> stream processor -> Kafka -> persister -> PostgreSQL, and
is read back through the JWT-protected GET endpoints or counted in the database itself.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from backuphub.security import issue_token
from schemas.tables import backup_executions
from tests.integration.running_services import (
    Agent,
    Reader,
    ServiceTrio,
    execution_count,
    rows_per_report,
    settle,
    wait_until,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "fixtures" / "aomei"
PIPELINE_DEADLINE = 60.0  # seconds a report may take from ingest to PostgreSQL


@pytest.fixture(scope="module")
def agent(trio: ServiceTrio) -> Iterator[Agent]:
    trio.wait_until_flowing()
    client = trio.agent()
    yield client
    client.close()


@pytest.fixture(scope="module")
def reader(trio: ServiceTrio) -> Iterator[Reader]:
    client = trio.reader()
    yield client
    client.close()


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


def iso(moment: datetime) -> str:
    return moment.isoformat()


def hours_ago(hours: float) -> datetime:
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(tzinfo=None, microsecond=0)


def job_once(
    reader: Reader, job_id: int, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET /jobs/{id} until ``check`` holds for its answer (bounded)."""
    last: dict[str, Any] = {}

    def holds() -> bool:
        last.clear()
        last.update(reader.job(job_id))
        return check(last)

    wait_until(holds, timeout=PIPELINE_DEADLINE, what=f"job {job_id} as expected")
    return last


def test_reports_reach_the_jobs_api(agent: Agent, reader: Reader, db: Engine) -> None:
    """register -> status -> log analysis -> GET /jobs and /jobs/{id} show job, run and copy."""
    server = unique("srv-pipeline")
    share = rf"\\nas01\backups\{server}"
    job_id = agent.register(
        "System Backup Daily",
        server,
        job_type="system_image",
        target_path=share,
        task_guid=str(uuid.uuid4()),
    )

    # A status report of last night's run, with its copy on a network share.
    start, end = hours_ago(5), hours_ago(4.5)
    status_report = {
        "job_id": job_id,
        "status": "Success",
        "backup_size": 123_456_789,
        "duration": 1800,
        "start_time": iso(start),
        "end_time": iso(end),
        "task_name": "System Backup Daily",
        "copy_type": "primary",
        "media_type": "network",
        "storage_path": share,
        "report_id": unique("status"),
    }
    status_id = agent.accepted("status", status_report)
    assert status_id == status_report["report_id"]

    detail = job_once(reader, job_id, lambda d: d["latest_execution"] is not None)
    assert detail["job_id"] == job_id
    assert detail["target_server"] == server
    assert detail["latest_execution"] == {
        "date": iso(end),
        "result": "success",
        "size": 123_456_789,
        "duration": 1800,
        "error": None,
        "flags": [],
    }
    assert detail["copies"] == [
        {
            "type": "primary",
            "media": "network",
            "status": "success",
            "last_backup": iso(end),
            "size": 123_456_789,
            "path": share,
        }
    ]

    # Then the agent's analysis of a later run's log (parsed_data form, no report id).
    start2, end2 = hours_ago(2), hours_ago(1.75)
    log_report = {
        "job_id": job_id,
        "log_file_path": r"C:\ProgramData\AOMEI Backupper\log\backup.log",
        "parsed_data": {
            "task_name": "System Backup Daily",
            "status": "Warning",
            "start_time": iso(start2),
            "end_time": iso(end2),
            "duration": 900,
            "backup_size": 2_000_000,
            "error_message": "1 file was skipped",
        },
    }
    log_id = agent.accepted("log-analysis", log_report)
    assert log_id.startswith("h:"), "a report without report_id is keyed by its content"

    detail = job_once(reader, job_id, lambda d: d["latest_execution"]["result"] == "warning")
    assert detail["latest_execution"] == {
        "date": iso(end2),
        "result": "warning",
        "size": 2_000_000,
        "duration": 900,
        "error": "1 file was skipped",
        "flags": [],
    }
    [copy] = detail["copies"]
    assert copy["type"] == "primary"
    assert copy["status"] == "warning"
    assert copy["last_backup"] == iso(end2)
    assert copy["size"] == 2_000_000
    assert copy["path"] == share, "a log analysis names no path: the known one is kept"

    listing = reader.jobs(server=server, include_executions="true")
    assert listing["total"] == 1
    [job] = listing["data"]
    assert job["id"] == job_id
    assert job["job_name"] == "System Backup Daily"
    assert job["last_result"] == "warning"
    assert [(e["report_id"], e["execution_result"]) for e in job["executions"]] == [
        (log_id, "warning"),
        (status_id, "success"),
    ]
    assert execution_count(db, job_id) == 2


def test_log_analysis_keeps_what_is_known_of_the_copy(
    agent: Agent, reader: Reader, db: Engine
) -> None:
    share = r"\\nas02\images"
    job_id = agent.register(unique("Image to NAS"), unique("srv-copy"))
    agent.accepted(
        "status",
        {
            "job_id": job_id,
            "status": "success",
            "end_time": iso(hours_ago(3)),
            "media_type": "network",
            "storage_path": share,
            "report_id": unique("copy-status"),
        },
    )
    wait_until(lambda: execution_count(db, job_id) == 1, timeout=PIPELINE_DEADLINE, what="run")
    later = iso(hours_ago(1))
    agent.accepted(
        "log-analysis", {"job_id": job_id, "parsed_data": {"status": "success", "end_time": later}}
    )
    wait_until(lambda: execution_count(db, job_id) == 2, timeout=PIPELINE_DEADLINE, what="log")

    [copy] = reader.job(job_id)["copies"]
    assert copy["last_backup"] == later
    assert (copy["media"], copy["path"]) == ("network", share)


def test_same_status_report_three_times_is_one_execution(agent: Agent, db: Engine) -> None:
    job_id = agent.register(unique("Nightly"), unique("srv-dup"))
    body = {
        "job_id": job_id,
        "status": "success",
        "start_time": iso(hours_ago(3)),
        "end_time": iso(hours_ago(2)),
        "backup_size": 42,
    }

    report_ids = {agent.accepted("status", body) for _ in range(3)}
    assert len(report_ids) == 1, "the same body is the same report"
    [report_id] = report_ids

    marker = settle(agent, db, job_id)
    assert rows_per_report(db, job_id) == {report_id: 1, marker: 1}


def test_registering_the_same_task_twice_gives_the_same_id(agent: Agent, db: Engine) -> None:
    server, name = unique("srv-reg"), unique("Documents to NAS")
    first = agent.register(name, server, job_type="file")
    again = agent.register(name, server, job_type="file")
    assert again == first

    guid = str(uuid.uuid4()).upper()
    by_guid = agent.register(unique("Renamed"), server, task_guid=f"{{{guid}}}")
    renamed = agent.register(unique("Renamed again"), server, task_guid=guid.lower())
    assert renamed == by_guid, "the task GUID identifies the task across renames"
    assert by_guid != first


# Job ids are PostgreSQL integers: a larger id names no job and must be a 400, not a 500.
BEYOND_INT4 = 2**40


@pytest.mark.parametrize("job_id", [2_000_000_000, BEYOND_INT4])
def test_report_for_an_unknown_job_is_400(agent: Agent, reader: Reader, job_id: int) -> None:
    answer = agent.status({"job_id": job_id, "status": "success"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["success"] is False
    assert [error["field"] for error in answer.json()["errors"]] == ["job_id"]

    answer = agent.post("log-analysis", {"job_id": job_id, "parsed_data": {"status": "success"}})
    assert answer.status_code == 400, answer.text
    assert reader.get(f"jobs/{job_id}").status_code == 400


def test_missing_or_wrong_credentials_are_401(trio: ServiceTrio, agent: Agent) -> None:
    job_id = agent.register(unique("Auth"), unique("srv-auth"))
    body = {"job_id": job_id, "status": "success"}
    url = f"{trio.ingest.url}/api/v1/aomei"

    with httpx.Client(timeout=30) as plain:
        assert plain.post(f"{url}/status", json=body).status_code == 401
        wrong = {"X-API-Key": "not-the-key"}
        assert plain.post(f"{url}/status", json=body, headers=wrong).status_code == 401
        assert (
            plain.post(f"{url}/register", json={"job_id": 0, "task_name": "x"}).status_code == 401
        )

        jobs = f"{trio.persister.url}/api/v1/aomei/jobs"
        assert plain.get(jobs).status_code == 401
        forged = issue_token("another-secret-of-32-characters!", subject="x", role="viewer")
        answer = plain.get(jobs, headers={"Authorization": f"Bearer {forged}"})
        assert answer.status_code == 401
        assert answer.headers.get("www-authenticate") == "Bearer"


def test_job_list_filters_and_paging(agent: Agent, reader: Reader, db: Engine) -> None:
    server, other_server = unique("srv-filter"), unique("srv-other")
    outcomes = {"A": "Success", "B": "Failed", "C": "success", "D": None}
    jobs = {label: agent.register(f"Task {label}", server) for label in outcomes}
    other = agent.register("Task B", other_server)

    for label, status in [*outcomes.items(), ("other", "failed")]:
        if status is None:
            continue
        job_id = other if label == "other" else jobs[label]
        agent.accepted(
            "status",
            {
                "job_id": job_id,
                "status": status,
                "end_time": iso(hours_ago(1)),
                "error_message": "disk full" if status.lower() == "failed" else None,
                "report_id": unique(f"filter-{label}"),
            },
        )
    reported = [jobs[label] for label, status in outcomes.items() if status] + [other]
    wait_until(
        lambda: all(execution_count(db, job_id) == 1 for job_id in reported),
        timeout=PIPELINE_DEADLINE,
        what="each reported job's execution stored",
    )

    def ids(**params: Any) -> tuple[list[int], int]:
        body = reader.jobs(**params)
        return [job["id"] for job in body["data"]], body["total"]

    a, b, c, d = (jobs[label] for label in "ABCD")
    assert ids(server=server) == ([a, b, c, d], 4)
    assert ids(server=server, status="success") == ([a, c], 2)
    assert ids(server=server, status="failed") == ([b], 1)
    assert ids(server=server, status="warning") == ([], 0)
    assert ids(server=other_server, status="failed") == ([other], 1)
    assert ids(server=unique("srv-nobody")) == ([], 0)

    assert ids(server=server, limit=3, offset=0) == ([a, b, c], 4)
    assert ids(server=server, limit=3, offset=3) == ([d], 4)
    assert ids(server=server, limit=3, offset=6) == ([], 4)

    listed = {job["id"]: job["last_result"] for job in reader.jobs(server=server)["data"]}
    assert listed == {a: "success", b: "failed", c: "success", d: None}
    assert reader.get("jobs", status="exploded").status_code in (400, 422)


def _log_elements(fixture: Path) -> str:
    """The ``<Log>`` elements of a brlog.xml, as an agent sends the new ones."""
    return "\n".join(re.findall(r"<Log\b.*?</Log>", fixture.read_text(encoding="utf-8"), re.S))


def test_raw_entries_become_one_execution_per_entry(agent: Agent, db: Engine) -> None:
    fixture = FIXTURES / "brlog_en_utf8.xml"
    expected = [
        json.loads(line)
        for line in fixture.with_suffix(".expected.jsonl").read_text().splitlines()
        if line.strip()
    ]
    job_id = agent.register(unique("AOMEI history"), unique("srv-brlog"))
    body = {
        "job_id": job_id,
        "log_file_path": r"C:\Program Files (x86)\AOMEI Backupper\brlog.xml",
        "raw_entries": {"format": "xml", "xml": _log_elements(fixture)},
        "report_id": unique("brlog"),
    }
    agent.accepted("log-analysis", body)

    wait_until(
        lambda: execution_count(db, job_id) >= len(expected),
        timeout=PIPELINE_DEADLINE,
        what=f"{len(expected)} executions from the fixture's entries",
    )
    with db.connect() as connection:
        rows = connection.execute(
            select(backup_executions)
            .where(backup_executions.c.job_id == job_id)
            .order_by(backup_executions.c.execution_date)
        ).all()
    assert [
        (row.execution_date.isoformat(), row.execution_result, row.task_name) for row in rows
    ] == [
        (entry["time"].removesuffix("Z"), entry["status"], entry["task_name"]) for entry in expected
    ]
    assert {row.source_system for row in rows} == {"aomei_brlog"}
    for row, entry in zip(rows, expected, strict=True):
        if entry["status"] == "failed":
            assert row.error_message == entry["detail"]

    # The same entries again (an agent that lost its place) are the same executions.
    agent.accepted("log-analysis", {**body, "report_id": unique("brlog-again")})
    marker = settle(agent, db, job_id)
    assert rows_per_report(db, job_id) == {body["report_id"]: len(expected), marker: 1}
