"""Request bodies, the event envelope and the topic names."""

from datetime import datetime

import pytest
from pydantic import ValidationError

from ingest_api.reports import report_event, report_id_for
from schemas.api import LogAnalysisRequest, RegisterRequest, StatusRequest
from schemas.events import EventEnvelope
from schemas.topics import Topics

RECEIVED = datetime(2025, 11, 2, 3, 0, 0)


def test_times_with_an_offset_are_stored_as_utc():
    body = StatusRequest(job_id=1, status="success", end_time="2025-11-02T03:00:00+01:00")

    assert body.end_time == datetime(2025, 11, 2, 2, 0, 0)


def test_unknown_fields_are_ignored_for_newer_agents():
    body = StatusRequest.model_validate({"job_id": 1, "status": "success", "agent": "v9"})

    assert body.status == "success"


def test_enums_are_matched_without_regard_to_case():
    body = StatusRequest(job_id=1, status="x", copy_type="OFFSITE", media_type="Cloud")

    assert (body.copy_type.value, body.media_type and body.media_type.value) == ("offsite", "cloud")


def test_a_task_guid_is_stored_lower_case_without_braces():
    body = RegisterRequest(
        job_id=0, task_name="t", task_guid="{3F2504E0-4F89-41D3-9A0C-0305E82C3301}"
    )

    assert body.task_guid == "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


@pytest.mark.parametrize("task_name", ["", "   ", "x" * 256])
def test_a_task_name_must_be_given_and_short(task_name):
    with pytest.raises(ValidationError):
        RegisterRequest(job_id=0, task_name=task_name)


def test_raw_entries_need_their_content():
    with pytest.raises(ValidationError):
        LogAnalysisRequest.model_validate({"job_id": 1, "raw_entries": {"format": "base64"}})


def test_a_report_without_id_or_times_counts_once_a_day():
    body = StatusRequest(job_id=1, status="success")

    today = report_id_for(body, RECEIVED)
    later_today = report_id_for(body, RECEIVED.replace(hour=23))
    tomorrow = report_id_for(body, RECEIVED.replace(day=3))

    assert today == later_today
    assert today != tomorrow


def test_a_report_with_times_is_keyed_by_content_alone():
    body = StatusRequest(job_id=1, status="success", end_time="2025-11-02T02:00:00")

    assert report_id_for(body, RECEIVED) == report_id_for(body, RECEIVED.replace(day=9))


def test_the_envelope_round_trips_through_bytes():
    body = StatusRequest(job_id=3, status="failed", report_id="abc")
    event = report_event("status", body, RECEIVED)

    decoded = EventEnvelope.from_bytes(event.to_bytes())

    assert decoded == event
    assert decoded.schema_version == 1
    assert decoded.payload["report_id"] == "abc"


def test_topics_share_one_prefix():
    topics = Topics("it42.")

    assert topics.all() == ["it42.reports.raw", "it42.executions", "it42.alerts", "it42.deadletter"]
