"""The processing rules, alone: no broker, no database."""

from datetime import datetime

import pytest

from processors.rules import (
    execution_date,
    executions_from_report,
    media_type_for,
    normalise_status,
    process_report,
    resolve_duration,
)
from schemas.events import EventEnvelope

RECEIVED = datetime(2025, 11, 2, 3, 0, 0)
START = datetime(2025, 11, 2, 1, 0, 0)
END = datetime(2025, 11, 2, 2, 0, 0)


@pytest.mark.parametrize(
    ("reported", "status"),
    [
        ("success", "success"),
        ("SUCCESS", "success"),
        (" Success ", "success"),
        ("failed", "failed"),
        ("Failed", "failed"),
        ("warning", "warning"),
        ("WARNING", "warning"),
        ("unknown", "warning"),
        ("Unknown", "warning"),
        ("", "warning"),
        (None, "warning"),
        ("Succès", "warning"),
        ("failure", "warning"),
    ],
)
def test_status_is_normalised(reported, status):
    assert normalise_status(reported) == status


def test_a_reported_duration_wins():
    assert resolve_duration(START, END, 3590) == (3590, [])


def test_a_missing_duration_is_computed_from_start_and_end():
    assert resolve_duration(START, END, None) == (3600, [])


def test_without_times_the_duration_stays_unknown():
    assert resolve_duration(None, END, None) == (None, [])
    assert resolve_duration(START, None, 12) == (12, [])


def test_a_duration_that_disagrees_with_the_times_is_flagged():
    assert resolve_duration(START, END, 60) == (60, ["duration_mismatch"])


def test_an_end_before_the_start_is_flagged_and_gives_no_duration():
    assert resolve_duration(END, START, None) == (None, ["end_before_start"])


def test_the_execution_date_is_the_end_else_the_time_received():
    assert execution_date(END, RECEIVED) == END
    assert execution_date(None, RECEIVED) == RECEIVED


def test_media_type_follows_the_path_and_stays_unknown_without_one():
    assert media_type_for("D:\\Backups", None) == "disk"
    assert media_type_for("\\\\nas\\backups", None) == "network"
    assert media_type_for("\\\\nas\\backups", "cloud") == "cloud"
    assert media_type_for(None, None) is None


def status_report(**body: object) -> EventEnvelope:
    return EventEnvelope(
        event_id="e1",
        event_type="report.status",
        job_id=7,
        received_at=RECEIVED,
        source="test",
        payload={"report_id": "r1", "body": {"job_id": 7, **body}},
    )


def test_a_status_report_becomes_one_execution():
    report = status_report(
        status="FAILED",
        start_time=START.isoformat(),
        end_time=END.isoformat(),
        backup_size=10,
        error_message="full",
        copy_type="offsite",
        storage_path="\\\\nas\\b",
    )

    [execution] = executions_from_report(report)

    assert execution.status == "failed"
    assert execution.reported_status == "FAILED"
    assert execution.execution_date == END
    assert execution.duration_seconds == 3600
    assert execution.copy_type == "offsite"
    assert execution.media_type == "network"
    assert execution.error_message == "full"


def test_an_unrecognised_status_is_flagged():
    [execution] = executions_from_report(status_report(status="exploded"))

    assert execution.status == "warning"
    assert "status_unrecognised" in execution.flags


def test_the_execution_id_is_stable_across_replays():
    first = executions_from_report(status_report(status="success"))
    again = executions_from_report(status_report(status="success"))

    assert first[0].execution_id == again[0].execution_id


def test_a_failure_produces_only_its_execution():
    # Alerts are decided where the state is (processors.alerting in the persister), not here.
    events = process_report(status_report(status="failed"), source="test")

    assert [event.event_type for event in events] == ["execution.recorded"]
    assert events[0].payload["status"] == "failed"


def test_a_running_status_is_no_execution():
    assert process_report(status_report(status="running"), source="test") == []


def test_a_success_produces_no_alert():
    events = process_report(status_report(status="success"), source="test")

    assert [event.event_type for event in events] == ["execution.recorded"]


def test_a_log_analysis_with_parsed_data_becomes_one_execution():
    report = EventEnvelope(
        event_id="e2",
        event_type="report.log_analysis",
        job_id=7,
        received_at=RECEIVED,
        source="test",
        payload={
            "report_id": "r2",
            "body": {
                "job_id": 7,
                "parsed_data": {
                    "status": "warning",
                    "end_time": END.isoformat(),
                    "details": "partly",
                },
            },
        },
    )

    [execution] = executions_from_report(report)

    assert execution.status == "warning"
    assert execution.details == "partly"
    assert execution.execution_date == END
