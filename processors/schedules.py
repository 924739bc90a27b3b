"""When a job is expected to run: schedule types, cron expressions and their fire times.

A job's schedule is either one of the fixed types (``hourly``, ``daily``, ``weekly``,
``monthly``, ``manual``) or a five-field cron expression, read in the job's IANA time zone.
The two say different things, and the missing-backup check treats them differently:

- a fixed type says *how often*: at least one run in every local hour, day, ISO week (from
  Monday) or calendar month. A run is expected somewhere in the period, at an hour we do not
  know, so the period is checked once it is over (plus the grace);
- a cron expression says *when*: the run that starts at a fire time is expected to have ended
  by that fire time plus the grace.

Fire times are computed here rather than with ``croniter``: croniter's ``get_prev`` repeats
the same time forever across a spring-forward gap (seen with 5.0.1 in Europe/Paris), which
would stall the check. The rules here are those of Vixie cron: a day matches when the
day-of-month *or* the day-of-week matches if both are restricted; a local time that does not
exist (the spring gap) fires at the same UTC instant as the wall time shifted by the gap; an
ambiguous local time (the autumn overlap) fires once, at its first occurrence.

Every time that goes in or out of this module is naive UTC, as the database stores times.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SCHEDULE_TYPES = ("manual", "hourly", "daily", "weekly", "monthly")

# The cron expression whose fire times start each period of a fixed schedule type.
PERIOD_STARTS = {
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 1",
    "monthly": "0 0 1 * *",
}

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
DAY_NAMES = {name: n for n, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}

# How far back or forward a search for a fire time goes: enough for "29 February" cron lines.
SEARCH_DAYS = 366 * 8 + 2

# A local time is searched from this far beyond the asked instant, so that the autumn overlap
# (one wall-clock hour lived twice) never hides a fire time.
DST_MARGIN = timedelta(hours=3)


class ScheduleError(ValueError):
    """A schedule that cannot be used: the message says which part and why."""


@dataclass(frozen=True)
class CronSchedule:
    """A parsed five-field cron expression: the sets of values each field allows."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False

        weekday = (day.weekday() + 1) % 7  # Python's Monday=0 to cron's Sunday=0
        by_day = day.day in self.days
        by_weekday = weekday in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_day or by_weekday
        return by_day and by_weekday

    def wall_times_before(self, start: datetime) -> Iterator[datetime]:
        """Matching local wall-clock times at or before ``start`` (naive), newest first."""
        for offset in range(SEARCH_DAYS):
            day = start.date() - timedelta(days=offset)
            if not self.matches_day(day):
                continue
            for hour in reversed(self.hours):
                for minute in reversed(self.minutes):
                    moment = datetime(day.year, day.month, day.day, hour, minute)
                    if moment <= start:
                        yield moment

    def wall_times_after(self, start: datetime) -> Iterator[datetime]:
        """Matching local wall-clock times after ``start`` (naive), oldest first."""
        for offset in range(SEARCH_DAYS):
            day = start.date() + timedelta(days=offset)
            if not self.matches_day(day):
                continue
            for hour in self.hours:
                for minute in self.minutes:
                    moment = datetime(day.year, day.month, day.day, hour, minute)
                    if moment > start:
                        yield moment


def _field_values(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    """The values one cron field allows: lists, ranges, steps and names."""
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)

        if base == "*":
            first, last = low, high
        else:
            first_text, dash, last_text = base.partition("-")
            first = _field_number(first_text, name, low, high, names)
            if dash:
                last = _field_number(last_text, name, low, high, names)
            else:
                last = high if step_text else first
            if last < first:
                raise ScheduleError(f"{name}: range {base!r} runs backwards")

        values.update(range(first, last + 1, step))
    return values


def _field_number(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    token = text.strip().lower()
    if token in names:
        return names[token]
    if not token.isdigit():
        raise ScheduleError(f"{name}: {text!r} is not a number or a known name")

    value = int(token)
    if not low <= value <= high:
        raise ScheduleError(f"{name}: {value} is outside {low}-{high}")
    return value


def parse_cron(expression: str) -> CronSchedule:
    """Parse a five-field cron expression (or an ``@daily``-style macro).

    Raises ``ScheduleError`` naming the field that is wrong.
    """
    text = MACROS.get(expression.strip().lower(), expression.strip())
    fields = re.split(r"\s+", text)
    if len(fields) != 5:
        raise ScheduleError(
            f"a cron expression has 5 fields (minute hour day month weekday), not {len(fields)}"
        )

    minute, hour, day, month, weekday = fields
    weekdays = _field_values(weekday, "weekday", 0, 7, DAY_NAMES)
    return CronSchedule(
        expression=expression.strip(),
        minutes=tuple(sorted(_field_values(minute, "minute", 0, 59, {}))),
        hours=tuple(sorted(_field_values(hour, "hour", 0, 23, {}))),
        days=frozenset(_field_values(day, "day of month", 1, 31, {})),
        months=frozenset(_field_values(month, "month", 1, 12, MONTH_NAMES)),
        weekdays=frozenset(value % 7 for value in weekdays),  # 7 is Sunday too
        days_restricted=not day.startswith("*"),
        weekdays_restricted=not weekday.startswith("*"),
    )


def load_zone(name: str | None) -> ZoneInfo:
    """The IANA zone ``name`` (UTC when empty); ``ScheduleError`` for an unknown one."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        # OSError: a name that is a folder of the zone database, such as 'America'.
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name)") from error


def _to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """The naive UTC instant of a local wall-clock time (fold 0: see the module docstring)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC).replace(tzinfo=None)


def _to_wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None)


def previous_fire(schedule: CronSchedule, zone: ZoneInfo, moment: datetime) -> datetime | None:
    """The newest fire time at or before ``moment`` (naive UTC); None when there is none."""
    start = _to_wall(moment, zone) + DST_MARGIN
    for wall in schedule.wall_times_before(start):
        fire = _to_utc(wall, zone)
        if fire <= moment:
            return fire
    return None


def next_fire(schedule: CronSchedule, zone: ZoneInfo, moment: datetime) -> datetime | None:
    """The oldest fire time after ``moment`` (naive UTC); None when there is none."""
    start = _to_wall(moment, zone) - DST_MARGIN
    for wall in schedule.wall_times_after(start):
        fire = _to_utc(wall, zone)
        if fire > moment:
            return fire
    return None


def validate_schedule(
    schedule_type: str | None, schedule_cron: str | None, schedule_timezone: str | None
) -> list[dict[str, str]]:
    """Field errors of a schedule, in the API's ``{"field", "message"}`` form; empty when fine."""
    errors = []
    if schedule_type is not None and schedule_type not in SCHEDULE_TYPES:
        errors.append(
            {
                "field": "schedule_type",
                "message": f"must be one of {', '.join(SCHEDULE_TYPES)}",
            }
        )
    if schedule_cron:
        try:
            parse_cron(schedule_cron)
        except ScheduleError as error:
            errors.append({"field": "schedule_cron", "message": str(error)})
    if schedule_timezone:
        try:
            load_zone(schedule_timezone)
        except ScheduleError as error:
            errors.append({"field": "schedule_timezone", "message": str(error)})
    return errors
