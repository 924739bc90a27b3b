"""Tests of the AOMEI agent protocol against an in-process ingest API on 127.0.0.1."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import shutil
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from processors.aomei import agent
from processors.aomei.agent import (
    EXIT_AUTH,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REJECTED,
    AgentConfig,
    AgentRunResult,
    backoff_delay,
    entries_to_xml,
    report_id_for,
    retry_after_seconds,
    run_once,
)
from processors.aomei.brlog import parse_brlog, parse_brlog_text
from processors.rules import ReportRejected, decode_raw_entries
from schemas.api import LogAnalysisRequest, RegisterRequest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "aomei"
API_KEY = "k3y-for-tests-only-7f2a9c"
SERVER = "BACKUP-PC01"
TASK_A = "3F2504E0-4F89-41D3-9A0C-0305E82C3301"
TASK_B = "6B29FC40-CA47-1067-B31D-00DD010662DA"
DAY = 86_400
EPOCH = 1_761_958_800

REGISTER = "/api/v1/aomei/register"
LOG_ANALYSIS = "/api/v1/aomei/log-analysis"
PING = "/api/v1/aomei/ping"


# --- a stand-in for the ingest API -------------------------------------------------------


class FakeIngest:
    """The ingest API's behaviour, small: the real request schemas and entry decoding,
    jobs found by (server, GUID) then (server, name), one execution per (job, task, time).

    ``script`` makes the next requests to a path answer with a given status instead.
    ``legacy`` makes it a server from before ``/ping`` and the ``job_not_found`` code.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[int, dict[str, Any]] = {}
        self.next_job_id = 100
        self.executions: dict[tuple[int, str, str], str] = {}
        self.accepted_reports: list[tuple[int, str]] = []
        self.calls: list[tuple[str, str, Any]] = []
        self.scripted: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = defaultdict(
            list
        )
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0
        self.legacy = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def start(self) -> FakeIngest:
        """Listen on 127.0.0.1 (the same port again after a stop)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return None

            def do_GET(self) -> None:
                with fake.lock:
                    fake.calls.append(("GET", self.path, None))
                    status, document = fake.answer_get(self.path, self.headers.get("X-API-Key"))
                self._send(status, document, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw else None
                with fake.lock:
                    fake.calls.append(("POST", self.path, body))
                    status, document, headers = fake.answer(
                        self.path, self.headers.get("X-API-Key"), body
                    )
                self._send(status, document, headers)

            def _send(self, status: int, document: Any, headers: dict[str, str]) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.server = self.thread = None

    def script(
        self,
        path: str,
        status: int,
        headers: dict[str, str] | None = None,
        document: dict[str, Any] | None = None,
    ) -> None:
        if document is None:
            message = {400: "Invalid request data: scripted", 401: "Invalid or missing API key"}
            document = {"success": False, "message": message.get(status, f"scripted {status}")}
            if status == 400:
                document["errors"] = [{"field": "raw_entries", "message": "scripted"}]
        self.scripted[path].append((status, document, headers or {}))

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [body for method, p, body in self.calls if method == "POST" and p == path]

    def answer_get(self, path: str, api_key: str | None) -> tuple[int, dict[str, Any]]:
        if path == "/health":
            return 200, {"success": True, "message": "ok"}
        if path == PING and not self.legacy:
            if api_key != API_KEY:
                return 401, {"success": False, "message": "Invalid or missing API key"}
            return 200, {"success": True, "message": "API key accepted", "data": None}
        return 404, {"success": False, "message": "Not Found"}

    def answer(
        self, path: str, api_key: str | None, body: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if api_key != API_KEY:
            return 401, {"success": False, "message": "Invalid or missing API key"}, {}
        if self.scripted[path]:
            return self.scripted[path].pop(0)
        try:
            if path == REGISTER:
                return 200, self._register(RegisterRequest.model_validate(body)), {}
            if path == LOG_ANALYSIS:
                return self._log_analysis(LogAnalysisRequest.model_validate(body))
        except ValidationError as error:
            return 400, {"success": False, "message": f"Invalid request data: {error}"}, {}
        return 404, {"success": False, "message": "Not Found"}, {}

    def _register(self, request: RegisterRequest) -> dict[str, Any]:
        server = request.target_server or ""
        found = None
        for job_id, job in self.jobs.items():
            if job["server"] == server and request.task_guid and job["guid"] == request.task_guid:
                found = job_id
                break
        if found is None:
            for job_id, job in self.jobs.items():
                if job["server"] == server and job["name"] == request.task_name:
                    found = job_id
        if found is None:
            found = self.next_job_id
            self.next_job_id += 1
            self.jobs[found] = {"server": server, "guid": request.task_guid, "name": ""}
        self.jobs[found]["name"] = request.task_name
        data = {"job_id": found, "job_name": request.task_name, "backup_tool": "aomei"}
        return {"success": True, "message": f"Job registered with ID {found}", "data": data}

    def _log_analysis(
        self, request: LogAnalysisRequest
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if request.job_id not in self.jobs:
            errors = [{"field": "job_id", "message": f"no job with id {request.job_id}"}]
            document = {
                "success": False,
                "message": f"Job {request.job_id} not found",
                "errors": errors,
            }
            if not self.legacy:
                document["code"] = "job_not_found"
            return 400, document, {}
        assert request.raw_entries is not None
        try:
            entries = decode_raw_entries(request.raw_entries.model_dump())
        except ReportRejected as error:
            return 400, {"success": False, "message": str(error)}, {}

        for entry in entries:
            self.executions.setdefault((request.job_id, entry.task_id, entry.time), entry.status)
        self.accepted_reports.append((request.job_id, str(request.report_id)))
        data = {"report_id": request.report_id}
        return 200, {"success": True, "message": "Log analysis processed", "data": data}, {}


@pytest.fixture
def fake() -> Iterator[FakeIngest]:
    server = FakeIngest().start()
    yield server
    server.stop()


# --- helpers -----------------------------------------------------------------------------


def log_xml(task: str, epoch: int, name: str, code: int = 0, detail: str = "Done.") -> str:
    """One ``<Log>`` element as AOMEI writes it (CRLF, indented)."""
    result = "Success" if code == 0 else "Failed"
    return (
        f'  <Log ID="{{{task}}}">\r\n'
        f"    <Time>{epoch}</Time>\r\n"
        f"    <Task>{name}</Task>\r\n"
        f"    <Operation>System Backup</Operation>\r\n"
        f"    <Result>{result}</Result>\r\n"
        f"    <ResultCode>{code}</ResultCode>\r\n"
        f"    <Detail>{detail}</Detail>\r\n"
        f"  </Log>\r\n"
    )


def write_brlog(path: Path, *logs: str, encoding: str = "utf-8") -> Path:
    text = '<?xml version="1.0" encoding="utf-8"?>\r\n<BRLog>\r\n' + "".join(logs) + "</BRLog>\r\n"
    path.write_bytes(text.encode(encoding))
    return path


def make_config(tmp_path: Path, url: str, brlog: Path, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "api_url": url,
        "api_key": API_KEY,
        "brlog_path": brlog,
        "state_dir": tmp_path / "state",
        "server_name": SERVER,
        "timeout_seconds": 5.0,
        "max_attempts": 3,
        "backoff_base_seconds": 0.001,
        "backoff_max_seconds": 0.01,
        "max_run_seconds": 30.0,
    }
    values.update(overrides)
    return AgentConfig(**values)


def run(config: AgentConfig, sleeps: list[float] | None = None) -> AgentRunResult:
    record = sleeps if sleeps is not None else []
    return run_once(config, sleep=record.append, rng=random.Random(7))


def state_of(config: AgentConfig) -> dict[str, Any]:
    return json.loads((config.state_dir / agent.STATE_FILE_NAME).read_text(encoding="utf-8"))


def pending_files(config: AgentConfig) -> list[str]:
    return sorted(p.name for p in (config.spool_root / "pending").glob("*.json"))


def epochs_in(body: dict[str, Any]) -> list[int]:
    return [entry.epoch for entry in parse_brlog_text(body["raw_entries"]["xml"]).entries]


def free_port() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


# --- protocol --------------------------------------------------------------------------


def test_first_run_registers_every_task_and_sends_all_entries(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    config = make_config(tmp_path, fake.url, Path(brlog))

    result = run(config)

    assert result.exit_code == EXIT_OK, result.messages
    registers = fake.posts(REGISTER)
    assert [body["task_guid"] for body in registers] == [TASK_A.lower(), TASK_B.lower()]
    assert all(body["job_id"] == 0 and body["target_server"] == SERVER for body in registers)
    assert registers[1]["task_name"] == "Documents to NAS (weekly)"  # the newest name
    assert len(fake.posts(LOG_ANALYSIS)) == 2
    assert len(fake.executions) == 4
    state = state_of(config)
    assert state["server_name"] == SERVER
    assert state["tasks"][TASK_A.lower()] == {
        "job_id": 100,
        "task_name": "System Backup Daily",
        "last_epoch": 1762045200,
    }
    assert state["tasks"][TASK_B.lower()]["last_epoch"] == 1762048800
    assert pending_files(config) == []


def test_appended_entries_only_the_new_ones_are_sent(fake: FakeIngest, tmp_path: Path) -> None:
    first = [log_xml(TASK_A, EPOCH, "Daily"), log_xml(TASK_A, EPOCH + DAY, "Daily")]
    brlog = write_brlog(tmp_path / "brlog.xml", *first)
    config = make_config(tmp_path, fake.url, brlog)
    assert run(config).exit_code == EXIT_OK

    write_brlog(brlog, *first, log_xml(TASK_A, EPOCH + 2 * DAY, "Daily", code=4103))
    fake.calls.clear()
    result = run(config)

    assert result.exit_code == EXIT_OK
    assert fake.posts(REGISTER) == []
    [body] = fake.posts(LOG_ANALYSIS)
    assert epochs_in(body) == [EPOCH + 2 * DAY]
    assert fake.executions[(100, TASK_A.lower(), "2025-11-03T01:00:00Z")] == "failed"


def test_epochs_compare_as_numbers_not_text(fake: FakeIngest, tmp_path: Path) -> None:
    """999999999 sorts after 1000000000 as text; as a number it is older and not new."""
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, 1_000_000_000, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    assert run(config).exit_code == EXIT_OK

    write_brlog(
        brlog,
        log_xml(TASK_A, 999_999_999, "Daily"),
        log_xml(TASK_A, 1_000_000_000, "Daily"),
        log_xml(TASK_A, 1_700_000_000, "Daily"),
    )
    fake.calls.clear()
    assert run(config).exit_code == EXIT_OK

    [body] = fake.posts(LOG_ANALYSIS)
    assert epochs_in(body) == [1_700_000_000]


def test_api_down_keeps_reports_in_order_then_delivers_each_once(
    fake: FakeIngest, tmp_path: Path
) -> None:
    logs = [log_xml(TASK_A, EPOCH, "Daily"), log_xml(TASK_A, EPOCH + DAY, "Daily")]
    brlog = write_brlog(tmp_path / "brlog.xml", *logs)
    config = make_config(tmp_path, fake.url, brlog)
    assert run(config).exit_code == EXIT_OK
    fake.stop()

    logs.append(log_xml(TASK_A, EPOCH + 2 * DAY, "Daily"))
    write_brlog(brlog, *logs)
    down = run(config)
    assert down.exit_code == EXIT_PENDING
    assert state_of(config)["tasks"][TASK_A.lower()]["last_epoch"] == EPOCH + DAY

    logs.append(log_xml(TASK_A, EPOCH + 3 * DAY, "Daily"))
    write_brlog(brlog, *logs)
    assert run(config).exit_code == EXIT_PENDING
    names = pending_files(config)
    assert [name[:8] for name in names] == ["00000001", "00000002"]
    spooled = [
        json.loads((config.spool_root / "pending" / name).read_text(encoding="utf-8"))
        for name in names
    ]
    assert [(s["first_epoch"], s["last_epoch"]) for s in spooled] == [
        (EPOCH + 2 * DAY, EPOCH + 2 * DAY),
        (EPOCH + 3 * DAY, EPOCH + 3 * DAY),
    ]
    assert state_of(config)["tasks"][TASK_A.lower()]["last_epoch"] == EPOCH + DAY

    fake.start()
    fake.calls.clear()
    result = run(config)

    assert result.exit_code == EXIT_OK
    assert [epochs_in(body) for body in fake.posts(LOG_ANALYSIS)] == [
        [EPOCH + 2 * DAY],
        [EPOCH + 3 * DAY],
    ]
    assert result.delivered == [s["report_id"] for s in spooled]
    assert len(fake.executions) == 4
    assert pending_files(config) == []
    assert state_of(config)["tasks"][TASK_A.lower()]["last_epoch"] == EPOCH + 3 * DAY


def test_unregistered_task_waits_for_the_api_with_its_entries(tmp_path: Path) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    fake = FakeIngest()
    fake.port = free_port()
    config = make_config(tmp_path, fake.url, brlog)

    down = run(config)

    assert down.exit_code == EXIT_PENDING
    assert down.tasks_waiting == [TASK_A.lower()]
    assert pending_files(config) == []
    assert not (config.state_dir / agent.STATE_FILE_NAME).exists()

    fake.start()
    try:
        up = run(config)
    finally:
        fake.stop()
    assert up.exit_code == EXIT_OK
    assert len(fake.executions) == 1


def test_503_retry_after_is_honoured_within_the_run(fake: FakeIngest, tmp_path: Path) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    fake.script(LOG_ANALYSIS, 503, {"Retry-After": "7"})
    sleeps: list[float] = []

    result = run(config, sleeps)

    assert result.exit_code == EXIT_OK
    assert len(sleeps) == 1
    assert 7 <= sleeps[0] <= 7 + config.backoff_base_seconds
    assert len(fake.posts(LOG_ANALYSIS)) == 2
    assert len(fake.executions) == 1


def test_retry_after_beyond_the_run_budget_leaves_the_report_spooled(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog, max_run_seconds=5)
    fake.script(LOG_ANALYSIS, 503, {"Retry-After": "600"})
    sleeps: list[float] = []

    result = run(config, sleeps)

    assert result.exit_code == EXIT_PENDING
    assert sleeps == []
    assert len(pending_files(config)) == 1
    assert state_of(config)["tasks"][TASK_A.lower()]["last_epoch"] is None


def test_500_is_retried_with_bounded_jittered_back_off(fake: FakeIngest, tmp_path: Path) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(
        tmp_path, fake.url, brlog, max_attempts=4, backoff_base_seconds=1, backoff_max_seconds=3
    )
    for _ in range(3):
        fake.script(LOG_ANALYSIS, 500)
    sleeps: list[float] = []

    result = run(config, sleeps)

    assert result.exit_code == EXIT_OK
    assert len(sleeps) == 3
    assert all(0 <= delay <= cap for delay, cap in zip(sleeps, [1, 2, 3], strict=True))


def test_attempts_are_bounded_when_the_server_keeps_failing(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog, max_attempts=3)
    for _ in range(10):
        fake.script(LOG_ANALYSIS, 500)

    result = run(config)

    assert result.exit_code == EXIT_PENDING
    assert len(fake.posts(LOG_ANALYSIS)) == 3
    assert len(pending_files(config)) == 1


def test_400_moves_the_report_to_rejected_and_the_run_goes_on(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    config = make_config(tmp_path, fake.url, Path(brlog))
    fake.script(LOG_ANALYSIS, 400)

    result = run(config)

    assert result.exit_code == EXIT_REJECTED
    assert len(result.rejected) == 1 and len(result.delivered) == 1
    rejected = config.spool_root / "rejected"
    [report_file] = [p for p in rejected.glob("*.json") if not p.name.endswith(".answer.json")]
    answer = json.loads(report_file.with_name(report_file.stem + ".answer.json").read_text())
    assert answer["status_code"] == 400
    assert answer["answer"]["message"] == "Invalid request data: scripted"
    assert json.loads(report_file.read_text())["report_id"] == result.rejected[0]
    assert pending_files(config) == []
    assert state_of(config)["tasks"][TASK_A.lower()]["last_epoch"] == 1762045200

    fake.calls.clear()
    again = run(config)
    assert again.exit_code == EXIT_OK
    assert fake.posts(LOG_ANALYSIS) == []


def test_refused_registration_is_recorded_and_retried_next_run(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    fake.script(REGISTER, 400)

    refused = run(config)

    assert refused.exit_code == EXIT_REJECTED
    record = config.spool_root / "rejected" / f"register-{TASK_A.lower()}.json"
    assert json.loads(record.read_text())["request"]["task_guid"] == TASK_A.lower()
    assert pending_files(config) == []

    assert run(config).exit_code == EXIT_OK
    assert len(fake.executions) == 1


def test_401_stops_at_once_with_exit_3_and_keeps_the_spool(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    assert run(config).exit_code == EXIT_OK

    write_brlog(brlog, log_xml(TASK_A, EPOCH, "Daily"), log_xml(TASK_A, EPOCH + DAY, "Daily"))
    fake.calls.clear()
    wrong_key = make_config(tmp_path, fake.url, brlog, api_key="not-the-key")
    result = run(wrong_key)

    assert result.exit_code == EXIT_AUTH
    assert len(fake.posts(LOG_ANALYSIS)) == 1  # no retry of a 401
    assert len(pending_files(config)) == 1

    bad_register = run(make_config(tmp_path / "other", fake.url, brlog, api_key="nope"))
    assert bad_register.exit_code == EXIT_AUTH


def test_lost_state_gives_the_same_report_ids_and_jobs(fake: FakeIngest, tmp_path: Path) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    config = make_config(tmp_path, fake.url, Path(brlog))
    first = run(config)
    jobs = dict(first.registered)

    (config.state_dir / agent.STATE_FILE_NAME).unlink()
    second = run(config)

    assert second.exit_code == EXIT_OK
    assert second.delivered == first.delivered
    assert second.registered == jobs
    assert len(fake.jobs) == 2
    assert len(fake.executions) == 4


def test_damaged_state_file_is_set_aside_and_delivery_starts_over(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    config.state_dir.mkdir(parents=True)
    (config.state_dir / agent.STATE_FILE_NAME).write_text("{not json", encoding="utf-8")

    result = run(config)

    assert result.exit_code == EXIT_OK
    assert list(config.state_dir.glob(f"{agent.STATE_FILE_NAME}.damaged-*"))
    assert state_of(config)["tasks"][TASK_A.lower()]["last_epoch"] == EPOCH


def test_renamed_task_keeps_its_job(fake: FakeIngest, tmp_path: Path) -> None:
    old = log_xml(TASK_B, EPOCH, "Documents to NAS")
    brlog = write_brlog(tmp_path / "brlog.xml", old)
    config = make_config(tmp_path, fake.url, brlog)
    first = run(config)

    write_brlog(brlog, old, log_xml(TASK_B, EPOCH + DAY, "Documents to NAS (weekly)"))
    fake.calls.clear()
    second = run(config)

    assert second.exit_code == EXIT_OK
    [register] = fake.posts(REGISTER)
    assert register["task_name"] == "Documents to NAS (weekly)"
    assert second.registered == first.registered
    assert fake.jobs[first.registered[TASK_B.lower()]]["name"] == "Documents to NAS (weekly)"
    assert state_of(config)["tasks"][TASK_B.lower()]["task_name"] == "Documents to NAS (weekly)"


def test_renamed_task_is_delivered_under_its_job_even_if_the_new_name_is_refused(
    fake: FakeIngest, tmp_path: Path
) -> None:
    old = log_xml(TASK_B, EPOCH, "Documents")
    brlog = write_brlog(tmp_path / "brlog.xml", old)
    config = make_config(tmp_path, fake.url, brlog)
    job = run(config).registered[TASK_B.lower()]

    write_brlog(brlog, old, log_xml(TASK_B, EPOCH + DAY, "Photos"))
    fake.script(REGISTER, 400)  # e.g. another job of this server is already called Photos
    result = run(config)

    assert result.exit_code == EXIT_REJECTED
    assert result.rejected == [f"register-{TASK_B.lower()}"]
    assert fake.posts(LOG_ANALYSIS)[-1]["job_id"] == job
    assert len(fake.executions) == 2
    assert state_of(config)["tasks"][TASK_B.lower()]["task_name"] == "Documents"


@pytest.mark.parametrize("legacy", [False, True], ids=["code", "older-server-message"])
def test_job_unknown_to_the_server_is_registered_again(
    fake: FakeIngest, tmp_path: Path, legacy: bool
) -> None:
    """Told by ``code: job_not_found``; a server older than the code, by its message."""
    fake.legacy = legacy
    logs = [log_xml(TASK_A, EPOCH, "Daily")]
    brlog = write_brlog(tmp_path / "brlog.xml", *logs)
    config = make_config(tmp_path, fake.url, brlog)
    old_job = run(config).registered[TASK_A.lower()]
    fake.jobs.clear()  # the server's database was rebuilt

    write_brlog(brlog, *logs, log_xml(TASK_A, EPOCH + DAY, "Daily"))
    result = run(config)

    assert result.exit_code == EXIT_OK
    new_job = result.registered[TASK_A.lower()]
    assert new_job != old_job
    assert state_of(config)["tasks"][TASK_A.lower()]["job_id"] == new_job
    assert [body["job_id"] for body in fake.posts(LOG_ANALYSIS)][-2:] == [old_job, new_job]


def test_validation_error_on_job_id_is_a_rejection_not_a_lost_job(
    fake: FakeIngest, tmp_path: Path
) -> None:
    """A 400 naming the field job_id without the code is refused data: no registration."""
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    invalid = {
        "success": False,
        "message": "Invalid request data: job_id",
        "errors": [{"field": "job_id", "message": "Input should be greater than 0"}],
    }
    fake.script(LOG_ANALYSIS, 400, document=invalid)

    result = run(config)

    assert result.exit_code == EXIT_REJECTED
    assert len(fake.posts(REGISTER)) == 1  # the first registration only
    assert len(fake.posts(LOG_ANALYSIS)) == 1
    assert len(result.rejected) == 1 and result.delivered == []
    assert fake.executions == {}


@pytest.mark.parametrize(
    ("status", "document", "expected"),
    [
        (400, {"message": "Job 7 not found", "code": "job_not_found"}, True),
        (400, {"message": "Der Auftrag 7 fehlt", "code": "job_not_found"}, True),
        (400, {"message": "Job 7 not found"}, True),  # a server older than the code
        (400, {"message": "Job 7 not found", "code": "other"}, False),
        (400, {"message": "Invalid request data: job_id", "errors": [{"field": "job_id"}]}, False),
        (422, {"message": "Job 7 not found", "code": "job_not_found"}, False),
    ],
)
def test_job_not_found_is_decided_by_the_code_then_the_message(
    status: int, document: dict[str, Any], expected: bool
) -> None:
    answer = agent.ApiAnswer(status, {"success": False, **document}, json.dumps(document))

    assert answer.says_job_not_found() is expected


def test_cut_off_last_entry_waits_for_the_next_run(fake: FakeIngest, tmp_path: Path) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_appending.xml", tmp_path / "brlog.xml")
    config = make_config(tmp_path, fake.url, Path(brlog))
    first = run(config)
    assert first.exit_code == EXIT_OK
    assert len(fake.executions) == 1

    write_brlog(
        Path(brlog),
        log_xml(TASK_A, 1762218000, "System Backup Daily"),
        log_xml(TASK_B, 1762221600, "Documents to NAS"),
    )
    assert run(config).exit_code == EXIT_OK
    assert len(fake.executions) == 2


def test_large_history_is_split_into_ordered_reports(fake: FakeIngest, tmp_path: Path) -> None:
    logs = [log_xml(TASK_A, EPOCH + n * DAY, "Daily") for n in range(5)]
    brlog = write_brlog(tmp_path / "brlog.xml", *logs)
    config = make_config(tmp_path, fake.url, brlog, max_entries_per_report=2)

    result = run(config)

    assert result.exit_code == EXIT_OK
    assert [len(epochs_in(body)) for body in fake.posts(LOG_ANALYSIS)] == [2, 2, 1]
    assert len(fake.executions) == 5


def test_utf16_copy_sends_the_same_bodies_as_utf8(fake: FakeIngest, tmp_path: Path) -> None:
    logs = [log_xml(TASK_A, EPOCH, "Sauvegarde\u00a0système\u200e", detail="L'opération")]
    utf8 = write_brlog(tmp_path / "utf8.xml", *logs)
    utf16 = tmp_path / "utf16.xml"
    utf16.write_bytes(b"\xff\xfe" + utf8.read_text(encoding="utf-8").encode("utf-16-le"))

    plans = [
        agent.preview_requests(make_config(tmp_path, fake.url, path, log_file_path="C:\\x"))[0]
        for path in (utf8, utf16)
    ]

    assert [r.to_json() for r in plans[0]] == [r.to_json() for r in plans[1]]
    assert plans[0][0].body["task_name"] == "Sauvegarde système"


def test_another_run_holding_the_lock_sends_nothing(fake: FakeIngest, tmp_path: Path) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    config.state_dir.mkdir(parents=True)
    (config.state_dir / agent.LOCK_FILE_NAME).write_text("{}", encoding="utf-8")

    result = run(config)

    assert result.exit_code == EXIT_PENDING
    assert fake.calls == []


def test_stale_lock_is_taken_over(fake: FakeIngest, tmp_path: Path) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    config.state_dir.mkdir(parents=True)
    lock = config.state_dir / agent.LOCK_FILE_NAME
    lock.write_text("{}", encoding="utf-8")
    old = lock.stat().st_mtime - agent.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))

    assert run(config).exit_code == EXIT_OK
    assert not lock.exists()


def test_missing_history_file_is_exit_2_but_the_spool_still_goes_out(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))
    config = make_config(tmp_path, fake.url, brlog)
    fake.script(LOG_ANALYSIS, 503)
    fake.script(LOG_ANALYSIS, 503)
    fake.script(LOG_ANALYSIS, 503)
    assert run(config).exit_code == EXIT_PENDING

    brlog.unlink()
    result = run(config)

    assert result.exit_code == EXIT_CONFIG
    assert len(result.delivered) == 1
    assert len(fake.executions) == 1


def test_file_that_is_not_a_brlog_is_a_file_error(fake: FakeIngest, tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("just some text\n", encoding="utf-8")

    result = run(make_config(tmp_path, fake.url, other))

    assert result.exit_code == EXIT_CONFIG
    assert fake.posts(REGISTER) == []


def test_bad_configuration_is_exit_2(tmp_path: Path) -> None:
    brlog = write_brlog(tmp_path / "brlog.xml", log_xml(TASK_A, EPOCH, "Daily"))

    assert run(make_config(tmp_path, "ftp://x/api/v1", brlog)).exit_code == EXIT_CONFIG
    assert run(make_config(tmp_path, "http://127.0.0.1:9/api/v1", brlog, api_key="")).exit_code == (
        EXIT_CONFIG
    )


# --- wire format -------------------------------------------------------------------------


def test_report_id_is_a_pinned_uuid5_that_the_powershell_agent_reproduces() -> None:
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "urn:backuphub:aomei-agent:report")
    assert namespace == agent.REPORT_ID_NAMESPACE
    value = report_id_for(SERVER, TASK_A.lower(), 1761958800, 1762045200)
    assert value == "9eae193a-eb9e-5197-bce7-b22615f9155f"  # also in common_functions.ps1
    assert value == str(
        uuid.uuid5(agent.REPORT_ID_NAMESPACE, f"{SERVER}|{TASK_A.lower()}|1761958800|1762045200")
    )
    assert report_id_for(SERVER, TASK_A.lower(), 1761958800, 1762045201) != value


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.xml")))
def test_entries_written_back_as_xml_parse_to_the_same_entries(name: str) -> None:
    entries = parse_brlog((FIXTURES / name).read_bytes()).entries

    assert parse_brlog_text(entries_to_xml(entries)).entries == entries


def test_awkward_text_survives_the_round_trip() -> None:
    source = (
        f'<Log ID="{{{TASK_A}}}"><Time>0001761958800</Time><Task> A &amp; B\u200f </Task>'
        "<Operation>x &lt;y&gt; z</Operation><Result>\u00a0ok\u00a0</Result>"
        "<ResultCode>+0012</ResultCode>"
        '<Detail code="7">line one&#13;\nline <![CDATA[two & ]]>three</Detail></Log>'
        f'<Log ID="{TASK_B.lower()}"><Time>5</Time></Log>'
    )
    entries = parse_brlog_text(source).entries

    assert len(entries) == 2
    assert parse_brlog_text(entries_to_xml(entries)).entries == entries


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("5") == 5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480) == 10


def test_backoff_delay_has_full_jitter_under_the_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 1.0, 10.0, rng) for attempt in range(8) for _ in range(20)]

    assert all(0 <= delay <= 10 for delay in delays)
    assert min(delays) < 0.5 < max(delays)


# --- command line and secrets ------------------------------------------------------------


def agent_args(brlog: Path, url: str, state: Path, **overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "brlog": str(brlog),
        "api_url": url,
        "api_key_env": "AOMEI_API_KEY",
        "state_dir": str(state),
        "spool_dir": None,
        "server_name": SERVER,
        "log_file_path": None,
        "job_type": "system_image",
        "max_attempts": 2,
        "timeout": 5.0,
        "test_mode": False,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def test_test_mode_prints_the_bodies_and_sends_nothing(fake: FakeIngest, tmp_path: Path) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    out, err = io.StringIO(), io.StringIO()
    args = agent_args(Path(brlog), fake.url, tmp_path / "state", test_mode=True)

    code = agent.run_command(args, environ={"AOMEI_API_KEY": API_KEY}, out=out, err=err)

    assert code == EXIT_OK, err.getvalue()
    assert fake.calls == [("GET", "/health", None), ("GET", PING, None)]
    assert "key accepted" in err.getvalue()
    assert not (tmp_path / "state").exists()
    printed = json.loads(out.getvalue())
    assert [item["path"] for item in printed] == [
        "/aomei/register",
        "/aomei/log-analysis",
        "/aomei/register",
        "/aomei/log-analysis",
    ]
    assert API_KEY not in out.getvalue() + err.getvalue()


def test_test_mode_with_a_wrong_key_exits_3_and_writes_nothing(
    fake: FakeIngest, tmp_path: Path
) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    out, err = io.StringIO(), io.StringIO()
    args = agent_args(Path(brlog), fake.url, tmp_path / "state", test_mode=True)
    wrong = "wrong-" + API_KEY

    code = agent.run_command(args, environ={"AOMEI_API_KEY": wrong}, out=out, err=err)

    assert code == EXIT_AUTH
    assert "API key refused (401)" in err.getvalue()
    assert len(json.loads(out.getvalue())) == 4  # the plan is still shown
    assert [method for method, _path, _body in fake.calls] == ["GET", "GET"]
    assert not (tmp_path / "state").exists()
    assert wrong not in out.getvalue() + err.getvalue()


def test_test_mode_against_a_server_older_than_ping_only_notes_it(
    fake: FakeIngest, tmp_path: Path
) -> None:
    fake.legacy = True
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    out, err = io.StringIO(), io.StringIO()
    args = agent_args(Path(brlog), fake.url, tmp_path / "state", test_mode=True)

    code = agent.run_command(args, environ={"AOMEI_API_KEY": API_KEY}, out=out, err=err)

    assert code == EXIT_OK, err.getvalue()
    assert fake.calls == [("GET", "/health", None), ("GET", PING, None)]
    assert "404, a server older than /ping" in err.getvalue()
    assert "key not checked" in err.getvalue()


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, EXIT_OK), (401, EXIT_AUTH), (403, EXIT_AUTH), (404, EXIT_OK), (503, EXIT_PENDING)],
)
def test_test_mode_judges_the_key_check_as_a_run_would(status: int, expected: int) -> None:
    result = AgentRunResult()
    answer = agent.ApiAnswer(status, {"success": status == 200, "message": "x"}, "")

    agent._judge_key_check(result, answer, f"answered {status}")

    assert result.finish().exit_code == expected
    assert len(result.messages) == 1


def test_test_mode_with_the_api_down_still_prints_and_exits_1(tmp_path: Path) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    out, err = io.StringIO(), io.StringIO()
    url = f"http://127.0.0.1:{free_port()}/api/v1"
    args = agent_args(Path(brlog), url, tmp_path / "state", test_mode=True)

    code = agent.run_command(args, environ={"AOMEI_API_KEY": API_KEY}, out=out, err=err)

    assert code == EXIT_PENDING
    assert len(json.loads(out.getvalue())) == 4
    assert "not reachable" in err.getvalue()
    assert "key check" not in err.getvalue()  # no second wait on a dead address


def test_cli_runs_the_agent_with_the_key_from_the_environment(
    fake: FakeIngest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backuphub.cli import main

    brlog = shutil.copy(FIXTURES / "brlog_fr_utf16le.xml", tmp_path / "brlog.xml")
    argv = ["agent", "--brlog", str(brlog), "--api-url", fake.url]
    argv += ["--state-dir", str(tmp_path / "state"), "--server-name", SERVER]
    monkeypatch.setenv("MY_AGENT_KEY", API_KEY)

    assert main([*argv, "--api-key-env", "MY_AGENT_KEY"]) == EXIT_OK
    assert len(fake.executions) == 2
    monkeypatch.delenv("MY_AGENT_KEY")
    assert main([*argv, "--api-key-env", "MY_AGENT_KEY"]) == EXIT_CONFIG
    assert (
        main(
            [
                "agent",
                "--brlog",
                str(tmp_path / "missing.xml"),
                "--api-url",
                fake.url,
                "--state-dir",
                str(tmp_path / "s2"),
                "--api-key-env",
                "NONE_SET",
            ]
        )
        == EXIT_CONFIG
    )


def test_the_api_key_never_reaches_logs_or_repr(
    fake: FakeIngest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    brlog = shutil.copy(FIXTURES / "brlog_en_utf8.xml", tmp_path / "brlog.xml")
    config = make_config(tmp_path, fake.url, Path(brlog))
    caplog.set_level(logging.DEBUG)
    fake.script(LOG_ANALYSIS, 503)

    result = run(config)
    run(make_config(tmp_path / "x", fake.url, Path(brlog), api_key=API_KEY + "-wrong"))

    assert result.exit_code == EXIT_OK
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(config)
    assert all(API_KEY not in message for message in result.messages)
