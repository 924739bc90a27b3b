"""The alert rules alone: plain inputs, a controlled clock, decisions out."""

from datetime import datetime, timedelta

from ingest_api.auth_monitor import AuthFailureMonitor
from processors.alerting import (
    DURATION_MIN_EXCESS,
    JobSettings,
    OpenAlert,
    RaiseAlert,
    ResolveAlert,
    decide_missing,
    duration_limit,
    evaluate_executions,
    expected_run,
)
from schemas.events import ExecutionRecord

T0 = datetime(2025, 6, 2, 1, 0)  # a Monday, 01:00 UTC
JOB = JobSettings(job_id=7, job_name="Nightly", schedule_since=datetime(2025, 1, 1))


def run(status: str, at: datetime, *, duration: int | None = None, n: int = 0) -> ExecutionRecord:
    return ExecutionRecord(
        execution_id=f"exec-{status}-{at.isoformat()}-{n}",
        report_id=f"r-{n}",
        job_id=JOB.job_id,
        status=status,  # type: ignore[arg-type]
        execution_date=at,
        duration_seconds=duration,
        received_at=at,
    )


def opened(decisions: list, kind: str) -> OpenAlert:
    [decision] = [d for d in decisions if isinstance(d, RaiseAlert) and d.kind == kind]
    return OpenAlert(decision.alert_id, decision.kind, decision.triggered_at, decision.details)


def kinds(decisions: list) -> list[tuple[str, str]]:
    return [("raise" if isinstance(d, RaiseAlert) else "resolve", d.kind) for d in decisions]


# --- failures and warnings -------------------------------------------------------------------


def test_a_failure_raises_once_and_only_a_success_resolves():
    first = evaluate_executions(JOB, {}, [], [run("failed", T0)], None)
    assert kinds(first) == [("raise", "backup_failed")]
    open_alerts = {"backup_failed": opened(first, "backup_failed")}

    again = evaluate_executions(JOB, open_alerts, [], [run("failed", T0 + timedelta(days=1))], T0)
    assert again == []  # no repeat while open

    warning = evaluate_executions(JOB, open_alerts, [], [run("warning", T0 + timedelta(2))], T0)
    assert warning == []  # a warning neither resolves the failure nor adds a warning alert

    success = evaluate_executions(JOB, open_alerts, [], [run("success", T0 + timedelta(3))], T0)
    assert kinds(success) == [("resolve", "backup_failed")]
    assert success[0].alert_id == open_alerts["backup_failed"].alert_id


def test_a_warning_raises_its_own_kind_and_success_resolves_it():
    first = evaluate_executions(JOB, {}, [], [run("warning", T0)], None)
    assert kinds(first) == [("raise", "backup_warning")]
    assert first[0].severity == "warning"

    open_alerts = {"backup_warning": opened(first, "backup_warning")}
    failed = evaluate_executions(JOB, open_alerts, [], [run("failed", T0 + timedelta(1))], T0)
    assert kinds(failed) == [("raise", "backup_failed")]


def test_the_alert_id_is_stable_for_the_same_execution():
    one = evaluate_executions(JOB, {}, [], [run("failed", T0)], None)
    two = evaluate_executions(JOB, {}, [], [run("failed", T0)], None)

    assert one[0].alert_id == two[0].alert_id


def test_a_late_execution_changes_nothing():
    open_alerts = {"backup_failed": OpenAlert("a1", "backup_failed", T0)}
    late_success = run("success", T0 - timedelta(days=3))

    assert evaluate_executions(JOB, open_alerts, [], [late_success], T0) == []
    assert evaluate_executions(JOB, {}, [], [run("failed", T0 - timedelta(1))], T0) == []


def test_raise_and_resolve_in_one_batch_cancel_out():
    history = [run("failed", T0, n=1), run("success", T0 + timedelta(hours=1), n=2)]

    assert evaluate_executions(JOB, {}, [], history, None) == []


def test_a_batch_is_taken_in_time_order():
    history = [run("failed", T0 + timedelta(hours=1), n=1), run("success", T0, n=2)]

    assert kinds(evaluate_executions(JOB, {}, [], history, None)) == [("raise", "backup_failed")]


# --- durations ---------------------------------------------------------------------------------


def test_duration_limit_from_settings_or_history():
    assert duration_limit(JobSettings(1, "j", max_duration_seconds=600), []) == (
        600,
        "max_duration_seconds",
    )
    assert duration_limit(JOB, [100, 100, 100, 100]) is None  # fewer than 5 runs

    limit = duration_limit(JOB, [1000, 1100, 900, 1000, 1050])
    assert limit is not None and limit[0] == 3000

    small = duration_limit(JOB, [10] * 10)
    assert small is not None and small[0] == 10 + DURATION_MIN_EXCESS


def test_a_run_far_beyond_its_history_raises_and_a_normal_success_resolves():
    history = [1000] * 10
    slow = evaluate_executions(JOB, {}, history, [run("success", T0, duration=4000)], None)
    assert kinds(slow) == [("raise", "duration_exceeded")]
    assert slow[0].details["limit_seconds"] == 3000

    open_alerts = {"duration_exceeded": opened(slow, "duration_exceeded")}
    again = evaluate_executions(
        JOB, open_alerts, history, [run("success", T0 + timedelta(1), duration=5000)], T0
    )
    assert again == []

    normal = evaluate_executions(
        JOB, open_alerts, history, [run("success", T0 + timedelta(2), duration=900)], T0
    )
    assert kinds(normal) == [("resolve", "duration_exceeded")]


def test_a_failed_run_within_the_limit_does_not_resolve_duration():
    open_alerts = {"duration_exceeded": OpenAlert("d1", "duration_exceeded", T0)}
    failed = run("failed", T0 + timedelta(1), duration=10)

    decisions = evaluate_executions(JOB, open_alerts, [1000] * 10, [failed], T0)
    assert kinds(decisions) == [("raise", "backup_failed")]


# --- missing backups ------------------------------------------------------------------------------


def daily(**fields: object) -> JobSettings:
    base = {
        "job_id": 7,
        "job_name": "Nightly",
        "schedule_type": "daily",
        "schedule_since": datetime(2025, 1, 1),
        "grace_seconds": 3600,
    }
    return JobSettings(**{**base, **fields})  # type: ignore[arg-type]


def test_manual_and_inactive_jobs_are_never_missing():
    now = datetime(2025, 6, 10)
    assert decide_missing(JobSettings(1, "m"), {}, None, now) == []
    assert decide_missing(daily(is_active=False), {}, None, now) == []


def test_daily_window_is_checked_after_the_day_plus_grace():
    job = daily()
    last = datetime(2025, 6, 1, 23, 0)  # the run of Sunday 1 June

    # Monday 2 June is expected a run; checked at Tuesday 00:00 + 1 h grace.
    assert decide_missing(job, {}, last, datetime(2025, 6, 3, 0, 59)) == []
    [decision] = decide_missing(job, {}, last, datetime(2025, 6, 3, 1, 0))
    assert isinstance(decision, RaiseAlert)
    assert decision.kind == "backup_missing"
    assert decision.triggered_at == datetime(2025, 6, 2)

    # A run late on Monday, or early on Tuesday, counts for Monday.
    assert decide_missing(job, {}, datetime(2025, 6, 2, 23, 50), datetime(2025, 6, 3, 2)) == []


def test_the_missing_alert_is_raised_once_and_resolved_by_a_run():
    job = daily()
    now = datetime(2025, 6, 3, 2, 0)
    [raised] = decide_missing(job, {}, None, now)
    open_alerts = {
        "backup_missing": OpenAlert(raised.alert_id, "backup_missing", raised.triggered_at)
    }

    assert decide_missing(job, open_alerts, None, now + timedelta(days=3)) == []

    late = evaluate_executions(
        job, open_alerts, [], [run("failed", now + timedelta(hours=1))], None
    )
    assert kinds(late) == [("raise", "backup_failed"), ("resolve", "backup_missing")]


def test_the_missing_alert_id_is_the_same_for_two_checkers():
    now = datetime(2025, 6, 3, 2, 0)
    assert decide_missing(daily(), {}, None, now)[0].alert_id == (
        decide_missing(daily(), {}, None, now + timedelta(minutes=5))[0].alert_id
    )


def test_a_fresh_heartbeat_holds_the_missing_alert_back():
    now = datetime(2025, 6, 3, 2, 0)
    running = daily(last_heartbeat_at=now - timedelta(minutes=10))
    stale = daily(last_heartbeat_at=now - timedelta(hours=5))

    assert decide_missing(running, {}, None, now) == []
    assert len(decide_missing(stale, {}, None, now)) == 1


def test_a_new_job_is_not_missing_before_its_first_full_window():
    job = daily(schedule_since=datetime(2025, 6, 2, 15, 0))

    assert decide_missing(job, {}, None, datetime(2025, 6, 3, 2, 0)) == []
    assert len(decide_missing(job, {}, None, datetime(2025, 6, 4, 2, 0))) == 1


def test_weekly_and_monthly_windows_span_many_days():
    weekly = daily(schedule_type="weekly")
    # The ISO week of Monday 2 June ends Monday 9 June; checked at 01:00 that day.
    expectation = expected_run(weekly, datetime(2025, 6, 12))
    assert expectation is not None
    assert expectation.window_start == datetime(2025, 6, 2)
    assert expectation.deadline == datetime(2025, 6, 9, 1, 0)
    assert decide_missing(weekly, {}, datetime(2025, 6, 4), datetime(2025, 6, 12)) == []

    monthly = daily(schedule_type="monthly", grace_seconds=None)
    expectation = expected_run(monthly, datetime(2025, 3, 15))
    assert expectation is not None
    assert expectation.window_start == datetime(2025, 2, 1)
    assert expectation.deadline == datetime(2025, 3, 1, 4, 0)  # default grace: 4 h


def test_cron_expects_each_run_by_fire_time_plus_grace_in_its_zone():
    job = daily(schedule_type="cron", schedule_cron="0 22 * * *", schedule_timezone="Asia/Tokyo")
    # 22:00 Tokyo is 13:00 UTC; grace 1 h.
    assert decide_missing(job, {}, datetime(2025, 6, 1, 13, 30), datetime(2025, 6, 2, 13, 59)) == []
    [decision] = decide_missing(job, {}, datetime(2025, 6, 1, 13, 30), datetime(2025, 6, 2, 14, 0))
    assert decision.triggered_at == datetime(2025, 6, 2, 13, 0)


def test_a_job_made_manual_resolves_its_missing_alert():
    open_alerts = {"backup_missing": OpenAlert("m1", "backup_missing", datetime(2025, 6, 2))}

    [decision] = decide_missing(JobSettings(7, "n"), open_alerts, None, datetime(2025, 6, 5))
    assert isinstance(decision, ResolveAlert)


# --- auth failure bursts -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_one_burst_alert_per_source_then_resolved_after_quiet():
    clock = Clock()
    monitor = AuthFailureMonitor(
        threshold=5, window=timedelta(seconds=60), quiet=timedelta(seconds=120), clock=clock
    )

    decisions = []
    for _ in range(50):
        decisions += monitor.failure("10.0.0.9")
        clock.now += timedelta(seconds=1)
    assert kinds(decisions) == [("raise", "auth_failure_burst")]
    assert decisions[0].job_id is None and decisions[0].source == "10.0.0.9"

    clock.now += timedelta(seconds=60)
    assert monitor.sweep() == []  # not quiet long enough
    clock.now += timedelta(seconds=61)
    assert kinds(monitor.sweep()) == [("resolve", "auth_failure_burst")]


def test_slow_failures_are_no_burst_and_memory_is_bounded():
    clock = Clock()
    monitor = AuthFailureMonitor(
        threshold=3, window=timedelta(seconds=10), max_sources=100, clock=clock
    )

    for _ in range(10):
        assert monitor.failure("slow") == []
        clock.now += timedelta(seconds=6)

    for n in range(1000):
        monitor.failure(f"spray-{n}")
    assert len(monitor._recent) <= 100
