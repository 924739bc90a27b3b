"""The alert event schema: produced events validate, and it is strict where it matters."""

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from consumers.alert_store import alert_event

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "alert_event.schema.json").read_text())
NOW = datetime(2025, 6, 2, 3, 4, 5)


def validate(event: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(event, SCHEMA, cls=jsonschema.Draft202012Validator)


def row(**fields: Any) -> dict[str, Any]:
    base = {
        "alert_uid": "0b9f6a2e-5d0c-5f4e-9a59-0c7f3f1b1a11",
        "kind": "backup_failed",
        "state": "open",
        "severity": "critical",
        "job_id": 7,
        "source": None,
        "message": "Backup 'Nightly' failed",
        "details": json.dumps({"status": "failed"}),
        "execution_id": "e1",
        "triggered_at": NOW,
        "opened_at": NOW,
        "resolved_at": None,
    }
    return {**base, **fields}


def produced(**fields: Any) -> dict[str, Any]:
    event = alert_event(row(**fields), "Nightly", "persister", NOW)
    return json.loads(event.to_bytes())


def test_raised_and_resolved_events_validate():
    raised = produced()
    resolved = produced(state="resolved", resolved_at=NOW, resolved_reason="backup succeeded")

    validate(raised)
    validate(resolved)
    assert raised["event_type"] == "alert.raised" and resolved["event_type"] == "alert.resolved"
    assert raised["event_id"] != resolved["event_id"]
    assert produced()["event_id"] == raised["event_id"]  # stable across replays


def test_an_auth_burst_is_keyed_by_source():
    burst = produced(kind="auth_failure_burst", severity="warning", job_id=None, source="10.1.2.3")
    validate(burst)
    assert burst["job_id"] == 0


@pytest.mark.parametrize(
    "breaks",
    [
        lambda e: e["payload"].update(job_id=None),  # a job alert without its job
        lambda e: e["payload"].update(kind="disk_on_fire"),
        lambda e: e.update(schema_version=2),
        lambda e: e["payload"].pop("alert_id"),
        lambda e: e.update(received_at="yesterday"),
        lambda e: (
            e.update(event_type="alert.resolved")
            or e["payload"].update(state="resolved", resolved_at=None)
        ),
    ],
)
def test_the_schema_refuses_broken_events(breaks: Any):
    event = copy.deepcopy(produced())
    breaks(event)

    with pytest.raises(jsonschema.ValidationError):
        validate(event)
