"""Every point of the agents' wire contract, against the embedded app."""

import contextlib
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from backuphub.security import issue_token
from ingest_api.publish import SinkUnavailable
from schemas.events import EventEnvelope
from schemas.tables import backup_executions
from tests.api.conftest import JWT_SECRET, OLD_KEY, build_client

STATUS = {
    "job_id": 1,
    "status": "success",
    "backup_size": 10737418240,
    "duration": 3600,
    "error_message": None,
    "task_name": "System Backup Daily",
    "start_time": "2025-11-02T01:00:00",
    "end_time": "2025-11-02T02:00:00",
    "details": "AOMEI Task: System Backup Daily",
    "copy_type": "primary",
    "storage_path": "D:\\Backups\\System\\2025-11-02",
}


def register(client: TestClient, headers: dict[str, str], **fields: Any) -> int:
    body = {
        "job_id": 0,
        "task_name": "System Backup Daily",
        "job_type": "system_image",
        "target_server": "SERVER01",
        "target_path": "D:\\Backups\\System",
        **fields,
    }
    response = client.post("/api/v1/aomei/register", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["data"]["job_id"])


def execution_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(backup_executions)).scalar_one()
        )


def test_register_creates_a_job_and_answers_its_id(client, agent_headers):
    response = client.post(
        "/api/v1/aomei/register",
        json={"job_id": 0, "task_name": "System Backup Daily", "job_type": "system_image"},
        headers=agent_headers,
    )

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["message"] == f"Job registered successfully with ID {body['data']['job_id']}"
    assert body["data"] == {"job_id": 1, "job_name": "System Backup Daily", "backup_tool": "aomei"}


def test_registering_the_same_task_twice_gives_the_same_id(client, agent_headers):
    first = register(client, agent_headers)
    second = register(client, agent_headers)
    other_server = register(client, agent_headers, target_server="SERVER02")

    assert first == second
    assert other_server != first


def test_a_task_renamed_in_aomei_keeps_its_job_through_its_guid(client, agent_headers):
    guid = "{3F2504E0-4F89-41D3-9A0C-0305E82C3301}"
    first = register(client, agent_headers, task_name="Documents", task_guid=guid)
    renamed = register(client, agent_headers, task_name="Documents (weekly)", task_guid=guid)

    assert renamed == first


def test_a_new_task_that_reuses_an_old_name_is_a_new_job(client, agent_headers):
    old = register(client, agent_headers, task_guid="3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    new = register(client, agent_headers, task_guid="6b29fc40-ca47-1067-b31d-00dd010662da")
    again = register(client, agent_headers, task_guid="3f2504e0-4f89-41d3-9a0c-0305e82c3301")

    assert new != old
    assert again == old


def test_a_job_registered_by_name_is_adopted_by_its_guid_later(client, agent_headers):
    by_name = register(client, agent_headers)
    with_guid = register(client, agent_headers, task_guid="6b29fc40-ca47-1067-b31d-00dd010662da")

    assert with_guid == by_name


def test_an_agent_can_check_its_key_without_sending(client, agent_headers):
    assert client.get("/api/v1/aomei/ping", headers=agent_headers).status_code == 200
    assert client.get("/api/v1/aomei/ping", headers={"X-API-Key": "no"}).status_code == 401


def test_register_with_a_positive_id_updates_that_job(client, agent_headers, viewer_headers):
    job_id = register(client, agent_headers)
    body = {"job_id": job_id, "task_name": "Renamed", "target_path": "E:\\Backups"}

    response = client.post("/api/v1/aomei/register", json=body, headers=agent_headers)

    assert response.status_code == 200
    detail = client.get(f"/api/v1/aomei/jobs/{job_id}", headers=viewer_headers).json()["data"]
    assert detail["job_name"] == "Renamed"
    assert detail["target_path"] == "E:\\Backups"


def test_register_of_an_unknown_job_id_is_a_400(client, agent_headers):
    body = {"job_id": 42, "task_name": "Ghost"}

    response = client.post("/api/v1/aomei/register", json=body, headers=agent_headers)

    assert response.status_code == 400
    assert response.json()["success"] is False
    assert response.json()["errors"][0]["field"] == "job_id"


@pytest.mark.parametrize("endpoint", ["register", "status", "log-analysis"])
@pytest.mark.parametrize("key", [None, "", "wrong-key"])
def test_posts_without_a_valid_api_key_are_401(client, endpoint, key):
    headers = {} if key is None else {"X-API-Key": key}

    response = client.post(f"/api/v1/aomei/{endpoint}", json={"job_id": 1}, headers=headers)

    assert response.status_code == 401
    assert response.json()["success"] is False


def test_every_configured_key_is_accepted_so_keys_rotate_without_downtime(client):
    response = client.post(
        "/api/v1/aomei/register",
        json={"job_id": 0, "task_name": "Rotated"},
        headers={"X-API-Key": OLD_KEY},
    )

    assert response.status_code == 200


def test_status_is_accepted_and_shown_by_the_detail_endpoint(client, agent_headers, viewer_headers):
    job_id = register(client, agent_headers)

    response = client.post("/api/v1/aomei/status", json=STATUS, headers=agent_headers)

    assert response.status_code == 200
    assert response.json()["success"] is True
    assert response.json()["message"] == f"Status updated successfully for job {job_id}"
    detail = client.get(f"/api/v1/aomei/jobs/{job_id}", headers=viewer_headers).json()["data"]
    assert detail["latest_execution"] == {
        "date": "2025-11-02T02:00:00",
        "result": "success",
        "size": 10737418240,
        "duration": 3600,
        "error": None,
        "flags": [],
    }
    assert detail["copies"] == [
        {
            "type": "primary",
            "media": "disk",
            "status": "success",
            "last_backup": "2025-11-02T02:00:00",
            "size": 10737418240,
            "path": "D:\\Backups\\System\\2025-11-02",
        }
    ]


@pytest.mark.parametrize(
    ("reported", "stored"),
    [
        ("success", "success"),
        ("FAILED", "failed"),
        ("Warning", "warning"),
        ("unknown", "warning"),
        ("UNKNOWN", "warning"),
        ("exploded", "warning"),
        ("", "warning"),
    ],
)
def test_status_mapping_ignores_case_and_turns_the_unrecognised_into_warning(
    client, agent_headers, viewer_headers, reported, stored
):
    job_id = register(client, agent_headers)

    client.post("/api/v1/aomei/status", json={**STATUS, "status": reported}, headers=agent_headers)

    detail = client.get(f"/api/v1/aomei/jobs/{job_id}", headers=viewer_headers).json()["data"]
    assert detail["latest_execution"]["result"] == stored


def test_the_same_report_posted_three_times_is_one_execution(client, agent_headers, engine):
    register(client, agent_headers)

    for _ in range(3):
        assert (
            client.post("/api/v1/aomei/status", json=STATUS, headers=agent_headers).status_code
            == 200
        )

    assert execution_count(engine) == 1


def test_an_agent_report_id_is_the_idempotency_key(client, agent_headers, engine):
    register(client, agent_headers)
    minimal = {"job_id": 1, "status": "success", "report_id": "run-2025-11-02"}

    for _ in range(2):
        client.post("/api/v1/aomei/status", json=minimal, headers=agent_headers)
    client.post(
        "/api/v1/aomei/status",
        json={**minimal, "report_id": "run-2025-11-03"},
        headers=agent_headers,
    )

    assert execution_count(engine) == 2


def test_duration_is_computed_from_start_and_end_when_missing(
    client, agent_headers, viewer_headers
):
    register(client, agent_headers)
    body = {key: value for key, value in STATUS.items() if key != "duration"}

    client.post("/api/v1/aomei/status", json=body, headers=agent_headers)

    detail = client.get("/api/v1/aomei/jobs/1", headers=viewer_headers).json()["data"]
    assert detail["latest_execution"]["duration"] == 3600


def test_a_report_whose_numbers_disagree_is_flagged(client, agent_headers, viewer_headers):
    register(client, agent_headers)

    client.post("/api/v1/aomei/status", json={**STATUS, "duration": 60}, headers=agent_headers)

    detail = client.get("/api/v1/aomei/jobs/1", headers=viewer_headers).json()["data"]
    assert detail["latest_execution"]["flags"] == ["duration_mismatch"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "success"}, "job_id"),
        ({"job_id": "abc", "status": "success"}, "job_id"),
        ({"job_id": 1}, "status"),
        ({"job_id": 1, "status": "success", "backup_size": -1}, "backup_size"),
        ({"job_id": 1, "status": "success", "duration": "long"}, "duration"),
        ({"job_id": 1, "status": "success", "start_time": "yesterday"}, "start_time"),
        ({"job_id": 1, "status": "success", "copy_type": "tertiary"}, "copy_type"),
        ({"job_id": 1, "status": "success", "report_id": "has spaces"}, "report_id"),
        ({"job_id": True, "status": "success"}, "job_id"),
        ({"job_id": 2**40, "status": "success"}, "job_id"),
        ({"job_id": 1, "status": "success", "backup_size": 2**63}, "backup_size"),
        ({"job_id": 1, "status": "success", "backup_size": 10**30}, "backup_size"),
        ({"job_id": 1, "status": "success", "duration": 2**31}, "duration"),
        ({"job_id": 1, "status": "ok\u0000"}, "status"),
    ],
)
def test_an_invalid_status_body_is_a_400_naming_the_field(client, agent_headers, body, field):
    register(client, agent_headers)

    response = client.post("/api/v1/aomei/status", json=body, headers=agent_headers)

    assert response.status_code == 400
    payload = response.json()
    assert payload["success"] is False
    assert field in payload["message"]
    assert field in [error["field"] for error in payload["errors"]]


def test_a_lone_surrogate_is_a_400(client, agent_headers):
    register(client, agent_headers)

    response = client.post(
        "/api/v1/aomei/status",
        content=b'{"job_id": 1, "status": "ok", "details": "\\ud800"}',
        headers={**agent_headers, "Content-Type": "application/json"},
    )

    # Strict JSON parsers refuse an unpaired surrogate escape, so the body as a whole is named.
    assert response.status_code == 400
    assert response.json()["success"] is False


def test_a_body_over_the_limit_is_a_413(client, agent_headers):
    body = b'{"job_id": 1, "status": "' + b"x" * (9 * 1024 * 1024) + b'"}'

    response = client.post(
        "/api/v1/aomei/status",
        content=body,
        headers={**agent_headers, "Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json()["success"] is False


def test_a_chunked_body_over_the_limit_is_a_413(client, agent_headers):
    def chunks():
        yield b'{"job_id": 1, "status": "'
        for _ in range(9):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = client.post("/api/v1/aomei/log-analysis", content=chunks(), headers=agent_headers)

    assert response.status_code == 413
    assert response.json()["success"] is False


def test_the_openapi_page_describes_the_report_routes(client):
    paths = client.get("/openapi.json").json()["paths"]

    for path in ("/api/v1/aomei/status", "/api/v1/aomei/log-analysis"):
        operation = paths[path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert "job_id" in schema["properties"]
        assert {"200", "400", "401", "503"} <= set(operation["responses"])
    assert paths["/api/v1/aomei/status"]["post"]["operationId"] == "status_api_v1_aomei_status_post"
    assert "post" in paths["/api/v1/aomei/register"]


def test_paging_beyond_any_page_is_a_400_not_a_500(client, viewer_headers):
    response = client.get(f"/api/v1/aomei/jobs?offset={10**20}", headers=viewer_headers)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "query.offset"


def test_the_status_filter_ignores_case(client, agent_headers, viewer_headers):
    register(client, agent_headers)
    client.post("/api/v1/aomei/status", json={**STATUS, "status": "failed"}, headers=agent_headers)

    body = client.get("/api/v1/aomei/jobs?status=FAILED", headers=viewer_headers).json()

    assert body["total"] == 1


def test_a_body_that_is_not_json_is_a_400(client, agent_headers):
    response = client.post(
        "/api/v1/aomei/status",
        content=b"{not json",
        headers={**agent_headers, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["success"] is False
    assert response.json()["errors"] == [{"field": "body", "message": "the body is not valid JSON"}]


def test_status_for_an_unknown_job_is_a_400(client, agent_headers):
    response = client.post(
        "/api/v1/aomei/status", json={**STATUS, "job_id": 999}, headers=agent_headers
    )

    assert response.status_code == 400
    assert response.json()["message"] == "Job 999 not found"
    assert response.json()["code"] == "job_not_found"


def test_log_analysis_with_parsed_data(client, agent_headers, viewer_headers):
    register(client, agent_headers)
    body = {
        "job_id": 1,
        "log_file_path": "C:\\ProgramData\\AomeiBR\\brlog.xml",
        "parsed_data": {
            "task_name": "System Backup Daily",
            "status": "failed",
            "start_time": "2025-11-02T01:00:00",
            "end_time": "2025-11-02T02:00:00",
            "backup_size": 5,
            "error_message": "destination full",
        },
    }

    response = client.post("/api/v1/aomei/log-analysis", json=body, headers=agent_headers)

    assert response.status_code == 200
    assert response.json()["message"] == "Log analysis processed successfully"
    latest = client.get("/api/v1/aomei/jobs/1", headers=viewer_headers).json()["data"][
        "latest_execution"
    ]
    assert latest["result"] == "failed"
    assert latest["error"] == "destination full"
    assert latest["duration"] == 3600


def test_log_analysis_needs_parsed_data_or_raw_entries(client, agent_headers):
    register(client, agent_headers)

    response = client.post("/api/v1/aomei/log-analysis", json={"job_id": 1}, headers=agent_headers)

    assert response.status_code == 400


def test_log_analysis_of_an_unknown_job_is_a_400(client, agent_headers):
    body = {"job_id": 7, "parsed_data": {"status": "success"}}

    response = client.post("/api/v1/aomei/log-analysis", json=body, headers=agent_headers)

    assert response.status_code == 400


def test_the_get_endpoints_need_a_valid_token(client):
    expired = issue_token(JWT_SECRET, subject="x", role="viewer", ttl_seconds=-10)
    forged = issue_token("another-secret-0123456789-abcdef", subject="x", role="viewer")

    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {forged}"},
    ):
        for path in ("/api/v1/aomei/jobs", "/api/v1/aomei/jobs/1"):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"


def test_the_job_list_has_the_contract_fields(client, agent_headers, viewer_headers):
    register(client, agent_headers)

    body = client.get("/api/v1/aomei/jobs", headers=viewer_headers).json()

    assert body["success"] is True
    assert body["total"] == 1
    job = body["data"][0]
    for field in (
        "id",
        "job_name",
        "job_type",
        "target_server",
        "target_path",
        "is_active",
        "schedule_type",
        "retention_days",
        "created_at",
        "updated_at",
    ):
        assert field in job
    assert "executions" not in job


def test_the_job_list_can_include_executions(client, agent_headers, viewer_headers):
    register(client, agent_headers)
    client.post("/api/v1/aomei/status", json=STATUS, headers=agent_headers)

    body = client.get("/api/v1/aomei/jobs?include_executions=true", headers=viewer_headers)

    executions = body.json()["data"][0]["executions"]
    assert [execution["execution_result"] for execution in executions] == ["success"]


def test_the_job_list_filters_and_pages(client, agent_headers, viewer_headers):
    for number in range(5):
        job_id = register(
            client,
            agent_headers,
            task_name=f"Job {number}",
            target_server="A" if number < 3 else "B",
        )
        status = "failed" if number % 2 else "success"
        client.post(
            "/api/v1/aomei/status",
            json={**STATUS, "job_id": job_id, "status": status},
            headers=agent_headers,
        )

    def ids(query: str) -> tuple[list[int], int]:
        body = client.get(f"/api/v1/aomei/jobs?{query}", headers=viewer_headers).json()
        return [job["id"] for job in body["data"]], body["total"]

    assert ids("server=A") == ([1, 2, 3], 3)
    assert ids("status=failed") == ([2, 4], 2)
    assert ids("limit=2&offset=2") == ([3, 4], 5)
    assert client.get("/api/v1/aomei/jobs?limit=0", headers=viewer_headers).status_code == 400
    assert client.get("/api/v1/aomei/jobs?status=bad", headers=viewer_headers).status_code == 400


def test_the_detail_of_an_unknown_job_is_a_400(client, viewer_headers):
    response = client.get("/api/v1/aomei/jobs/77", headers=viewer_headers)

    assert response.status_code == 400
    assert response.json()["success"] is False


def test_a_database_failure_is_a_500_and_nothing_is_half_written(
    client, agent_headers, engine, viewer_headers
):
    register(client, agent_headers)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TRIGGER copies_broken BEFORE INSERT ON backup_copies "
                "BEGIN SELECT RAISE(ABORT, 'disk failure'); END"
            )
        )

    response = client.post("/api/v1/aomei/status", json=STATUS, headers=agent_headers)

    assert response.status_code == 500
    assert response.json()["success"] is False
    assert execution_count(engine) == 0


class UnavailableSink:
    """A sink whose store is away, as Kafka is when the broker is down."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, event: EventEnvelope) -> None:
        raise SinkUnavailable("broker away")

    async def health(self) -> dict[str, bool]:
        return {"kafka": False}


def test_a_report_that_cannot_be_made_durable_is_a_503_with_retry_after(engine, agent_headers):
    with build_client(engine, UnavailableSink()) as client:
        register(client, agent_headers)

        response = client.post("/api/v1/aomei/status", json=STATUS, headers=agent_headers)
        health = client.get("/health")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["success"] is False
    assert health.status_code == 503


def test_metrics_are_exposed(client, agent_headers):
    register(client, agent_headers)
    client.post("/api/v1/aomei/status", json={"job_id": 1}, headers={"X-API-Key": "bad"})

    text_body = client.get("/metrics").text

    assert "backuphub_http_requests_total" in text_body
    assert 'code="401",endpoint="/api/v1/aomei/status"' in text_body
    assert "backuphub_auth_failures_total" in text_body


@pytest.mark.parametrize("endpoint", ["status", "log-analysis"])
def test_the_first_of_several_api_key_headers_is_the_one_checked(client, agent_headers, endpoint):
    # As the FastAPI routes did (Starlette's ``headers.get`` gives the first value).
    key = agent_headers["X-API-Key"]
    path = f"/api/v1/aomei/{endpoint}"

    good_first = client.post(
        path, json={"job_id": 1}, headers=[("X-API-Key", key), ("X-API-Key", "wrong-key")]
    )
    bad_first = client.post(
        path, json={"job_id": 1}, headers=[("X-API-Key", "wrong-key"), ("X-API-Key", key)]
    )

    assert good_first.status_code == 400  # past the key check: the body is incomplete
    assert bad_first.status_code == 401


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD", "DELETE"])
@pytest.mark.parametrize("endpoint", ["status", "log-analysis"])
def test_another_method_on_a_report_route_is_a_405_naming_post(
    client, agent_headers, method, endpoint
):
    response = client.request(method, f"/api/v1/aomei/{endpoint}", headers=agent_headers)

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("endpoint", ["status", "log-analysis"])
def test_a_report_route_with_a_trailing_slash_redirects_to_the_route(
    client, agent_headers, endpoint
):
    response = client.post(
        f"/api/v1/aomei/{endpoint}/",
        json={"job_id": 1, "status": "success"},
        headers=agent_headers,
        follow_redirects=False,
    )

    assert response.status_code == 307
    assert response.headers["location"].endswith(f"/api/v1/aomei/{endpoint}")


def test_a_report_whose_client_went_away_before_the_body_ended_is_not_stored(
    client, agent_headers, engine
):
    # The client announced more body than it sent (Content-Length larger than the bytes, or a
    # dropped connection) and the server sees http.disconnect: the request never completed,
    # so nothing may be stored and it is not a validation rejection of the agent's report.
    job_id = register(client, agent_headers)
    body = json.dumps({**STATUS, "job_id": job_id, "report_id": "cut-off"}).encode()
    messages = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/aomei/status",
        "raw_path": b"/api/v1/aomei/status",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"x-api-key", agent_headers["X-API-Key"].encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body) + 100).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }

    async def call() -> None:
        # The FastAPI version raised ClientDisconnect here: fine, nothing was stored.
        with contextlib.suppress(Exception):
            await client.app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(call)

    assert execution_count(engine) == 0
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert 200 not in statuses
