"""A load generator that acts as many AOMEI agents, in a process of its own.

It speaks HTTP/1.1 itself (asyncio protocols on uvloop, keep-alive, pre-built request heads)
rather than through an HTTP client library, so that on a two-core machine it costs far less
CPU than the server it measures; ``--mode closed`` against ``benchmarks.trivial_server`` shows
how many requests per second it can drive at all.

Modes:

* ``closed``: ``--connections`` agents on keep-alive connections, each sending its next report
  as soon as the previous one is answered, for ``--duration`` seconds (at most ``--count``).
* ``rate``: reports at a fixed ``--rate`` per second for ``--duration`` seconds, spread over a
  pool of keep-alive connections (an idle one is taken, else a new one is opened, up to
  ``--connections``). Latency is timed from the write of the request; how late a report was
  sent against its schedule is kept separately.
* ``burst``: ``--count`` distinct agents, each with its own job and a new connection, arriving
  at random moments within ``--window`` seconds.
* ``replay``: the same report (one report id) ``--count`` times at once, each on its own
  connection.

Every agent retries a 503 after its ``Retry-After`` (at most ``--max-retries`` times, capped
at ``--retry-cap`` seconds) and a refused or broken connection after a second; no request
waits longer than ``--timeout``. Every request loop ends by itself: by count and by time
(``--hard-stop``).

Output: ``--attempts`` gets one line per attempt, tab-separated:
``status report_id wall_time_at_answer latency_s attempt kind`` (status 0 is a time-out, -1 a
connection failure); ``--summary`` gets a JSON object with counts and the generator's own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson

try:  # pragma: no cover - uvloop is part of uvicorn[standard]
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

TIMEOUT_STATUS = 0
CONNECTION_FAILED = -1

STATUS_WEIGHTS = (("success", 85), ("warning", 7), ("failed", 6), ("Unknown", 2))
MEDIA = ("network", "disk", "external_hdd", "cloud")
ERRORS = (
    "Failed to write file. The network name cannot be found.",
    "The shadow copy of the volume could not be created.",
    "Backup destination is full.",
)


# --- the reports agents send ---------------------------------------------------------------------


@dataclass
class ReportFactory:
    """Realistic report bodies: status reports, analysed logs and raw AOMEI history entries."""

    id_prefix: str
    seed: int
    mix: dict[str, float] = field(
        default_factory=lambda: {"status": 0.70, "parsed": 0.25, "raw": 0.05}
    )
    sequence: int = 0
    last_entry_time: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.kinds = list(self.mix)
        self.weights = [self.mix[kind] for kind in self.kinds]
        self.statuses = [s for s, _ in STATUS_WEIGHTS]
        self.status_weights = [w for _, w in STATUS_WEIGHTS]
        self.base_time = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def entry_time(self, job_id: int) -> int:
        """A history entry's time, a day ago and never the same twice for one job.

        The pipeline identifies a history entry by its job, task and time, as AOMEI does; two
        reports that shared one would be one run, and the exactly-once count would miss one of
        their report ids. Each generator process has jobs of its own, and a later phase (a new
        process) starts from a later clock, so the times stay apart across phases too.
        """
        epoch = max(int(time.time()) - 86_400, self.last_entry_time.get(job_id, 0) + 1)
        self.last_entry_time[job_id] = epoch
        return epoch

    def next_report_id(self) -> str:
        self.sequence += 1
        return f"{self.id_prefix}-{self.sequence}"

    def make(self, job_id: int, report_id: str | None = None) -> tuple[str, str, bytes]:
        """(path, report_id, body) of one report of ``job_id``."""
        rnd = self.random
        report_id = report_id or self.next_report_id()
        kind = rnd.choices(self.kinds, self.weights)[0]
        duration = rnd.randint(60, 7200)
        start = self.base_time + timedelta(seconds=rnd.randint(0, 80_000))
        end = start + timedelta(seconds=duration)
        status = rnd.choices(self.statuses, self.status_weights)[0]
        size = rnd.randint(10**8, 5 * 10**11)
        server = f"srv-{job_id:05d}"
        task = f"System Backup {job_id}"

        if kind == "raw":
            epoch = self.entry_time(job_id)
            result, code = ("Failed", 4103) if status == "failed" else ("Success", 0)
            guid = f"3f2504e0-4f89-41d3-9a0c-{job_id:012d}"
            xml = (
                f'<Log ID="{{{guid}}}"><Time>{epoch}</Time><Task>{task}</Task>'
                f"<Operation>System Backup</Operation><Result>{result}</Result>"
                f"<ResultCode>{code}</ResultCode>"
                f"<Detail>The operation completed with result {code}.</Detail></Log>"
            )
            body: dict[str, Any] = {
                "job_id": job_id,
                "log_file_path": "C:\\ProgramData\\AomeiBR\\brlog.xml",
                "raw_entries": {"format": "xml", "xml": xml, "task_id": guid},
                "report_id": report_id,
            }
            return "/api/v1/aomei/log-analysis", report_id, orjson.dumps(body)

        fields: dict[str, Any] = {
            "task_name": task,
            "status": status,
            "start_time": start.isoformat(),
            "end_time": end.isoformat(),
            "duration": duration,
            "backup_size": size,
            "details": f"Backed up {size // 10**6} MB from C:, D: in {duration} s",
        }
        if status == "failed":
            fields["error_message"] = rnd.choice(ERRORS)

        if kind == "parsed":
            body = {
                "job_id": job_id,
                "log_file_path": "C:\\Program Files (x86)\\AOMEI Backupper\\log\\Backup.log",
                "parsed_data": fields,
                "report_id": report_id,
            }
            return "/api/v1/aomei/log-analysis", report_id, orjson.dumps(body)

        media = rnd.choice(MEDIA)
        body = {
            "job_id": job_id,
            **fields,
            "copy_type": "primary",
            "media_type": media,
            "storage_path": f"\\\\nas01\\backups\\{server}" if media == "network" else "E:\\Backup",
            "report_id": report_id,
        }
        return "/api/v1/aomei/status", report_id, orjson.dumps(body)


# --- a minimal HTTP/1.1 client -------------------------------------------------------------------


class Answer:
    __slots__ = ("body", "retry_after", "status")

    def __init__(self, status: int, retry_after: float | None, body: bytes) -> None:
        self.status = status
        self.retry_after = retry_after
        self.body = body


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._parse()

    def _parse(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = 0
        retry_after: float | None = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "retry-after":
                retry_after = float(value)
            elif name == "connection" and value.strip().lower() == "close":
                self.keep_alive = False
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.waiter.set_result(Answer(status, retry_after, body))

    async def request(self, head: bytes, body: bytes, timeout: float) -> Answer:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    def __init__(self, url: str, api_key: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.api_key = api_key
        self.timeout = timeout

    async def connect(self) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(HttpConnection, self.host, self.port), self.timeout
        )
        return protocol

    def head(self, path: str, length: int) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"X-API-Key: {self.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()


# --- recording -----------------------------------------------------------------------------------


class Recorder:
    def __init__(self, path: str | None) -> None:
        self.lines: list[str] = []
        self.path = path
        self.counts: dict[str, int] = {}
        self.max_latency = 0.0
        self.accepted = 0
        self.retry_after_missing = 0

    def record(self, status: int, report_id: str, latency: float, attempt: int, kind: str) -> None:
        self.lines.append(
            f"{status}\t{report_id}\t{time.time():.6f}\t{latency:.6f}\t{attempt}\t{kind}"
        )
        key = str(status)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.max_latency = max(self.max_latency, latency)
        if status == 200:
            self.accepted += 1

    def flush(self) -> None:
        if self.path:
            with open(self.path, "w") as out:
                out.write("\n".join(self.lines))
                if self.lines:
                    out.write("\n")


# --- the agents ----------------------------------------------------------------------------------


@dataclass
class Options:
    url: str
    api_key: str
    jobs: list[int]
    mode: str
    connections: int
    duration: float
    rate: float
    count: int
    window: float
    timeout: float
    max_retries: int
    retry_cap: float
    hard_stop: float
    id_prefix: str
    seed: int
    mix: dict[str, float]
    trivial: bool


class Run:
    def __init__(self, options: Options, recorder: Recorder) -> None:
        self.o = options
        self.recorder = recorder
        self.client = Client(options.url, options.api_key, options.timeout)
        self.factory = ReportFactory(options.id_prefix, options.seed, options.mix)
        self.random = random.Random(options.seed + 1)
        self.idle: list[HttpConnection] = []
        self.open_connections = 0
        self.hard_deadline = time.monotonic() + options.hard_stop
        self.gave_up = 0
        self.late_sends: list[float] = []
        self.slot_freed = asyncio.Event()
        self.sent = 0

    def make(self, job_id: int, report_id: str | None = None) -> tuple[str, str, bytes]:
        if self.o.trivial:
            report_id = report_id or self.factory.next_report_id()
            return "/trivial", report_id, b'{"job_id":1}'
        return self.factory.make(job_id, report_id)

    async def attempt(
        self, connection: HttpConnection | None, path: str, report_id: str, body: bytes, n: int
    ) -> tuple[Answer | None, HttpConnection | None]:
        """One try; the connection comes back when it can be used again."""
        started = time.perf_counter()
        try:
            if connection is None or connection.closed:
                connection = await self.client.connect()
            answer = await connection.request(
                self.client.head(path, len(body)), body, self.o.timeout
            )
        except TimeoutError:
            self.recorder.record(TIMEOUT_STATUS, report_id, time.perf_counter() - started, n, path)
            if connection is not None:
                connection.close()
            return None, None
        except OSError:
            self.recorder.record(
                CONNECTION_FAILED, report_id, time.perf_counter() - started, n, path
            )
            if connection is not None:
                connection.close()
            return None, None
        self.sent += 1
        self.recorder.record(answer.status, report_id, time.perf_counter() - started, n, path)
        if answer.status == 503 and answer.retry_after is None:
            self.recorder.retry_after_missing += 1
        if not connection.keep_alive:
            connection.close()
            connection = None
        return answer, connection

    async def deliver(
        self, connection: HttpConnection | None, path: str, report_id: str, body: bytes
    ) -> HttpConnection | None:
        """Send one report until it is answered other than 503 or the retries run out."""
        for n in range(self.o.max_retries + 1):
            answer, connection = await self.attempt(connection, path, report_id, body, n)
            if answer is not None and answer.status != 503:
                return connection
            if n == self.o.max_retries or time.monotonic() > self.hard_deadline:
                break
            wait = 1.0 if answer is None else min(answer.retry_after or 1.0, self.o.retry_cap)
            await asyncio.sleep(wait * (0.5 + self.random.random()))
        self.gave_up += 1
        return connection

    # closed loop
    async def closed_agent(self, index: int, deadline: float, budget: list[int]) -> None:
        connection: HttpConnection | None = None
        jobs = self.o.jobs
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            job = jobs[self.random.randrange(len(jobs))]
            path, report_id, body = self.make(job)
            connection = await self.deliver(connection, path, report_id, body)
        if connection is not None:
            connection.close()

    async def run_closed(self) -> None:
        deadline = min(time.monotonic() + self.o.duration, self.hard_deadline)
        budget = [self.o.count]
        await asyncio.gather(
            *(self.closed_agent(i, deadline, budget) for i in range(self.o.connections))
        )

    # open loop at a fixed rate
    async def rated_one(
        self, connection: HttpConnection | None, path: str, report_id: str, body: bytes
    ) -> None:
        """One report on a pooled connection; the slot was taken by the scheduler."""
        connection = await self.deliver(connection, path, report_id, body)
        if connection is not None and not connection.closed:
            self.idle.append(connection)
        else:
            self.open_connections -= 1
        self.slot_freed.set()

    async def run_rate(self) -> None:
        total = min(self.o.count, int(self.o.rate * self.o.duration))
        interval = 1.0 / self.o.rate
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        jobs = self.o.jobs
        for i in range(total):
            due = start + i * interval
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            if time.monotonic() > self.hard_deadline:
                break
            while not self.idle and self.open_connections >= self.o.connections:
                self.slot_freed.clear()  # every connection busy: the report waits
                await self.slot_freed.wait()
            # Take the slot here, before yielding, so a late schedule cannot overshoot the cap.
            connection = self.idle.pop() if self.idle else None
            if connection is None:
                self.open_connections += 1
            self.late_sends.append(time.monotonic() - due)
            job = jobs[i % len(jobs)]
            path, report_id, body = self.make(job)
            task = asyncio.create_task(self.rated_one(connection, path, report_id, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=max(1.0, self.hard_deadline - time.monotonic()))
        for connection in self.idle:
            connection.close()

    # burst of distinct agents, each on its own new connection
    async def burst_agent(self, job_id: int, at: float, start: float) -> None:
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        path, report_id, body = self.make(job_id)
        connection = await self.deliver(None, path, report_id, body)
        if connection is not None:
            connection.close()

    async def run_burst(self) -> None:
        jobs = self.o.jobs
        count = min(self.o.count, len(jobs))
        start = time.monotonic()
        moments = sorted(self.random.uniform(0, self.o.window) for _ in range(count))
        await asyncio.wait_for(
            asyncio.gather(*(self.burst_agent(jobs[i], moments[i], start) for i in range(count))),
            timeout=max(1.0, self.hard_deadline - time.monotonic()),
        )

    # one report sent many times at once
    async def run_replay(self) -> None:
        job = self.o.jobs[0]
        path, report_id, body = self.make(job, f"{self.o.id_prefix}-replayed")

        async def one() -> None:
            connection = await self.deliver(None, path, report_id, body)
            if connection is not None:
                connection.close()

        await asyncio.gather(*(one() for _ in range(self.o.count)))


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        mix[name.strip()] = float(weight)
    return mix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", ""))
    parser.add_argument("--jobs-file", help="job ids, one a line")
    parser.add_argument("--mode", choices=("closed", "rate", "burst", "replay"), default="closed")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--count", type=int, default=10**9)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-retries", type=int, default=0)
    parser.add_argument("--retry-cap", type=float, default=10.0)
    parser.add_argument("--hard-stop", type=float, default=300.0, help="seconds, whatever else")
    parser.add_argument("--id-prefix", default=f"lg{os.getpid()}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mix", default="status:0.70,parsed:0.25,raw:0.05")
    parser.add_argument("--start-at", type=float, default=0.0, help="wall clock time to begin")
    parser.add_argument("--trivial", action="store_true", help="tiny bodies to /trivial")
    parser.add_argument("--attempts", help="file for one line per attempt")
    parser.add_argument("--summary", help="file for the JSON summary (else stdout)")
    return parser


async def main_async(options: Options, start_at: float, recorder: Recorder) -> dict[str, Any]:
    if start_at:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    run = Run(options, recorder)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    wall_started = time.time()
    runner = {
        "closed": run.run_closed,
        "rate": run.run_rate,
        "burst": run.run_burst,
        "replay": run.run_replay,
    }[options.mode]
    await runner()
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    late = sorted(run.late_sends)
    return {
        "mode": options.mode,
        "wall_started": wall_started,
        "elapsed_s": elapsed,
        "attempts": sum(recorder.counts.values()),
        "answered": run.sent,
        "accepted": recorder.accepted,
        "status_counts": recorder.counts,
        "gave_up": run.gave_up,
        "retry_after_missing": recorder.retry_after_missing,
        "max_latency_s": recorder.max_latency,
        "cpu_s": cpu,
        "cpu_share_of_one_core": cpu / elapsed if elapsed else 0.0,
        "late_send_p99_s": late[int(len(late) * 0.99)] if late else 0.0,
        "late_send_max_s": late[-1] if late else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    jobs = [1]
    if args.jobs_file:
        with open(args.jobs_file) as handle:
            jobs = [int(line) for line in handle if line.strip()]
    options = Options(
        url=args.url,
        api_key=args.api_key,
        jobs=jobs,
        mode=args.mode,
        connections=args.connections,
        duration=args.duration,
        rate=args.rate,
        count=args.count,
        window=args.window,
        timeout=args.timeout,
        max_retries=args.max_retries,
        retry_cap=args.retry_cap,
        hard_stop=args.hard_stop,
        id_prefix=args.id_prefix,
        seed=args.seed,
        mix=parse_mix(args.mix),
        trivial=args.trivial,
    )
    recorder = Recorder(args.attempts)
    if uvloop is not None:
        uvloop.install()
    summary = asyncio.run(main_async(options, args.start_at, recorder))
    recorder.flush()
    text = json.dumps(summary, indent=2)
    if args.summary:
        with open(args.summary, "w") as out:
            out.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
