"""The versioned envelope that every event on Kafka travels in, and the payloads inside it.

The envelope carries what a consumer needs before it reads the payload: a unique event id (the
key for idempotent writes), the event type and its schema version, when the thing happened,
when it was received, and which service produced it.
"""

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# Namespace for the deterministic ids derived from report ids and history entries.
ID_NAMESPACE = uuid.UUID("5b0c3e0e-7d4a-4d38-9a55-3f1f5cbb6a10")

EventType = Literal[
    "report.status",
    "report.log_analysis",
    "execution.recorded",
    "alert.raised",
    "alert.resolved",
]


def utc_now() -> datetime:
    """The current time as naive UTC, the form every stored time takes."""
    return datetime.now(UTC).replace(tzinfo=None)


def derived_id(*parts: object) -> str:
    """A stable id from its parts, so that a replay of the same thing gets the same id."""
    return str(uuid.uuid5(ID_NAMESPACE, "|".join(str(part) for part in parts)))


class EventEnvelope(BaseModel):
    """One event on a backuphub topic."""

    model_config = ConfigDict(extra="ignore")

    event_id: str
    event_type: EventType
    schema_version: int = SCHEMA_VERSION
    job_id: int
    occurred_at: datetime | None = None
    received_at: datetime = Field(default_factory=utc_now)
    source: str
    payload: dict[str, Any]

    def to_bytes(self) -> bytes:
        # pydantic-core's own JSON writer: no intermediate dict of the whole event.
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "EventEnvelope":
        return cls.model_validate_json(raw)


class ExecutionRecord(BaseModel):
    """A backup run after normalisation: what the persister writes as one execution row."""

    model_config = ConfigDict(extra="ignore")

    execution_id: str
    report_id: str
    job_id: int
    status: Literal["success", "failed", "warning"]
    reported_status: str | None = None
    execution_date: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_seconds: int | None = None
    backup_size_bytes: int | None = None
    error_message: str | None = None
    details: str | None = None
    task_name: str | None = None
    copy_type: str = "primary"
    media_type: str | None = None  # None: the report named no media; the known one stays
    storage_path: str | None = None
    source_system: str = "aomei_powershell"
    received_at: datetime
    flags: list[str] = Field(default_factory=list)
