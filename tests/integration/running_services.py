"""The distributed deployment, started for real on loopback: the service trio and its clients.

``ServiceTrio`` runs ``backuphub ingest``, ``backuphub process`` and ``backuphub persist`` as
subprocesses of the test session (``sys.executable -m backuphub.cli ...``), each on a port the
OS hands out, each with its log in a file. A broker of a test's own, for drills that kill it,
is ``benchmarks.harness.PrivateKafka``, shared with the benchmark's drills. ``Agent`` and
``Reader`` speak the HTTP API the way an AOMEI agent and a dashboard do. Every wait here has a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import Engine, func, select, text

from backuphub.security import issue_token
from schemas.tables import backup_executions

API_KEY = "it-agent-key-" + "k" * 24
JWT_SECRET = "it-jwt-secret-" + "s" * 32
LOG_TAIL_LINES = 40

T = TypeVar("T")


# --- small tools -------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def new_topic_prefix() -> str:
    return f"it{secrets.token_hex(4)}."


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``check`` until it returns something truthy; ``TimeoutError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s (last: {last!r})")
        time.sleep(interval)
        last = check()
    return last


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"({path}: {error})"
    return "\n".join(text.splitlines()[-lines:])


# --- one service process ------------------------------------------------------------------

_LIVE: list[ServiceProcess] = []


def live_services() -> list[ServiceProcess]:
    """Services started and not stopped yet: their logs are shown when a test fails."""
    return list(_LIVE)


@dataclass
class ServiceProcess:
    """One ``backuphub`` subcommand, run in its own process group with its log in a file."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, f"{self.name} runs"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start {self.name} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backuphub.cli", *self.command],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, signalled as a whole
            )
        if self not in _LIVE:
            _LIVE.append(self)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        try:
            answer = httpx.get(f"{self.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.process.returncode if self.process else None
                raise RuntimeError(
                    f"{self.name} exited (code {code}) before it was healthy; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.25)
        raise TimeoutError(
            f"{self.name} on {self.url} not healthy within {timeout:.0f} s; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _signal(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        if self.alive():
            self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process is not None and self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        if self in _LIVE:
            _LIVE.remove(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)


# --- the trio -------------------------------------------------------------------------------


@dataclass
class ServiceTrio:
    """Ingest API, stream processor and persister of one deployment (one topic prefix)."""

    bootstrap_servers: str
    database_url: str
    topic_prefix: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BACKUPHUB_", "AOMEI_", "KAFKA_", "DATABASE_"))
        }
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "DATABASE_URL": self.database_url,
                "AOMEI_API_KEYS": API_KEY,
                "BACKUPHUB_JWT_SECRET": JWT_SECRET,
                "BACKUPHUB_TOPIC_PREFIX": self.topic_prefix,
                "BACKUPHUB_HOME": str(self.log_dir / "home"),
                "BACKUPHUB_PUBLISH_TIMEOUT": "3",
                "BACKUPHUB_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        self.env = env
        for name, command in (
            ("ingest", ["ingest", "--host", "127.0.0.1"]),
            ("processor", ["process"]),
            ("persister", ["persist", "--host", "127.0.0.1"]),
        ):
            port = free_port()
            self.services[name] = ServiceProcess(
                name=f"{name} ({self.topic_prefix})",
                command=[*command, "--port", str(port)],
                env=env,
                port=port,
                log_path=self.log_dir / f"{name}.log",
                workdir=self.log_dir / "work",
            )

    @property
    def ingest(self) -> ServiceProcess:
        return self.services["ingest"]

    @property
    def processor(self) -> ServiceProcess:
        return self.services["processor"]

    @property
    def persister(self) -> ServiceProcess:
        return self.services["persister"]

    @property
    def publish_timeout(self) -> float:
        return float(self.env["BACKUPHUB_PUBLISH_TIMEOUT"])

    def start(self, timeout: float = 90.0) -> None:
        """Start all three at once, then wait until each answers ``/health``."""
        for service in self.services.values():
            service.start()
        deadline = time.monotonic() + timeout
        for service in self.services.values():
            service.wait_healthy(max(1.0, deadline - time.monotonic()))

    def wait_until_flowing(self, timeout: float = 120.0) -> float:
        """Send one report of a job of its own and wait until the query API shows it.

        ``/health`` says each service is up, not that the processor and the persister have
        been given their partitions: a consumer group join can take long on a broker that
        other deployments share (the group ids do not depend on the topic prefix). Waiting
        here keeps that out of the tests' own deadlines. Returns the seconds it took.
        """
        started = time.monotonic()
        agent, reader = self.agent(), self.reader()
        try:
            label = f"it-warm-up-{self.topic_prefix.rstrip('.')}"
            job_id = agent.register(label, label)
            agent.accepted("status", {"job_id": job_id, "status": "success"})
            wait_until(
                lambda: reader.job(job_id)["latest_execution"] is not None,
                timeout=timeout,
                what=f"a first report through the pipeline of {self.topic_prefix}",
                interval=0.3,
            )
        finally:
            agent.close()
            reader.close()
        return time.monotonic() - started

    def restart(self, name: str, timeout: float = 60.0) -> None:
        service = self.services[name]
        service.stop()
        service.start()
        service.wait_healthy(timeout)

    def stop(self) -> None:
        for name in ("ingest", "processor", "persister"):
            self.services[name].stop()

    def agent(self) -> Agent:
        return Agent(self.ingest.url)

    def reader(self) -> Reader:
        return Reader(self.persister.url)

    def delete_topics(self) -> None:
        """Leave the shared broker as it was: drop this deployment's topics (best effort)."""
        from schemas.topics import Topics

        async def delete() -> None:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
            )
            try:
                await admin.start()
                await admin.delete_topics(Topics(self.topic_prefix).all(), timeout_ms=5000)
            finally:
                await admin.close()

        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(delete(), timeout=15))


def committed_offsets(bootstrap_servers: str, group_id: str, topic: str) -> int:
    """The sum of a consumer group's committed offsets on one topic (0 when none)."""

    async def read() -> int:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
        try:
            await admin.start()
            offsets = await admin.list_consumer_group_offsets(group_id)
        finally:
            await admin.close()
        return sum(
            max(0, meta.offset) for partition, meta in offsets.items() if partition.topic == topic
        )

    return asyncio.run(asyncio.wait_for(read(), timeout=20))


def rewind_group(bootstrap_servers: str, group_id: str, topic: str, timeout: float) -> int:
    """Commit the earliest offsets of ``topic`` for ``group_id``: as if every batch consumed
    so far had been written but its offset commit lost. Needs the group to have no live member
    (the broker refuses the commit until a killed member's session has expired), so it retries
    until ``timeout``. Returns how many events the group will read again.
    """

    async def rewind() -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        from backuphub.kafka_topics import PARTITIONS  # what ensure_topics creates

        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, number) for number in range(PARTITIONS)]
            consumer.assign(partitions)
            earliest = await consumer.beginning_offsets(partitions)
            deadline = time.monotonic() + timeout
            while True:
                committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
                try:
                    await consumer.commit(earliest)
                except KafkaError as error:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"could not rewind group {group_id} within {timeout:.0f} s; does "
                            f"another deployment's member live in it? ({error!r})"
                        ) from error
                    await asyncio.sleep(1.0)
                    continue
                return sum(committed[tp] - earliest[tp] for tp in partitions)
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(rewind(), timeout=timeout + 20))


def topic_end_offsets(bootstrap_servers: str, topic: str) -> int:
    """How many events were ever written to ``topic``."""
    from backuphub.kafka_topics import events_written

    return asyncio.run(asyncio.wait_for(events_written(bootstrap_servers, topic), timeout=20))


@contextlib.contextmanager
def job_row_locked(db: Engine) -> Iterator[Callable[[int], int]]:
    """Hold a row lock on a job (``FOR NO KEY UPDATE``) for the duration of the block.

    A persister transaction that writes executions of that job stops, open, at its first
    statement that locks or updates the job row. Yields ``lock(job_id)``, which takes the lock
    and returns this connection's backend pid.
    """
    with db.connect() as connection:
        transaction = connection.begin()
        try:

            def lock(job_id: int) -> int:
                connection.execute(
                    text("SELECT id FROM backup_jobs WHERE id = :id FOR NO KEY UPDATE"),
                    {"id": job_id},
                )
                return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())

            yield lock
        finally:
            transaction.rollback()


def backends_blocked_by(db: Engine, blocker_pid: int) -> dict[int, str]:
    """PostgreSQL backends waiting for a lock that ``blocker_pid`` holds, with their query."""
    with db.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT pid, query FROM pg_stat_activity"
                " WHERE :blocker = ANY(pg_blocking_pids(pid))"
            ),
            {"blocker": blocker_pid},
        ).all()
    return {int(row.pid): str(row.query) for row in rows}


def backend_alive(db: Engine, pid: int) -> bool:
    with db.connect() as connection:
        return bool(
            connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar_one()
        )


# --- the two kinds of clients -------------------------------------------------------------------


class Agent:
    """What an AOMEI agent does: register its tasks and report runs, with its API key."""

    def __init__(self, base_url: str, api_key: str = API_KEY) -> None:
        self.base_url = base_url
        self.headers = {"X-API-Key": api_key}
        self.http = httpx.Client(base_url=base_url, headers=self.headers, timeout=30.0)

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return self.http.post(f"/api/v1/aomei/{path}", json=body, **kwargs)

    def register(self, task_name: str, server: str, **fields: Any) -> int:
        answer = self.post(
            "register", {"job_id": 0, "task_name": task_name, "target_server": server, **fields}
        )
        assert answer.status_code == 200, answer.text
        return int(answer.json()["data"]["job_id"])

    def status(self, body: dict[str, Any]) -> httpx.Response:
        return self.post("status", body)

    def accepted(self, path: str, body: dict[str, Any]) -> str:
        """Post until the report is durable (a 503 is retried, bounded); its report id."""
        answer = self.post(path, body)
        for _ in range(20):
            if answer.status_code != 503:
                break
            time.sleep(0.5)
            answer = self.post(path, body)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
        return str(answer.json()["data"]["report_id"])

    def async_client(self, connections: int = 32) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=30.0,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def close(self) -> None:
        self.http.close()


class Reader:
    """What a dashboard does: read jobs with a viewer JWT."""

    def __init__(self, base_url: str) -> None:
        token = issue_token(JWT_SECRET, subject="integration-tests", role="viewer")
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(f"/api/v1/aomei/{path}", params=params)

    def jobs(self, **params: Any) -> dict[str, Any]:
        answer = self.get("jobs", **params)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def job(self, job_id: int) -> dict[str, Any]:
        answer = self.get(f"jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()["data"]
        return data

    def close(self) -> None:
        self.http.close()


# --- what is in PostgreSQL ------------------------------------------------------------------------


def execution_count(db: Engine, job_id: int) -> int:
    with db.connect() as connection:
        return int(
            connection.execute(
                select(func.count())
                .select_from(backup_executions)
                .where(backup_executions.c.job_id == job_id)
            ).scalar_one()
        )


def rows_per_report(db: Engine, job_id: int) -> dict[str, int]:
    """How many execution rows each report id of the job has."""
    with db.connect() as connection:
        rows = connection.execute(
            select(backup_executions.c.report_id, func.count())
            .where(backup_executions.c.job_id == job_id)
            .group_by(backup_executions.c.report_id)
        ).all()
    return {report_id: int(count) for report_id, count in rows}


def wait_for_reports(db: Engine, job_id: int, report_ids: Iterable[str], timeout: float) -> None:
    """Wait until every one of ``report_ids`` has at least one execution row."""
    wanted = set(report_ids)

    def missing() -> set[str]:
        return wanted - set(rows_per_report(db, job_id))

    deadline = time.monotonic() + timeout
    while True:
        left = missing()
        if not left:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{len(left)} of {len(wanted)} reports of job {job_id} not in PostgreSQL "
                f"after {timeout:.0f} s (e.g. {sorted(left)[:3]})"
            )
        time.sleep(0.3)


def settle(agent: Agent, db: Engine, job_id: int, timeout: float = 60.0) -> str:
    """A barrier: everything accepted for ``job_id`` before now is in PostgreSQL afterwards.

    Reports are keyed by job id all the way (reports topic, executions topic), so one job's
    reports stay in order; once a fresh marker report is stored, all earlier ones have been
    through the pipeline. Returns the marker's report id, to leave it out of counts.
    """
    marker = f"settle-{secrets.token_hex(8)}"
    agent.accepted("status", {"job_id": job_id, "status": "success", "report_id": marker})
    wait_for_reports(db, job_id, [marker], timeout)
    return marker
