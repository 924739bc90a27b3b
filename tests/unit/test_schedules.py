"""Cron parsing and fire times, with the time zones and DST edges that break naive code."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from processors.schedules import (
    ScheduleError,
    load_zone,
    next_fire,
    parse_cron,
    previous_fire,
    validate_schedule,
)

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")


def test_fields_ranges_steps_and_names():
    schedule = parse_cron("*/15 2-4 1,15 jan-mar mon-fri")

    assert schedule.minutes == (0, 15, 30, 45)
    assert schedule.hours == (2, 3, 4)
    assert schedule.days == {1, 15}
    assert schedule.months == {1, 2, 3}
    assert schedule.weekdays == {1, 2, 3, 4, 5}


def test_sunday_is_0_and_7_and_macros_expand():
    assert parse_cron("0 0 * * 7").weekdays == {0}
    assert parse_cron("@daily").hours == (0,)


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("61 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * funday", "weekday"),
        ("*/0 * * * *", "minute"),
        ("5-1 * * * *", "minute"),
        ("* * * *", "5 fields"),
    ],
)
def test_bad_expressions_name_the_field(expression: str, names: str):
    with pytest.raises(ScheduleError, match=names):
        parse_cron(expression)


def test_day_of_month_or_weekday_when_both_are_restricted():
    schedule = parse_cron("0 3 1 * mon")  # the 1st, and every Monday

    fire = previous_fire(schedule, UTC, datetime(2025, 6, 11, 12, 0))  # a Wednesday
    assert fire == datetime(2025, 6, 9, 3, 0)  # Monday 9 June, not 1 June


def test_previous_and_next_in_a_zone():
    daily = parse_cron("30 2 * * *")

    assert previous_fire(daily, PARIS, datetime(2025, 1, 10, 12, 0)) == datetime(2025, 1, 10, 1, 30)
    assert next_fire(daily, PARIS, datetime(2025, 1, 10, 12, 0)) == datetime(2025, 1, 11, 1, 30)


def test_a_fire_time_is_its_own_previous():
    hourly = parse_cron("0 * * * *")

    assert previous_fire(hourly, UTC, datetime(2025, 1, 1, 5, 0)) == datetime(2025, 1, 1, 5, 0)
    assert next_fire(hourly, UTC, datetime(2025, 1, 1, 5, 0)) == datetime(2025, 1, 1, 6, 0)


def test_spring_forward_gap_fires_once_and_never_sticks():
    # 30 March 2025, Paris: 02:00 local jumps to 03:00; 02:30 does not exist that day.
    daily = parse_cron("30 2 * * *")
    moment = datetime(2025, 3, 30, 4, 0)  # 06:00 local

    fires = []
    for _ in range(3):
        fire = previous_fire(daily, PARIS, moment)
        assert fire is not None
        fires.append(fire)
        moment = fire - timedelta(minutes=1)

    assert fires[0] == datetime(2025, 3, 30, 1, 30)  # shifted by the gap: 03:30 CEST
    assert fires[1] == datetime(2025, 3, 29, 1, 30)  # 02:30 CET the day before
    assert len(set(fires)) == 3


def test_autumn_overlap_fires_once():
    # 26 October 2025, Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    daily = parse_cron("30 2 * * *")

    fire = previous_fire(daily, PARIS, datetime(2025, 10, 26, 12, 0))
    assert fire == datetime(2025, 10, 26, 0, 30)  # the first 02:30 (CEST)
    assert next_fire(daily, PARIS, fire) == datetime(2025, 10, 27, 1, 30)


def test_monthly_and_yearly_windows():
    monthly = parse_cron("0 0 1 * *")
    assert previous_fire(monthly, UTC, datetime(2025, 3, 15)) == datetime(2025, 3, 1)
    assert next_fire(monthly, UTC, datetime(2025, 1, 31)) == datetime(2025, 2, 1)

    leap = parse_cron("0 0 29 2 *")
    assert previous_fire(leap, UTC, datetime(2027, 1, 1)) == datetime(2024, 2, 29)


def test_zones_are_checked():
    assert load_zone(None) == UTC
    with pytest.raises(ScheduleError, match="unknown time zone"):
        load_zone("Mars/Olympus")


def test_validate_schedule_gives_field_errors():
    errors = validate_schedule("fortnightly", "* * *", "Nowhere/Town")

    assert [error["field"] for error in errors] == [
        "schedule_type",
        "schedule_cron",
        "schedule_timezone",
    ]
