"""The alert rules' history reads give the same answers on PostgreSQL (per-job index reads)
as their portable forms give on SQLite, for the same runs."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

from backuphub.database import make_engine, migrate
from consumers.alert_store import latest_execution_dates, recent_durations
from processors.alerting import DURATION_HISTORY
from schemas.tables import backup_executions, backup_jobs

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 1, 2, 0)


def _fill(engine: Engine, label: str) -> list[int]:
    """Three jobs: one with a long history of mixed runs, one with a single failure, one
    with none. Their ids, in that order."""
    job_ids = []
    with engine.begin() as connection:
        for name in ("long history", "one failure", "no runs"):
            job_ids.append(
                connection.execute(
                    insert(backup_jobs)
                    .values(
                        job_name=f"{name} {label}",
                        target_server=f"srv-{label}",
                        created_at=START,
                        updated_at=START,
                    )
                    .returning(backup_jobs.c.id)
                ).scalar_one()
            )

        rows = []
        for day in range(3 * DURATION_HISTORY):
            result = "failed" if day % 4 == 3 else "success"
            duration = None if day % 7 == 5 else 600 + day
            rows.append((job_ids[0], START + timedelta(days=day), result, duration))
        # Two runs at the same moment: the later id counts as the more recent.
        rows.append((job_ids[0], START + timedelta(days=40), "success", 7000))
        rows.append((job_ids[0], START + timedelta(days=40), "success", 7100))
        rows.append((job_ids[1], START + timedelta(days=2), "failed", 30))
        connection.execute(
            insert(backup_executions),
            [
                {
                    "execution_uid": secrets.token_hex(16),
                    "report_id": f"{label}-{number}",
                    "job_id": job_id,
                    "execution_date": when,
                    "execution_result": result,
                    "duration_seconds": duration,
                    "received_at": when,
                    "created_at": when,
                }
                for number, (job_id, when, result, duration) in enumerate(rows)
            ],
        )
    return job_ids


def test_postgres_history_reads_match_the_portable_ones(db: Engine, tmp_path: Path) -> None:
    migrate(db)
    lite = make_engine(f"sqlite:///{tmp_path / 'history.db'}")
    migrate(lite)
    label = secrets.token_hex(3)
    answers = []
    for engine in (db, lite):
        job_ids = _fill(engine, label)
        with engine.connect() as connection:
            latest = latest_execution_dates(connection, job_ids)
            durations = recent_durations(connection, job_ids)
        # Keyed by position, since the two databases gave the jobs different ids.
        answers.append(
            (
                [latest[job_id] for job_id in job_ids],
                [durations[job_id] for job_id in job_ids],
            )
        )
    lite.dispose()

    on_postgres, on_sqlite = answers
    assert on_postgres == on_sqlite
    latest, durations = on_postgres
    assert latest == [START + timedelta(days=40), START + timedelta(days=2), None]
    assert len(durations[0]) == DURATION_HISTORY
    assert durations[0][-2:] == [7000, 7100]
    assert durations[1:] == [[], []]
