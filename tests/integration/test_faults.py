"""Faults the pipeline must survive without losing or doubling an accepted report.

* the broker dies under load (killed with SIGKILL and started again);
* the persister dies with SIGKILL inside a write, and its restart replays stored executions;
* the processor dies after publishing executions but before committing its input, and its
  restart publishes them again;
* an agent replays one report a hundred times at once.

All of it runs on a broker of the module's own (``private_kafka``), never the shared one.

"Accepted" means answered 200: the ingest API promises that such a report is durable. A 503
promises nothing except a quick answer with ``Retry-After``; the agent sends it again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from benchmarks.harness import PrivateKafka
from consumers.persister import persister_group
from processors.stream import processor_group
from schemas.topics import Topics
from tests.integration.conftest import TrioFactory
from tests.integration.running_services import (
    Agent,
    ServiceTrio,
    backend_alive,
    backends_blocked_by,
    committed_offsets,
    execution_count,
    job_row_locked,
    rewind_group,
    rows_per_report,
    settle,
    topic_end_offsets,
    wait_for_reports,
    wait_until,
)

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 10.0  # how long the private broker stays dead before it is started again
ANSWER_MARGIN = 2.0  # an answer may take the publish timeout plus this much
STORED_DEADLINE = 120.0  # seconds for a backlog to drain into PostgreSQL after a fault


@pytest.fixture(scope="module")
def trio(private_kafka: PrivateKafka, start_module_trio: TrioFactory) -> ServiceTrio:
    """The deployment the module's tests share, on the module's broker."""
    services = start_module_trio(private_kafka.bootstrap_servers)
    services.wait_until_flowing()
    return services


def unique(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


def status_body(job_id: int, report_id: str | None = None, **fields: Any) -> dict[str, Any]:
    end = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    body = {
        "job_id": job_id,
        "status": "success",
        "start_time": (end - timedelta(minutes=20)).isoformat(),
        "end_time": end.isoformat(),
        "backup_size": 1024,
        **fields,
    }
    if report_id is not None:
        body["report_id"] = report_id
    return body


# --- the broker dies ------------------------------------------------------------------------


@dataclass
class Answer:
    report_id: str
    status: int | None  # None: no HTTP answer at all
    seconds: float
    retry_after: str | None
    sent_at: float
    error: str = ""


@dataclass
class OutageLog:
    answers: list[Answer] = field(default_factory=list)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    killed_at: float = float("inf")
    restarted_at: float = float("inf")

    def ok(self, after: float = 0.0) -> int:
        return sum(1 for a in self.answers if a.status == 200 and a.sent_at >= after)


async def _post(client: httpx.AsyncClient, body: dict[str, Any]) -> Answer:
    started = time.monotonic()
    report_id = body.get("report_id", "")
    try:
        response = await client.post("/api/v1/aomei/status", json=body)
    except httpx.HTTPError as error:
        return Answer(report_id, None, time.monotonic() - started, None, started, repr(error))
    return Answer(
        report_id,
        response.status_code,
        time.monotonic() - started,
        response.headers.get("retry-after"),
        started,
        "" if response.status_code in (200, 503) else response.text[:300],
    )


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def _post_through_outage(
    agent: Agent, broker: PrivateKafka, job_id: int, run: str, max_reports: int
) -> OutageLog:
    """Four agents post distinct reports while the broker is killed and started again."""
    log = OutageLog()
    numbers = iter(range(max_reports))
    stop = asyncio.Event()

    async def one_agent(client: httpx.AsyncClient) -> None:
        for number in numbers:
            if stop.is_set():
                return
            body = status_body(job_id, f"{run}-{number:04d}")
            log.bodies[body["report_id"]] = body
            log.answers.append(await _post(client, body))
            await asyncio.sleep(0.1)

    async with agent.async_client(connections=4) as client:
        agents = [asyncio.create_task(one_agent(client)) for _ in range(4)]
        restarted = False
        try:
            await _until(lambda: log.ok() >= 10, 60, "10 reports accepted before the outage")
            log.killed_at = time.monotonic()
            await asyncio.to_thread(broker.kill)
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(broker.start)
            restarted = True
            log.restarted_at = time.monotonic()
            await _until(
                lambda: log.ok(after=log.restarted_at) >= 10,
                90,
                "10 reports accepted after the broker came back",
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*agents, return_exceptions=True), timeout=30)
            if not restarted:  # the module's next tests need the broker
                await asyncio.to_thread(broker.start)
    return log


def _resend_until_accepted(agent: Agent, bodies: dict[str, dict[str, Any]], timeout: float) -> int:
    """What an agent does with its 503s: send them again until each is accepted."""
    waiting = dict(bodies)
    rounds = 0
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} refused reports still refused after {timeout} s")
        rounds += 1
        for report_id, body in list(waiting.items()):
            answer = agent.status(body)
            assert answer.status_code in (200, 503), answer.text
            if answer.status_code == 200:
                del waiting[report_id]
        if waiting:
            time.sleep(1.0)
    return rounds


def test_broker_outage_loses_no_accepted_report(
    private_kafka: PrivateKafka, start_trio: TrioFactory, db: Engine
) -> None:
    trio = start_trio(private_kafka.bootstrap_servers, BACKUPHUB_RETRY_AFTER="1")
    # The drill is about a running pipeline: a processor still joining its group when the
    # broker dies is assigned no partitions until it restarts (see processors/app.py).
    trio.wait_until_flowing()
    agent = trio.agent()
    job_id = agent.register(unique("Outage drill"), unique("srv-outage"))
    run = unique("outage")

    log = asyncio.run(_post_through_outage(agent, private_kafka, job_id, run, max_reports=600))

    bound = trio.publish_timeout + ANSWER_MARGIN
    statuses = Counter(answer.status for answer in log.answers)
    slow = [a for a in log.answers if a.seconds > bound]
    odd = [a for a in log.answers if a.status not in (200, 503)]
    assert not odd, f"answers other than 200/503: {odd[:5]}"
    assert not slow, f"{len(slow)} answers slower than {bound} s, e.g. {slow[:3]}"
    refused = [a for a in log.answers if a.status == 503]
    assert refused, f"the outage refused nothing ({statuses}): the drill did not bite"
    assert all(a.retry_after and int(a.retry_after) > 0 for a in refused)
    assert all(a.sent_at >= log.killed_at - trio.publish_timeout for a in refused)

    # Every 200 is stored without any help; then the agent resends its 503s.
    accepted_first = {a.report_id for a in log.answers if a.status == 200}
    wait_for_reports(db, job_id, accepted_first, STORED_DEADLINE)
    bodies = {a.report_id: log.bodies[a.report_id] for a in refused}
    delivered_anyway = len(set(bodies) & set(rows_per_report(db, job_id)))
    rounds = _resend_until_accepted(agent, bodies, timeout=90)

    everything = accepted_first | set(bodies)
    assert len(everything) == len(log.answers), "each report id was sent once in the drill"
    wait_for_reports(db, job_id, everything, STORED_DEADLINE)
    marker = settle(agent, db, job_id)
    stored = rows_per_report(db, job_id)
    stored.pop(marker)
    assert set(stored) == everything
    doubled = {report_id: n for report_id, n in stored.items() if n != 1}
    assert not doubled, f"reports stored more than once: {doubled}"
    print(
        f"\noutage drill: {len(log.answers)} reports, {dict(statuses)}, "
        f"max answer {max(a.seconds for a in log.answers):.2f} s, {delivered_anyway} of the "
        f"503s stored before their resend, resent in {rounds} round(s)"
    )
    agent.close()


# --- the persister dies ----------------------------------------------------------------------


async def _post_all(agent: Agent, bodies: list[dict[str, Any]], connections: int) -> list[Answer]:
    async with agent.async_client(connections=connections) as client:
        gate = asyncio.Semaphore(connections)

        async def post(body: dict[str, Any]) -> Answer:
            async with gate:
                return await _post(client, body)

        return await asyncio.gather(*(post(body) for body in bodies))


@dataclass
class KillDrill:
    answers: list[Answer]
    rows_at_kill: int  # committed rows when the persister was killed
    rows_after_kill: int  # once its killed transaction was gone


async def _post_and_kill_persister(
    trio: ServiceTrio, agent: Agent, db: Engine, bodies: list[dict[str, Any]], kill_at: int
) -> KillDrill:
    """Post every body; once ``kill_at`` rows are stored, catch the persister inside a write
    transaction and SIGKILL it there.

    The test holds a row lock on the job, so the persister's next batch transaction stops at
    its first statement touching that row (whichever it is) and stays open: the kill is sure
    to land inside a write, not between two.
    """
    job_id = bodies[0]["job_id"]
    posting = asyncio.create_task(_post_all(agent, bodies, connections=32))
    try:
        await _until(lambda: posting.done() or execution_count(db, job_id) >= kill_at, 120, "rows")
        assert not posting.done(), "all reports were posted before the persister stored any"

        with job_row_locked(db) as lock:
            blocker = lock(job_id)
            [(writer, statement)] = (
                await asyncio.to_thread(
                    wait_until,
                    lambda: backends_blocked_by(db, blocker),
                    timeout=60,
                    what="the persister's write transaction waiting on the job row",
                )
            ).items()
            assert "backup_jobs" in statement, statement
            rows_at_kill = execution_count(db, job_id)
            trio.persister.kill()
        # The lock is gone: the killed persister's transaction ends without a commit.
        await asyncio.to_thread(
            wait_until, lambda: not backend_alive(db, writer), timeout=30, what="backend gone"
        )
        rows_after_kill = execution_count(db, job_id)
        answers = await asyncio.wait_for(posting, timeout=180)
    finally:
        posting.cancel()
    return KillDrill(answers, rows_at_kill, rows_after_kill)


def test_persister_killed_mid_write_stores_each_execution_once(
    trio: ServiceTrio, db: Engine
) -> None:
    """SIGKILL inside a write transaction, then a restart that replays what was stored."""
    count = 2000
    agent = trio.agent()
    job_id = agent.register(unique("Kill drill"), unique("srv-kill"))
    run = unique("kill")
    bodies = [status_body(job_id, f"{run}-{n:05d}") for n in range(count)]

    started = time.monotonic()
    drill = asyncio.run(_post_and_kill_persister(trio, agent, db, bodies, kill_at=count // 10))
    posted_in = time.monotonic() - started
    assert Counter(a.status for a in drill.answers) == {200: count}, drill.answers[:3]
    assert not trio.persister.alive()
    assert 0 < drill.rows_at_kill < count
    assert drill.rows_after_kill == drill.rows_at_kill, "half a batch survived the kill"

    # The crash the persister is built for: rows committed, offsets not. Rewinding the group
    # makes the restarted persister read everything again, the stored rows included.
    topic = f"{trio.topic_prefix}executions"
    group = persister_group(Topics(trio.topic_prefix))
    rewinding = time.monotonic()
    replayed = rewind_group(trio.bootstrap_servers, group, topic, timeout=40)
    assert replayed >= drill.rows_at_kill
    assert committed_offsets(trio.bootstrap_servers, group, topic) == 0

    restarting = time.monotonic()
    trio.restart("persister")
    wait_for_reports(db, job_id, (body["report_id"] for body in bodies), STORED_DEADLINE)
    marker = settle(agent, db, job_id)
    drained = time.monotonic()

    stored = rows_per_report(db, job_id)
    stored.pop(marker)
    assert len(stored) == count
    assert set(stored) == {body["report_id"] for body in bodies}
    assert set(stored.values()) == {1}, "a report stored twice"
    assert execution_count(db, job_id) == count + 1
    print(
        f"\nkill drill: {count} reports posted in {posted_in:.1f} s; persister killed inside a "
        f"write with {drill.rows_at_kill} rows stored; {replayed} events replayed after the "
        f"restart; all {count} stored once (rewind {restarting - rewinding:.1f} s, restart and "
        f"drain {drained - restarting:.1f} s)"
    )
    agent.close()


def test_processor_killed_between_publishing_and_committing_adds_no_row(
    trio: ServiceTrio, db: Engine
) -> None:
    """Outputs published, input offsets lost: the restart publishes every execution again and
    the persister keeps one row per report."""
    count = 500
    agent = trio.agent()
    job_id = agent.register(unique("Processor drill"), unique("srv-processor"))
    run = unique("processor")
    bodies = [status_body(job_id, f"{run}-{n:05d}") for n in range(count)]
    for body in bodies:
        agent.accepted("status", body)
    wait_for_reports(db, job_id, (body["report_id"] for body in bodies), STORED_DEADLINE)

    # The crash between the two steps: SIGKILL, then the group's offsets put back to the start
    # of the reports topic, as if no commit after the outputs had ever reached the broker.
    topics = Topics(trio.topic_prefix)
    executions_topic = topics.executions
    published_before = topic_end_offsets(trio.bootstrap_servers, executions_topic)
    trio.processor.kill()
    group = processor_group(topics)
    replayed = rewind_group(trio.bootstrap_servers, group, topics.reports, timeout=40)
    assert replayed >= count

    trio.processor.start()
    trio.processor.wait_healthy(60)
    wait_until(
        lambda: (
            topic_end_offsets(trio.bootstrap_servers, executions_topic)
            >= published_before + replayed
        ),
        timeout=STORED_DEADLINE,
        what="the replayed reports' executions on the topic",
        interval=0.5,
    )
    marker = settle(agent, db, job_id)

    stored = rows_per_report(db, job_id)
    stored.pop(marker)
    assert set(stored) == {body["report_id"] for body in bodies}
    assert set(stored.values()) == {1}, "a replayed execution stored twice"
    assert execution_count(db, job_id) == count + 1
    agent.close()


# --- an agent replays one report ---------------------------------------------------------------


@pytest.mark.parametrize("keyed_by", ["report_id", "content"])
def test_one_report_replayed_100_times_at_once_is_one_execution(
    trio: ServiceTrio, db: Engine, keyed_by: str
) -> None:
    agent = trio.agent()
    job_id = agent.register(unique("Replay"), unique("srv-replay"))
    report_id = unique("replay") if keyed_by == "report_id" else None
    body = status_body(job_id, report_id, status="failed", error_message="VSS snapshot failed")

    answers = asyncio.run(_post_all(agent, [body] * 100, connections=50))
    assert Counter(a.status for a in answers) == {200: 100}, answers[:3]

    marker = settle(agent, db, job_id)
    stored = rows_per_report(db, job_id)
    stored.pop(marker)
    assert list(stored.values()) == [1], stored
    if report_id is not None:
        assert set(stored) == {report_id}
    agent.close()
