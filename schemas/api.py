"""Request and response bodies of the HTTP API (``/api/v1/aomei``).

Field names follow the wire contract that deployed agents already speak. Unknown fields are
ignored so that newer agents can talk to an older server.
"""

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from processors.schedules import load_zone, parse_cron

# Job ids are the database's 32-bit serial: anything larger names no job and must be a 400,
# not a database error.
MAX_JOB_ID = 2_147_483_647

ReportId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:\-]+$")
]
ShortText = Annotated[str, StringConstraints(max_length=255)]
# An AOMEI task's GUID, with or without braces, any case.
TaskGuid = Annotated[
    str,
    StringConstraints(pattern=r"^\{?[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}\}?$"),
]
LongText = Annotated[str, StringConstraints(max_length=20_000)]
PathText = Annotated[str, StringConstraints(max_length=1024)]


# A backup run reported more than this ahead of the server's clock is a wrong clock, not a
# run: taken as the job's newest run it would hide every real one after it.
MAX_CLOCK_AHEAD = timedelta(days=1)
EARLIEST_RUN = datetime(2000, 1, 1)


def as_utc_naive(value: datetime | None) -> datetime | None:
    """Store every time as naive UTC; a time sent without an offset is taken as UTC.

    Times before 2000 or more than a day in the future are refused.
    """
    if value is None:
        return value
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError as error:
            raise ValueError("is outside the range of dates") from error
    if value < EARLIEST_RUN:
        raise ValueError("is before 2000-01-01")
    if value > datetime.now(UTC).replace(tzinfo=None) + MAX_CLOCK_AHEAD:
        raise ValueError("is more than a day in the future (check the agent's clock)")
    return value


UtcTime = Annotated[datetime, AfterValidator(as_utc_naive)]


class CopyType(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"
    OFFSITE = "offsite"
    OFFLINE = "offline"


class MediaType(StrEnum):
    DISK = "disk"
    TAPE = "tape"
    CLOUD = "cloud"
    EXTERNAL_HDD = "external_hdd"
    NETWORK = "network"


class JobType(StrEnum):
    SYSTEM_IMAGE = "system_image"
    FILE = "file"
    DATABASE = "database"
    VM = "vm"
    DISK = "disk"
    PARTITION = "partition"


# Sizes are PostgreSQL BIGINT, durations INTEGER: a larger number is a 400 at the door, never
# a row the database refuses after the report was acknowledged.
MAX_SIZE_BYTES = 2**63 - 1
MAX_DURATION_SECONDS = 2**31 - 1


def _number_not_bool(value: Any) -> Any:
    """JSON ``true`` is not a count: pydantic would read it as 1."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


Count = Annotated[int, BeforeValidator(_number_not_bool)]
SizeBytes = Annotated[Count, Field(ge=0, le=MAX_SIZE_BYTES)]
Seconds = Annotated[Count, Field(ge=0, le=MAX_DURATION_SECONDS)]


_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable_text(value: Any) -> Any:
    """Text the database and the event log can hold: no NUL, no lone UTF-16 surrogate."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if not value.isascii() and _SURROGATE.search(value):
            raise ValueError("must not contain unpaired surrogate characters")
    return value


# Paging beyond this is no page at all; the bound keeps the number inside the database's.
MAX_OFFSET = 1_000_000_000


def lower_text(value: Any) -> Any:
    """Enumerated values are matched without regard to case, in bodies and in queries."""
    return value.strip().lower() if isinstance(value, str) else value


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    _text_is_storable = field_validator("*", mode="after")(_storable_text)


class ScheduleFields(_Body):
    """When a job is expected to run, and how late or long a run may be.

    Either ``schedule_type`` (``hourly``, ``daily``, ``weekly``, ``monthly``, ``manual``) or
    ``schedule_cron`` (five fields, read in ``schedule_timezone``, an IANA name; UTC when
    unset). A cron expression stores ``schedule_type`` as ``cron``. See
    ``processors.schedules`` for what each means to the missing-backup check.
    """

    schedule_type: Literal["manual", "hourly", "daily", "weekly", "monthly", "cron"] | None = None
    schedule_cron: Annotated[str, StringConstraints(min_length=1, max_length=120)] | None = None
    schedule_timezone: Annotated[str, StringConstraints(max_length=64)] | None = None
    grace_seconds: Count | None = Field(default=None, ge=0, le=31 * 86400)
    max_duration_seconds: Count | None = Field(default=None, gt=0, le=31 * 86400)

    _lower_schedule_type = field_validator("schedule_type", mode="before")(lower_text)

    @field_validator("schedule_cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value:
            parse_cron(value)  # ScheduleError is a ValueError: a 400 naming the field
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value:
            load_zone(value)
        return value or None

    @model_validator(mode="after")
    def _type_or_cron(self) -> "ScheduleFields":
        if self.schedule_cron and self.schedule_type not in (None, "cron"):
            raise ValueError("give either schedule_type or schedule_cron, not both")
        if self.schedule_type == "cron" and not self.schedule_cron:
            raise ValueError("schedule_type 'cron' needs schedule_cron")
        if self.schedule_cron:
            self.schedule_type = "cron"
        return self

    def schedule_changes(self) -> dict[str, object]:
        """The job columns the fields that were sent set (a type clears the cron line)."""
        sent = self.model_fields_set
        values: dict[str, object] = {}
        if "schedule_type" in sent or "schedule_cron" in sent:
            values["schedule_type"] = self.schedule_type or "manual"
            values["schedule_cron"] = self.schedule_cron
        for name in ("schedule_timezone", "grace_seconds", "max_duration_seconds"):
            if name in sent:
                values[name] = getattr(self, name)
        return values


class ScheduleRequest(ScheduleFields):
    """The body of ``PUT /api/v1/aomei/jobs/{id}/schedule``: the job's whole schedule.

    Fields left out are reset (no cron, UTC, default grace, no duration limit); a body with
    neither a type nor a cron expression makes the job manual.
    """

    def schedule_changes(self) -> dict[str, object]:
        return {
            "schedule_type": self.schedule_type or "manual",
            "schedule_cron": self.schedule_cron,
            "schedule_timezone": self.schedule_timezone,
            "grace_seconds": self.grace_seconds,
            "max_duration_seconds": self.max_duration_seconds,
        }


class RegisterRequest(ScheduleFields):
    """Create a job (``job_id`` 0) or update an existing one (``job_id`` > 0).

    The schedule fields are optional; on an update only the ones sent change.
    """

    job_id: Count = Field(ge=0, le=MAX_JOB_ID)
    task_name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    job_type: JobType = JobType.SYSTEM_IMAGE
    target_server: ShortText | None = None
    target_path: PathText | None = None
    description: LongText | None = None
    task_guid: TaskGuid | None = None

    _lower_job_type = field_validator("job_type", mode="before")(lower_text)

    @field_validator("task_guid")
    @classmethod
    def _canonical_guid(cls, value: str | None) -> str | None:
        return value.strip("{}").lower() if value else value


class ParsedLog(_Body):
    """One backup run as the agent read it: the contract's ``parsed_data``, and the core of a
    status report."""

    task_name: ShortText | None = None
    status: Annotated[str, StringConstraints(max_length=64)]
    start_time: UtcTime | None = None
    end_time: UtcTime | None = None
    duration: Seconds | None = None
    backup_size: SizeBytes | None = None
    error_message: LongText | None = None
    details: LongText | None = None


class StatusRequest(ParsedLog):
    """One backup run of a job, with where its copy went."""

    job_id: Count = Field(gt=0, le=MAX_JOB_ID)
    copy_type: CopyType = CopyType.PRIMARY
    media_type: MediaType | None = None
    storage_path: PathText | None = None
    report_id: ReportId | None = None

    _lower_enums = field_validator("copy_type", "media_type", mode="before")(lower_text)


class RawEntries(_Body):
    """New entries of AOMEI's run history, as read from the file, for the server to parse.

    Either ``xml`` (the text of the new ``<Log>`` elements) or ``data`` (the file's new bytes in
    base64, with their ``encoding``).
    """

    format: Literal["xml", "base64"] = "xml"
    xml: Annotated[str, StringConstraints(max_length=2_000_000)] | None = None
    data: Annotated[str, StringConstraints(max_length=2_800_000)] | None = None
    encoding: Literal["utf-8", "utf-16-le", "utf-16-be", "auto"] = "auto"
    task_id: TaskGuid | None = None

    _lower_encoding = field_validator("encoding", mode="before")(lower_text)

    @model_validator(mode="after")
    def _one_form(self) -> "RawEntries":
        if self.format == "xml" and not self.xml:
            raise ValueError("format 'xml' needs the 'xml' field")
        if self.format == "base64" and not self.data:
            raise ValueError("format 'base64' needs the 'data' field")
        return self


class LogAnalysisRequest(_Body):
    """A log the agent analysed (``parsed_data``) or raw history entries (``raw_entries``)."""

    job_id: Count = Field(gt=0, le=MAX_JOB_ID)
    log_file_path: PathText | None = None
    parsed_data: ParsedLog | None = None
    raw_entries: RawEntries | None = None
    report_id: ReportId | None = None

    @model_validator(mode="after")
    def _has_content(self) -> "LogAnalysisRequest":
        if self.parsed_data is None and self.raw_entries is None:
            raise ValueError("one of 'parsed_data' or 'raw_entries' is required")
        return self


class Envelope(BaseModel):
    """The response shape every endpoint answers with."""

    success: bool
    message: str
    data: Any = None
