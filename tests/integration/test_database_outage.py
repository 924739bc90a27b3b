"""PostgreSQL stopped under load, on a cluster of the test's own (the shared one is never
touched): ingest keeps accepting the reports of known jobs, the persister waits without
committing offsets, and when the database is back the backlog drains, each report once.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from benchmarks.harness import PrivatePostgres, postgres_binaries
from consumers.persister import persister_group
from schemas.topics import Topics
from tests.integration.conftest import TrioFactory, services_unavailable
from tests.integration.running_services import (
    Agent,
    committed_offsets,
    rows_per_report,
    settle,
    wait_for_reports,
)
from tests.integration.test_faults import status_body, unique

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 8.0
RATE = 40  # reports per second while the database comes and goes
STORED_DEADLINE = 120.0


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A cluster of this test's own, made with initdb as the ``postgres`` user."""
    if postgres_binaries() is None or shutil.which("runuser") is None:
        services_unavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl) or runuser on this machine"
        )
    # Under /tmp, which the postgres user can reach; pytest's own folders are root's alone.
    cluster = PrivatePostgres(Path(tempfile.mkdtemp(prefix="backuphub-it-pg-")))
    cluster.init()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def private_db(private_postgres: PrivatePostgres) -> Iterator[Engine]:
    engine = create_engine(
        private_postgres.url, pool_pre_ping=True, connect_args={"connect_timeout": 5}
    )
    yield engine
    engine.dispose()


class Poster(threading.Thread):
    """Posts ``count`` reports of one job at ``RATE`` per second; keeps each answer."""

    def __init__(self, agent: Agent, job_id: int, run: str, count: int) -> None:
        super().__init__(daemon=True)
        self.bodies = [status_body(job_id, f"{run}-{n:05d}") for n in range(count)]
        self.agent = agent
        self.answers: list[tuple[str, int, float]] = []

    def run(self) -> None:
        started = time.monotonic()
        for number, body in enumerate(self.bodies):
            time.sleep(max(0.0, started + number / RATE - time.monotonic()))
            sent = time.monotonic()
            status = self.agent.status(body).status_code
            self.answers.append((body["report_id"], status, time.monotonic() - sent))


def test_postgres_stopped_under_load_loses_nothing_and_drains_after(
    private_postgres: PrivatePostgres, private_db: Engine, start_trio: TrioFactory
) -> None:
    trio = start_trio(None, DATABASE_URL=private_postgres.url)
    trio.wait_until_flowing()
    agent = trio.agent()
    job_id = agent.register(unique("Database drill"), unique("srv-database"))
    settle(agent, private_db, job_id)  # the job is known to ingest before the outage

    count = int(RATE * (OUTAGE_SECONDS + 8))
    poster = Poster(agent, job_id, unique("database"), count)
    poster.start()
    time.sleep(2.0)

    private_postgres.stop("fast")
    topics = Topics(trio.topic_prefix)
    group = persister_group(topics)
    time.sleep(2.0)
    offsets_early = committed_offsets(trio.bootstrap_servers, group, topics.executions)
    time.sleep(OUTAGE_SECONDS - 2.0)
    offsets_late = committed_offsets(trio.bootstrap_servers, group, topics.executions)
    private_postgres.start()

    poster.join(timeout=count / RATE + 60)
    assert not poster.is_alive()
    statuses = Counter(status for _, status, _ in poster.answers)
    assert statuses == {200: count}, statuses
    slowest = max(seconds for _, _, seconds in poster.answers)
    assert slowest < trio.publish_timeout + 2.0
    assert offsets_late == offsets_early, "the persister committed offsets without the database"

    report_ids = [report_id for report_id, _, _ in poster.answers]
    wait_for_reports(private_db, job_id, report_ids, STORED_DEADLINE)
    marker = settle(agent, private_db, job_id)
    stored = rows_per_report(private_db, job_id)
    stored.pop(marker)
    assert set(report_ids) <= set(stored)
    assert {stored[report_id] for report_id in report_ids} == {1}, "a report stored twice"
    print(
        f"\ndatabase drill: {count} reports at {RATE}/s, PostgreSQL down {OUTAGE_SECONDS:.0f} s; "
        f"all answered 200 (slowest {slowest:.2f} s), offsets held at {offsets_early}, "
        f"all stored once after the restart"
    )
    agent.close()
