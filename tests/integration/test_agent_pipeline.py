"""The Python agent against the real pipeline: what an AOMEI machine's history becomes.

For each sample history file the agent registers the file's tasks and every complete entry
becomes an execution with the expected status; appended entries are sent alone; while the
ingest API is down the reports wait in the spool and arrive once, in order, when it is back.
"""

import json
import shutil
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from processors.aomei.agent import EXIT_OK, AgentConfig, run_once
from schemas.tables import backup_executions, backup_jobs
from tests.integration.running_services import API_KEY, ServiceTrio, wait_until

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "fixtures" / "aomei"
PIPELINE_DEADLINE = 60.0


def agent_config(trio: ServiceTrio, brlog: Path, state: Path, server: str) -> AgentConfig:
    return AgentConfig(
        api_url=f"{trio.ingest.url}/api/v1",
        api_key=API_KEY,
        brlog_path=brlog,
        state_dir=state,
        server_name=server,
        timeout_seconds=10,
        max_attempts=2,
        backoff_base_seconds=0.05,
        backoff_max_seconds=0.2,
        max_run_seconds=30,
    )


def stored_runs(db: Engine, server: str) -> list[tuple[str, str, str, str]]:
    """(task GUID, time, status, task name) of every execution of the server's jobs."""
    with db.connect() as connection:
        rows = connection.execute(
            select(
                backup_jobs.c.task_guid,
                backup_executions.c.execution_date,
                backup_executions.c.execution_result,
                backup_executions.c.task_name,
            )
            .join(backup_jobs, backup_jobs.c.id == backup_executions.c.job_id)
            .where(backup_jobs.c.target_server == server)
            .order_by(backup_executions.c.execution_date)
        ).all()
    return [
        (r.task_guid, r.execution_date.isoformat() + "Z", r.execution_result, r.task_name)
        for r in rows
    ]


def expected_runs(fixture: Path) -> list[tuple[str, str, str, str]]:
    lines = fixture.with_suffix(".expected.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    return [(e["task_id"], e["time"], e["status"], e["task_name"]) for e in entries]


def wait_for_runs(db: Engine, server: str, count: int) -> list[tuple[str, str, str, str]]:
    return wait_until(
        lambda: (runs := stored_runs(db, server)) and len(runs) >= count and runs,
        timeout=PIPELINE_DEADLINE,
        what=f"{count} executions of server {server}",
    )


@pytest.mark.parametrize(
    "name", ["brlog_en_utf8.xml", "brlog_fr_utf16le.xml", "brlog_appending.xml"]
)
def test_every_complete_entry_of_a_history_file_becomes_an_execution(
    trio: ServiceTrio, db: Engine, tmp_path: Path, name: str
) -> None:
    brlog = tmp_path / "brlog.xml"
    shutil.copyfile(FIXTURES / name, brlog)
    server = f"agent-{uuid.uuid4().hex[:8]}"

    result = run_once(agent_config(trio, brlog, tmp_path / "state", server))

    assert result.exit_code == EXIT_OK, result.messages
    expected = expected_runs(FIXTURES / name)
    assert len(result.registered) == len({run[0] for run in expected})
    assert wait_for_runs(db, server, len(expected)) == expected


def test_appended_entries_are_sent_alone(trio: ServiceTrio, db: Engine, tmp_path: Path) -> None:
    brlog = tmp_path / "brlog.xml"
    shutil.copyfile(FIXTURES / "brlog_en_utf8.xml", brlog)
    server = f"agent-{uuid.uuid4().hex[:8]}"
    config = agent_config(trio, brlog, tmp_path / "state", server)
    assert run_once(config).exit_code == EXIT_OK
    before = wait_for_runs(db, server, 4)

    appended = (
        '  <Log ID="{3F2504E0-4F89-41D3-9A0C-0305E82C3301}">\r\n'
        "    <Time>1762131600</Time>\r\n    <Task>System Backup Daily</Task>\r\n"
        "    <Operation>System Backup</Operation>\r\n    <Result>Failed</Result>\r\n"
        "    <ResultCode>4103</ResultCode>\r\n    <Detail>Failed to write file.</Detail>\r\n"
        "  </Log>\r\n</BRLog>\r\n"
    )
    text = brlog.read_bytes().decode("utf-8").replace("</BRLog>\r\n", appended)
    brlog.write_bytes(text.encode("utf-8"))

    second = run_once(config)

    assert second.exit_code == EXIT_OK, second.messages
    assert second.new_entries == 1
    assert len(second.delivered) == 1
    after = wait_for_runs(db, server, 5)
    assert after[:4] == before
    assert after[4][1:3] == ("2025-11-03T01:00:00Z", "failed")


def test_reports_wait_in_the_spool_while_the_api_is_down(
    trio: ServiceTrio, db: Engine, tmp_path: Path
) -> None:
    brlog = tmp_path / "brlog.xml"
    shutil.copyfile(FIXTURES / "brlog_en_utf8.xml", brlog)
    server = f"agent-{uuid.uuid4().hex[:8]}"
    config = agent_config(trio, brlog, tmp_path / "state", server)
    assert run_once(config).exit_code == EXIT_OK  # registers the tasks
    wait_for_runs(db, server, 4)

    more = "".join(
        f'  <Log ID="{{6B29FC40-CA47-1067-B31D-00DD010662DA}}">\r\n'
        f"    <Time>{1762135200 + 3600 * n}</Time>\r\n    <Task>Documents to NAS</Task>\r\n"
        f"    <Result>Success</Result>\r\n    <ResultCode>0</ResultCode>\r\n  </Log>\r\n"
        for n in range(3)
    )
    text = brlog.read_bytes().decode("utf-8").replace("</BRLog>\r\n", more + "</BRLog>\r\n")
    brlog.write_bytes(text.encode("utf-8"))

    trio.ingest.stop()
    try:
        down = run_once(config)
        assert down.exit_code != EXIT_OK
        assert down.pending, "the report should wait in the spool"
        assert len(stored_runs(db, server)) == 4
    finally:
        trio.restart("ingest")

    back = run_once(config)

    assert back.exit_code == EXIT_OK, back.messages
    assert back.delivered == down.pending
    runs = wait_for_runs(db, server, 7)
    assert len(runs) == 7
    assert Counter(run[1] for run in runs).most_common(1)[0][1] == 1, "a run stored twice"
    assert [run[1] for run in runs[4:]] == [
        "2025-11-03T02:00:00Z",
        "2025-11-03T03:00:00Z",
        "2025-11-03T04:00:00Z",
    ]
