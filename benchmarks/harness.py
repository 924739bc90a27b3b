"""What the benchmarks and the drills share: services as subprocesses on loopback, a fresh
database per run, a private broker or PostgreSQL when a drill must kill one, process memory and
CPU from ``/proc``, the exactly-once count, and a description of the machine.

Everything here talks only to 127.0.0.1. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO_ROOT / "deploy" / "local" / "kafka.sh"


def postgres_binaries() -> Path | None:
    """The folder of the newest installed PostgreSQL server (Debian's layout), if any."""
    folders = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    found = [folder for folder in folders if (folder / "initdb").exists()]
    return found[-1] if found else None


API_KEY = "bench-agent-key-" + "k" * 24
JWT_SECRET = "bench-jwt-secret-" + "s" * 32
SHARED_KAFKA = os.environ.get("BENCH_KAFKA", "127.0.0.1:9092")
SHARED_PG = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://backuphub:backuphub@127.0.0.1:5432/backuphub"
)
PAGE = 4096


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def only_loopback(url: str) -> str:
    """Refuse any target that is not this machine's loopback."""
    host = httpx.URL(url).host if "://" in url else url.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise ValueError(f"benchmarks only target loopback, not {url!r}")
    return url


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s (last {value!r})")
        time.sleep(every)


# --- processes ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(child) for child in text.split())
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if Path(f"/proc/{current}").exists():
            tree.append(current)
            todo.extend(_children(current))
    return tree


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of one process (children that exited not counted)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class Service:
    """One process group (a backuphub subcommand or any module), with its log in a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    workdir: Path
    health_path: str = "/health"
    process: subprocess.Popen[bytes] | None = None
    peak_rss: int = 0
    peak_rss_per_process: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} start {self.name} =====\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.alive() and self.process else []

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + self.health_path, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; see {self.log_path}:\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not healthy in {timeout:.0f} s:\n{self.tail()}")

    def signal(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL to the whole group, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)

    def stop(self, grace: float = 15.0) -> None:
        if self.process is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=10)
        self.signal(signal.SIGKILL)  # anything it left behind in its group

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def metric(self, name: str) -> float:
        """The sum of a Prometheus counter's samples on ``/metrics`` (0 when unreachable)."""
        try:
            text = httpx.get(self.url + "/metrics", timeout=2.0).text
        except httpx.HTTPError:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head.split("{")[0] in (name, name + "_total"):
                    total += float(value)
        return total


class Sampler:
    """Samples the memory and CPU of services every ``every`` seconds, in a thread."""

    def __init__(self, services: Iterable[Service], every: float = 0.25) -> None:
        self.services = list(services)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu: dict[int, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            for service in self.services:
                pids = service.pids()
                sizes = [rss_bytes(pid) for pid in pids]
                service.peak_rss = max(service.peak_rss, sum(sizes))
                service.peak_rss_per_process = max(service.peak_rss_per_process, *sizes, 0)
                for pid in pids:
                    self._cpu[pid] = cpu_seconds(pid)
            self._stop.wait(self.every)

    def cpu_of(self, service: Service) -> float:
        return sum(cpu_seconds(pid) for pid in service.pids())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- PostgreSQL ---------------------------------------------------------------------------


def plain_dsn(url: str) -> str:
    """psycopg's form of a SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def fresh_database(admin_url: str = SHARED_PG, label: str = "bench") -> Iterator[str]:
    """A new, empty database for one run; dropped afterwards."""
    name = f"{label}_{secrets.token_hex(4)}"
    with psycopg.connect(plain_dsn(admin_url), autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(plain_dsn(admin_url), autocommit=True, connect_timeout=5) as admin,
        ):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_version(url: str) -> str:
    with psycopg.connect(plain_dsn(url), connect_timeout=5) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


@dataclass
class PrivatePostgres:
    """A PostgreSQL of a drill's own (initdb in a temporary folder, run as ``postgres``) that
    the drill may stop and start; the shared cluster on 5432 is never touched."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://backuphub:backuphub@127.0.0.1:{self.port}/backuphub"

    @property
    def binaries(self) -> Path:
        folder = postgres_binaries()
        if folder is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        return folder

    def _as_postgres(self, *argv: str, timeout: float = 60) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._as_postgres(
            str(self.binaries / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        self.start()
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as admin:
            admin.execute("CREATE ROLE backuphub LOGIN PASSWORD 'backuphub' CREATEDB")
            admin.execute("CREATE DATABASE backuphub OWNER backuphub")

    def start(self) -> None:
        self._as_postgres(
            str(self.binaries / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l",
            str(self.root / "postgres.log"), "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._as_postgres(
                str(self.binaries / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", mode,
                "stop",
            )  # fmt: skip

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- Kafka --------------------------------------------------------------------------------


def kafka_version() -> str:
    libs = Path.home() / ".cache" / "backuphub" / "kafka-libs"
    for jar in sorted(libs.glob("kafka_2.13-*.jar")):
        return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
    return "?"


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Leave the broker as it was: drop one run's topics (best effort)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from schemas.topics import Topics

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = Topics(prefix).all()
            names = [name for name in wanted if name in existing]
            if names:
                await admin.delete_topics(names, timeout_ms=5000)
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(asyncio.wait_for(delete(), timeout=20))


def group_offsets(bootstrap: str, group: str) -> dict[str, int]:
    """The committed offsets of a consumer group, as ``topic:partition -> offset``."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {f"{tp.topic}:{tp.partition}": meta.offset for tp, meta in offsets.items()}

    return asyncio.run(asyncio.wait_for(read(), timeout=20))


def file_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' when it is not there)."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class PrivateKafka:
    """A single-node broker of a drill's or a test's own, on free ports with its own data
    folder, via ``kafka.sh``; it may be killed and started again."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    wait_timeout: int = 90  # seconds kafka.sh waits for the broker to answer

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kafka" / "kafka.log"

    def _run(self, command: str, timeout: float) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KAFKA_", "BACKUPHUB_STATE"))
        }
        env.update(
            {
                "KAFKA_PORT": str(self.port),
                "KAFKA_CONTROLLER_PORT": str(self.controller_port),
                "BACKUPHUB_STATE": str(self.state_dir),
                "KAFKA_WAIT_PYTHON": sys.executable,
                "KAFKA_WAIT_TIMEOUT": str(self.wait_timeout),
                "KAFKA_STOP_TIMEOUT": "20",
            }
        )
        result = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"kafka.sh {command} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
                f"\nlast lines of {self.log_path}:\n{file_tail(self.log_path)}"
            )

    def start(self) -> None:
        self._run("start", timeout=300)  # a first start may fetch the jars

    def kill(self) -> None:
        self._run("kill", timeout=30)

    def stop(self) -> None:
        try:
            self._run("stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            self._kill_by_pid_file()
            raise

    def _kill_by_pid_file(self) -> None:
        """Last resort when ``kafka.sh stop`` failed: the pid the script recorded for us."""
        pid_file = self.state_dir / "kafka" / "kafka.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(self.state_dir).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)

    def remove_data(self) -> None:
        shutil.rmtree(self.state_dir / "kafka" / "data", ignore_errors=True)

    def remove(self) -> None:
        """Stop it (as best it can) and delete its whole folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)


# --- the deployments under test -------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BACKUPHUB_", "AOMEI_", "KAFKA_", "DATABASE_"))
    }
    env.update(
        {
            "AOMEI_API_KEYS": API_KEY,
            "BACKUPHUB_JWT_SECRET": JWT_SECRET,
            "BACKUPHUB_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def backuphub(*args: str) -> list[str]:
    return [sys.executable, "-m", "backuphub.cli", *args]


@dataclass
class Deployment:
    """A set of services that together are one system under test."""

    name: str
    services: dict[str, Service]
    database_url: str
    ingest_name: str = "ingest"

    @property
    def ingest(self) -> Service:
        return self.services[self.ingest_name]

    def start(self, timeout: float = 120.0) -> None:
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_healthy(timeout)

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()


def distributed(
    workdir: Path,
    database_url: str,
    prefix: str,
    bootstrap: str = SHARED_KAFKA,
    *,
    ingest_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> Deployment:
    only_loopback(bootstrap)
    env = base_env(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        DATABASE_URL=database_url,
        BACKUPHUB_TOPIC_PREFIX=prefix,
        BACKUPHUB_PUBLISH_TIMEOUT="3",
        BACKUPHUB_HOME=str(workdir / "home"),
        **(extra_env or {}),
    )
    services = {}
    for name, command in (
        ("ingest", ["ingest", *ingest_args]),
        ("processor", ["process"]),
        ("persister", ["persist"]),
    ):
        port = free_port()
        services[name] = Service(
            name=name,
            argv=backuphub(*command, "--port", str(port)),
            env=env,
            port=port,
            log_path=workdir / f"{name}.log",
            workdir=workdir / name,
        )
    return Deployment("distributed", services, database_url)


def embedded(workdir: Path) -> Deployment:
    port = free_port()
    env = base_env(BACKUPHUB_HOME=str(workdir / "home"))
    service = Service(
        name="serve",
        argv=backuphub("serve", "--port", str(port)),
        env=env,
        port=port,
        log_path=workdir / "serve.log",
        workdir=workdir / "serve",
    )
    return Deployment(
        "embedded",
        {"serve": service},
        f"sqlite:///{workdir / 'home' / 'backuphub.db'}",
        "serve",
    )


def baseline(workdir: Path, database_url: str) -> Deployment:
    port = free_port()
    env = base_env(DATABASE_URL=database_url)
    service = Service(
        name="baseline",
        argv=[sys.executable, "-m", "benchmarks.baseline_app", "--port", str(port)],
        env=env,
        port=port,
        log_path=workdir / "baseline.log",
        workdir=REPO_ROOT,
    )
    return Deployment("baseline", {"baseline": service}, database_url, "baseline")


# --- agents' registration -----------------------------------------------------------------


def register_jobs(url: str, count: int, label: str, concurrency: int = 50) -> list[int]:
    """Register ``count`` jobs through the API as agents do; their ids in order."""
    only_loopback(url)

    async def run() -> list[int]:
        ids: list[int] = [0] * count
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": API_KEY}, timeout=30, limits=limits
        ) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(count):
                queue.put_nowait(index)

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    body = {
                        "job_id": 0,
                        "task_name": f"System Backup {label}-{index}",
                        "target_server": f"srv-{label}-{index:05d}",
                        "target_path": f"\\\\nas01\\backups\\srv-{index:05d}",
                        "job_type": "system_image",
                    }
                    for _ in range(10):
                        try:
                            answer = await client.post("/api/v1/aomei/register", json=body)
                        except httpx.HTTPError:
                            await asyncio.sleep(0.5)
                            continue
                        if answer.status_code == 200:
                            ids[index] = int(answer.json()["data"]["job_id"])
                            break
                        await asyncio.sleep(0.5)
                    else:
                        raise RuntimeError(f"could not register job {index}")

            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 600)
        return ids

    return asyncio.run(run())


# --- end-to-end visibility and the exactly-once count --------------------------------------


class RowWatcher:
    """Notes when each execution row becomes visible to a reader (first poll that sees it).

    Polls ``backup_executions`` by its ever-growing id every ``every`` seconds. The persister is
    the only writer and commits batches in order, so no row appears below the last id seen.
    """

    def __init__(self, database_url: str, every: float = 0.05) -> None:
        self.dsn = plain_dsn(database_url)
        self.every = every
        self.seen: dict[str, float] = {}
        self._last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as connection:
            while not self._stop.is_set():
                rows = connection.execute(
                    "SELECT id, report_id FROM backup_executions WHERE id > %s ORDER BY id",
                    (self._last,),
                ).fetchall()
                now = time.time()
                for row_id, report_id in rows:
                    self.seen.setdefault(report_id, now)
                    self._last = max(self._last, row_id)
                self._stop.wait(self.every)

    def __enter__(self) -> RowWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def rows_for(database_url: str, report_ids: Iterable[str]) -> dict[str, Any]:
    """Exactly once, counted: for the given (acknowledged) report ids, how many have no row and
    how many have more than one; and the table's totals."""
    wanted = list(dict.fromkeys(report_ids))
    query = "SELECT report_id, count(*) FROM backup_executions GROUP BY report_id"
    counts: dict[str, int]
    if database_url.startswith("sqlite"):
        import sqlite3

        lite = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30)
        try:
            counts = dict(lite.execute(query).fetchall())
        finally:
            lite.close()
    else:
        with psycopg.connect(plain_dsn(database_url), connect_timeout=5) as connection:
            counts = dict(connection.execute(query).fetchall())
    missing = [r for r in wanted if r not in counts]
    duplicated = [r for r in wanted if counts.get(r, 0) > 1]
    wanted_set = set(wanted)
    return {
        "acknowledged": len(wanted),
        "persisted_once": sum(1 for r in wanted if counts.get(r) == 1),
        "missing": len(missing),
        "duplicated": len(duplicated),
        "missing_examples": missing[:5],
        "duplicated_examples": duplicated[:5],
        "rows_total": int(sum(counts.values())),
        "rows_of_unacknowledged_reports": int(
            sum(n for r, n in counts.items() if r not in wanted_set)
        ),
    }


def wait_persisted(
    database_url: str, report_ids: Iterable[str], timeout: float, every: float = 1.0
) -> dict[str, Any]:
    """Wait (bounded) until every acknowledged report has a row; the final count."""
    wanted = list(report_ids)
    deadline = time.monotonic() + timeout
    while True:
        counted = rows_for(database_url, wanted)
        if counted["missing"] == 0 or time.monotonic() > deadline:
            return counted
        time.sleep(every)


# --- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    versions = {}
    for package in (
        "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "aiokafka",
        "sqlalchemy", "psycopg", "orjson",
    ):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    with contextlib.suppress(Exception):
        versions["postgresql"] = server_version(SHARED_PG)
    versions["kafka"] = kafka_version()
    versions["python"] = platform.python_version()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "cpu_model": model,
        "kernel": platform.release(),
        "versions": versions,
    }


def scratch(label: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"backuphub-{label}-"))
