"""The AOMEI agent: ships a machine's new run-history entries to the ingest API.

One run (:func:`run_once`) reads ``brlog.xml``, keeps the entries newer than what was
already delivered for each task, makes sure each task has a job on the server, writes one
report per task to the spool and sends the spool in order. The spool and the state file
make a run safe to interrupt anywhere:

* a report is written to ``spool/pending`` before it is sent and deleted only after a 200,
  so an API that is down, slow or refusing for a while loses nothing;
* the state (per task: job id, name, time of the last delivered entry) advances only when
  the server has taken a report, and is written through a temporary file and a rename;
* a report's id is derived from the machine, the task and the times of its first and last
  entry, so a report sent again (a retry, a crash, a lost state file) is the same report,
  and the server counts each entry once whatever report carried it.

The status of a run is decided by the server from the entries; the agent only moves them.
The PowerShell agent in ``scripts/powershell`` speaks exactly this protocol; the golden
files in ``tests/fixtures/agent`` pin the request bodies that both build.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import logging
import os
import random
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import httpx

from processors.aomei.brlog import BrlogEntry, BrlogParseResult, iter_brlog_entries

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_PENDING: Final = 1
EXIT_CONFIG: Final = 2
EXIT_AUTH: Final = 3
EXIT_REJECTED: Final = 4

DEFAULT_BRLOG_PATH: Final = r"C:\ProgramData\AomeiBR\brlog.xml"
DEFAULT_API_KEY_ENV: Final = "AOMEI_API_KEY"
STATE_FILE_NAME: Final = "agent-state.json"
LOCK_FILE_NAME: Final = "agent.lock"
STATE_FORMAT: Final = 1
SPOOL_FORMAT: Final = 1

# uuid5(NAMESPACE_URL, "urn:backuphub:aomei-agent:report"), written out so that the
# PowerShell agent can use the very same value.
REPORT_ID_NAMESPACE: Final = uuid.UUID("fa503c9d-9854-5324-a00f-3f1e8dc0b442")

# A real entry is a few hundred bytes: 1000 keep a report far below the server's 2 MB
# limit on raw_entries.xml even for a first run over years of hourly backups.
MAX_ENTRIES_PER_REPORT: Final = 1000

# A lock file older than this is left over from a run that died: runs are bounded by
# max_run_seconds (minutes), so two hours cannot be a live run.
STALE_LOCK_SECONDS: Final = 2 * 3600

REGISTER_PATH: Final = "/aomei/register"
LOG_ANALYSIS_PATH: Final = "/aomei/log-analysis"
PING_PATH: Final = "/aomei/ping"

# The ``code`` of the 400 for a job id the server does not know; servers older than the code
# are recognised by the message alone (_JOB_NOT_FOUND_RE).
JOB_NOT_FOUND_CODE: Final = "job_not_found"

_RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
_REJECT_STATUSES: Final = frozenset({400, 413, 422})
_AUTH_STATUSES: Final = frozenset({401, 403})
_CONFIG_STATUSES: Final = frozenset({404, 405})
_SPOOL_NAME_RE: Final = re.compile(r"^(\d{8,})-([A-Za-z0-9._:\-]+)\.json$")
_JOB_NOT_FOUND_RE: Final = re.compile(r"^Job \d+ not found")


def default_state_dir() -> Path:
    """Where the agent keeps its state when not told: ProgramData on Windows."""
    if os.name == "nt":
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "backuphub" / "agent"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "backuphub" / "agent"


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; ``api_key`` is kept out of ``repr`` so it is never logged.

    ``api_url`` is the API's base, e.g. ``http://host:8080/api/v1``; the agent adds
    ``/aomei/...``. ``log_file_path`` is the path reported to the server, by default the
    brlog path itself (a collector reading a copy can report the machine's own path).
    """

    api_url: str
    api_key: str = field(repr=False)
    brlog_path: Path = Path(DEFAULT_BRLOG_PATH)
    state_dir: Path = field(default_factory=default_state_dir)
    spool_dir: Path | None = None
    server_name: str = field(default_factory=socket.gethostname)
    timeout_seconds: float = 30.0
    max_attempts: int = 5
    job_type: str = "system_image"
    log_file_path: str | None = None
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    max_run_seconds: float = 300.0
    max_entries_per_report: int = MAX_ENTRIES_PER_REPORT

    @property
    def spool_root(self) -> Path:
        """The spool directory: ``spool_dir``, or ``spool`` inside the state directory."""
        return self.spool_dir if self.spool_dir is not None else self.state_dir / "spool"

    @property
    def reported_path(self) -> str:
        """The history file's path as the server is told it."""
        return self.log_file_path or str(self.brlog_path)

    @property
    def endpoint_base(self) -> str:
        """The API base without a trailing slash or ``/aomei``, e.g. ``.../api/v1``."""
        base = self.api_url.strip().rstrip("/")
        return base.removesuffix("/aomei")

    @property
    def health_url(self) -> str:
        """``/health`` of the service, which lives beside ``/api/v1``, not under it."""
        root = self.endpoint_base
        for suffix in ("/api/v1", "/api"):
            if root.endswith(suffix):
                root = root.removesuffix(suffix)
                break
        return root + "/health"

    @property
    def ping_url(self) -> str:
        """``/aomei/ping``: checks the API key without sending data (servers since the code)."""
        return self.endpoint_base + PING_PATH


def config_problems(config: AgentConfig) -> list[str]:
    """Say what is wrong with a configuration; an empty list means it can be used."""
    problems: list[str] = []
    url = urlsplit(config.endpoint_base)
    if url.scheme not in ("http", "https") or not url.hostname:
        problems.append("api_url must be an http:// or https:// URL with a host")
    if not config.api_key.strip():
        problems.append("no API key (set it in the environment variable named by the config)")
    if not config.server_name.strip():
        problems.append("server name is empty")
    if config.max_attempts < 1:
        problems.append("max_attempts must be at least 1")
    if config.timeout_seconds <= 0 or config.max_run_seconds <= 0:
        problems.append("timeout_seconds and max_run_seconds must be positive")
    if config.backoff_base_seconds < 0 or config.backoff_max_seconds < 0:
        problems.append("back-off delays cannot be negative")
    if config.max_entries_per_report < 1:
        problems.append("max_entries_per_report must be at least 1")
    return problems


# --- what goes on the wire ---------------------------------------------------------------


def report_id_for(server_name: str, task_id: str, first_epoch: int, last_epoch: int) -> str:
    """The stable id of the report carrying one task's entries from first to last epoch.

    The same entries of the same machine always give the same id, so a report sent again
    is recognised as the one already received.
    """
    name = f"{server_name}|{task_id}|{first_epoch}|{last_epoch}"
    return str(uuid.uuid5(REPORT_ID_NAMESPACE, name))


def _xml_text(text: str) -> str:
    """Escape text for element content; CR as a reference, since parsers turn it into LF."""
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def entry_to_xml(entry: BrlogEntry) -> str:
    """Write an entry back as one ``<Log>`` element that parses to the very same entry.

    The form is canonical (one line, fields in a fixed order, absent fields left out) so
    that a UTF-8 and a UTF-16 copy of a file, and the Python and PowerShell agents, all
    send the same text.
    """
    parts = [
        f'<Log ID="{{{entry.task_id}}}">',
        f"<Time>{entry.epoch}</Time>",
        f"<Task>{_xml_text(entry.task_name)}</Task>",
    ]
    optional = (
        ("Operation", entry.operation),
        ("Result", entry.result),
        ("ResultCode", None if entry.result_code is None else str(entry.result_code)),
        ("Detail", entry.detail),
    )
    for tag, value in optional:
        if value is not None:
            parts.append(f"<{tag}>{_xml_text(value)}</{tag}>")
    parts.append("</Log>")
    return "".join(parts)


def entries_to_xml(entries: list[BrlogEntry]) -> str:
    """The ``raw_entries.xml`` text of a report: its entries in file order, one per line."""
    return "\n".join(entry_to_xml(entry) for entry in entries)


def register_body(config: AgentConfig, task_id: str, task_name: str) -> dict[str, Any]:
    """The body that creates a task's job or finds it again (by GUID, then by name).

    ``target_path`` and ``description`` are not sent: the history file does not know them,
    and fields left out keep whatever an administrator set on the server.
    """
    return {
        "job_id": 0,
        "task_name": task_name,
        "job_type": config.job_type,
        "target_server": config.server_name,
        "task_guid": task_id,
    }


def report_body(
    config: AgentConfig, job_id: int | None, task_id: str, entries: list[BrlogEntry]
) -> dict[str, Any]:
    """The log-analysis body for one task's entries (``job_id`` None only in previews)."""
    epochs = [entry.epoch for entry in entries]
    return {
        "job_id": job_id,
        "log_file_path": config.reported_path,
        "report_id": report_id_for(config.server_name, task_id, min(epochs), max(epochs)),
        "raw_entries": {"format": "xml", "xml": entries_to_xml(entries), "task_id": task_id},
    }


def registration_name(entries: list[BrlogEntry], known_name: str | None, task_id: str) -> str:
    """The name to register a task under: its newest entry's, else the known one."""
    newest = entries[-1].task_name if entries else ""
    return newest or known_name or f"AOMEI task {task_id}"


@dataclass(frozen=True)
class PlannedRequest:
    """A request the agent sends (or, in test mode, would send)."""

    method: str
    path: str
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The shape printed by test mode and stored in the golden files."""
        return {"method": self.method, "path": self.path, "body": self.body}


# --- files: state, spool, lock ---------------------------------------------------------


def _utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomically(path: Path, document: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read_json(path: Path) -> Any:
    """Read a JSON file, tolerating the byte-order mark that Windows tools may write."""
    with open(path, encoding="utf-8-sig") as handle:
        return json.load(handle)


@dataclass
class TaskState:
    """What the agent remembers of one AOMEI task."""

    job_id: int | None
    task_name: str
    last_epoch: int | None

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "task_name": self.task_name, "last_epoch": self.last_epoch}


def _optional_int(value: Any) -> int | None:
    """An int from JSON, or None; booleans and text are not numbers here."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class AgentState:
    """The state file: per task GUID, its job and the time of its last delivered entry."""

    server_name: str
    tasks: dict[str, TaskState] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: Path, server_name: str, *, repair: bool = True) -> AgentState:
        """Read the state, or start empty when there is none.

        A damaged file is moved aside (when ``repair``) and the agent starts over: the
        server counts each entry once, so delivering entries again is safe.
        """
        path = state_dir / STATE_FILE_NAME
        try:
            document = _read_json(path)
        except FileNotFoundError:
            return cls(server_name)
        except (OSError, ValueError) as error:
            logger.warning(
                "state file unreadable; starting over", extra={"error": type(error).__name__}
            )
            if repair:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(f"{path.name}.damaged-{int(time.time())}"))
            return cls(server_name)

        stored_server = document.get("server_name") if isinstance(document, dict) else None
        if stored_server != server_name:
            logger.warning(
                "state file belongs to another server name; starting over",
                extra={"stored_server": stored_server, "server_name": server_name},
            )
            return cls(server_name)

        state = cls(server_name)
        tasks = document.get("tasks")
        for task_id, item in (tasks if isinstance(tasks, dict) else {}).items():
            if not isinstance(item, dict):
                continue
            state.tasks[str(task_id)] = TaskState(
                job_id=_optional_int(item.get("job_id")),
                task_name=str(item.get("task_name") or ""),
                last_epoch=_optional_int(item.get("last_epoch")),
            )
        return state

    def save(self, state_dir: Path) -> None:
        """Write the state atomically."""
        document = {
            "format": STATE_FORMAT,
            "server_name": self.server_name,
            "tasks": {task_id: task.to_json() for task_id, task in sorted(self.tasks.items())},
        }
        write_json_atomically(state_dir / STATE_FILE_NAME, document)


@dataclass
class SpooledReport:
    """A report waiting in ``spool/pending`` (or moved to ``spool/rejected``)."""

    sequence: int
    path: Path
    report_id: str
    task_id: str
    task_name: str
    first_epoch: int
    last_epoch: int
    entry_count: int
    created_at: str
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SPOOL_FORMAT,
            "report_id": self.report_id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "first_epoch": self.first_epoch,
            "last_epoch": self.last_epoch,
            "entry_count": self.entry_count,
            "created_at": self.created_at,
            "body": self.body,
        }


class SpoolError(ValueError):
    """A spool file that cannot be read as a report."""


def _spooled_from(path: Path, sequence: int) -> SpooledReport:
    """Read one pending spool file; raise SpoolError when it is not a usable report."""
    try:
        document = _read_json(path)
        body = document["body"]
        return SpooledReport(
            sequence=sequence,
            path=path,
            report_id=str(document["report_id"]),
            task_id=str(document["task_id"]),
            task_name=str(document.get("task_name") or ""),
            first_epoch=int(document["first_epoch"]),
            last_epoch=int(document["last_epoch"]),
            entry_count=int(document.get("entry_count") or 0),
            created_at=str(document.get("created_at") or ""),
            body=body if isinstance(body, dict) else {},
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SpoolError(f"{path.name}: {type(error).__name__}") from error


class Spool:
    """``pending/`` holds reports not yet taken by the server, oldest first (by sequence
    number); ``rejected/`` holds those the server refused, each with its answer."""

    def __init__(self, root: Path) -> None:
        self.pending_dir = root / "pending"
        self.rejected_dir = root / "rejected"

    def create(self) -> None:
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)

    def _numbered(self, folder: Path) -> Iterator[tuple[int, Path]]:
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            match = _SPOOL_NAME_RE.match(path.name)
            if match is not None and not path.name.endswith(".answer.json"):
                yield int(match.group(1)), path

    def pending(self, *, repair: bool = True) -> list[SpooledReport]:
        """The pending reports in sending order; unreadable ones go to ``rejected/``."""
        reports: list[SpooledReport] = []
        for sequence, path in sorted(self._numbered(self.pending_dir)):
            try:
                reports.append(_spooled_from(path, sequence))
            except SpoolError as error:
                logger.error("spool file unreadable", extra={"spool_file": path.name})
                if repair:
                    self._move_to_rejected(path, {"agent_error": f"unreadable: {error}"})
        return reports

    def rejected_count(self) -> int:
        return sum(1 for _ in self._numbered(self.rejected_dir))

    def next_sequence(self) -> int:
        numbers = [n for n, _ in self._numbered(self.pending_dir)]
        numbers += [n for n, _ in self._numbered(self.rejected_dir)]
        return max(numbers, default=0) + 1

    def add(
        self, body: dict[str, Any], task_id: str, task_name: str, entries: list[BrlogEntry]
    ) -> SpooledReport:
        """Write a new report to ``pending/`` after every report already there."""
        sequence = self.next_sequence()
        report_id = str(body["report_id"])
        epochs = [entry.epoch for entry in entries]
        report = SpooledReport(
            sequence=sequence,
            path=self.pending_dir / f"{sequence:08d}-{report_id}.json",
            report_id=report_id,
            task_id=task_id,
            task_name=task_name,
            first_epoch=min(epochs),
            last_epoch=max(epochs),
            entry_count=len(entries),
            created_at=_utc_now_text(),
            body=body,
        )
        write_json_atomically(report.path, report.to_json())
        return report

    def rewrite(self, report: SpooledReport) -> None:
        write_json_atomically(report.path, report.to_json())

    def remove(self, report: SpooledReport) -> None:
        report.path.unlink(missing_ok=True)

    def reject(self, report: SpooledReport, answer: dict[str, Any]) -> Path:
        """Move a report to ``rejected/`` with the server's answer stored beside it."""
        return self._move_to_rejected(report.path, answer)

    def _move_to_rejected(self, path: Path, answer: dict[str, Any]) -> Path:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        target = self.rejected_dir / path.name
        answer_path = target.with_name(target.name.removesuffix(".json") + ".answer.json")
        write_json_atomically(answer_path, {**answer, "rejected_at": _utc_now_text()})
        os.replace(path, target)
        return target

    def record_register_rejection(self, task_id: str, document: dict[str, Any]) -> Path:
        """Keep the refused registration of a task (overwritten by the next refusal)."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        path = self.rejected_dir / f"register-{task_id}.json"
        write_json_atomically(path, {**document, "rejected_at": _utc_now_text()})
        return path


class LockBusy(RuntimeError):
    """Another run of the agent holds the lock."""


@contextlib.contextmanager
def run_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``agent.lock`` so two runs (scheduled and manual) never share the spool."""
    path = state_dir / LOCK_FILE_NAME
    for _attempt in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > STALE_LOCK_SECONDS:
                    logger.warning("removing a stale agent lock", extra={"lock": str(path)})
                    path.unlink()
                    continue
            raise LockBusy(f"{path} is held by another run") from None
        with os.fdopen(handle, "w", encoding="utf-8") as lock_file:
            json.dump({"pid": os.getpid(), "started_at": int(time.time())}, lock_file)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    raise LockBusy(f"{path} could not be taken")


# --- HTTP ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiAnswer:
    """A final answer of the API to one request (after any retries)."""

    status_code: int
    document: dict[str, Any] | None
    text: str

    def summary(self) -> dict[str, Any]:
        """What is stored next to a rejected report: the status and the server's words."""
        if self.document is not None:
            return {"status_code": self.status_code, "answer": self.document}
        return {"status_code": self.status_code, "answer_text": self.text[:2000]}

    @property
    def message(self) -> str:
        if self.document is not None:
            return str(self.document.get("message", ""))
        return self.text[:200]

    def says_job_not_found(self) -> bool:
        """True for the 400 that the server gives for a job id it does not know.

        The answer's ``code`` decides when there is one. Only a server older than the code is
        read by its message; ``errors[].field == "job_id"`` is no sign, since a plain
        validation error on ``job_id`` names that field too and must not cause a register.
        """
        if self.status_code != 400 or self.document is None:
            return False
        code = self.document.get("code")
        if code is not None:
            return code == JOB_NOT_FOUND_CODE
        return _JOB_NOT_FOUND_RE.match(self.message) is not None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Read ``Retry-After``: seconds, or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2**attempt)))


class ApiClient:
    """POSTs to the ingest API with bounded retries (attempts and the run's deadline).

    Retries connection failures, timeouts, 408, 429 and 5xx; waits ``Retry-After`` when
    the server gives one, plus jittered exponential back-off so that a fleet of agents
    does not come back all at the same second. Returns None when it gave up.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._deadline = time.monotonic() + config.max_run_seconds
        self._client = httpx.Client(
            timeout=config.timeout_seconds,
            headers={"X-API-Key": config.api_key, "User-Agent": "backuphub-aomei-agent/1"},
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def get_once(self, url: str) -> tuple[ApiAnswer | None, str]:
        """GET once, without retries: (the answer or None when unreachable, what was seen)."""
        try:
            response = self._client.get(url)
        except httpx.HTTPError as error:
            return None, f"not reachable ({type(error).__name__})"
        return _answer_from(response), f"answered {response.status_code}"

    def health(self) -> tuple[ApiAnswer | None, str]:
        """GET ``/health`` once: (the answer or None when unreachable, what was seen)."""
        answer, seen = self.get_once(self._config.health_url)
        if answer is not None and answer.status_code == 200:
            seen = "healthy"
        return answer, seen

    def ping(self) -> tuple[ApiAnswer | None, str]:
        """GET ``/aomei/ping`` once: does the server take the key? Carries no data."""
        return self.get_once(self._config.ping_url)

    def post(self, path: str, body: dict[str, Any]) -> ApiAnswer | None:
        """Send one request, retrying what may succeed later; None when it gave up."""
        url = self._config.endpoint_base + path
        for attempt in range(self._config.max_attempts):
            retry_after: float | None = None
            try:
                response = self._client.post(url, json=body)
            except httpx.HTTPError as error:
                reason = type(error).__name__
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return _answer_from(response)
                reason = f"HTTP {response.status_code}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))

            if attempt + 1 >= self._config.max_attempts:
                logger.warning(
                    "API still failing; giving up for this run",
                    extra={"path": path, "reason": reason, "attempts": attempt + 1},
                )
                return None

            delay = (retry_after or 0.0) + backoff_delay(
                attempt,
                self._config.backoff_base_seconds,
                self._config.backoff_max_seconds,
                self._rng,
            )
            if time.monotonic() + delay > self._deadline:
                logger.warning(
                    "no time left in this run to retry",
                    extra={"path": path, "reason": reason, "delay_seconds": round(delay, 3)},
                )
                return None

            logger.info(
                "API failed; retrying",
                extra={"path": path, "reason": reason, "delay_seconds": round(delay, 3)},
            )
            self._sleep(delay)
        return None


def _answer_from(response: httpx.Response) -> ApiAnswer:
    document: dict[str, Any] | None = None
    with contextlib.suppress(ValueError):
        parsed = response.json()
        if isinstance(parsed, dict):
            document = parsed
    return ApiAnswer(response.status_code, document, response.text)


# --- one run -----------------------------------------------------------------------------


@dataclass
class AgentRunResult:
    """What a run did; ``exit_code`` is what the command returns (see EXIT_*)."""

    exit_code: int = EXIT_OK
    entries_read: int = 0
    new_entries: int = 0
    registered: dict[str, int] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    requests: list[PlannedRequest] = field(default_factory=list)
    auth_refused: bool = False
    config_error: bool = False
    api_unavailable: bool = False
    tasks_waiting: list[str] = field(default_factory=list)

    def finish(self) -> AgentRunResult:
        """Set the exit code: auth, then configuration, then rejections, then leftovers."""
        if self.auth_refused:
            self.exit_code = EXIT_AUTH
        elif self.config_error:
            self.exit_code = EXIT_CONFIG
        elif self.rejected:
            self.exit_code = EXIT_REJECTED
        elif self.pending or self.tasks_waiting or self.api_unavailable:
            self.exit_code = EXIT_PENDING
        else:
            self.exit_code = EXIT_OK
        return self


@dataclass
class HistoryRead:
    """The new entries of each task (file order) and what the parser said about the file."""

    by_task: dict[str, list[BrlogEntry]]
    entries_read: int
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def read_new_entries(path: Path, cursors: dict[str, int | None]) -> HistoryRead:
    """Read the history file and keep, per task, the entries newer than its cursor.

    Times are compared as numbers. An unreadable file, or one that is not a brlog, is an
    error; a blank file is an empty history.
    """
    if not path.is_file():
        reason = "no such file" if not path.exists() else "not a regular file"
        return HistoryRead({}, 0, error=f"{path}: {reason}")

    report = BrlogParseResult()
    by_task: dict[str, list[BrlogEntry]] = {}
    try:
        for entry in iter_brlog_entries(path, report=report):
            cursor = cursors.get(entry.task_id)
            if cursor is None or entry.epoch > cursor:
                by_task.setdefault(entry.task_id, []).append(entry)
    except OSError as error:
        return HistoryRead({}, 0, error=f"{path}: cannot read ({error.strerror or error})")

    if report.entry_count == 0 and not report.blank and not report.recognised:
        return HistoryRead({}, 0, error=f"{path}: not an AOMEI brlog.xml")

    notes = []
    if report.problem_count:
        notes.append(f"{report.problem_count} parse problems; damaged entries are not sent")
    if report.truncated:
        notes.append("file ends early (AOMEI still writing); the cut entry waits for next run")
    return HistoryRead(by_task, report.entry_count, notes=notes)


def cursors_for(state: AgentState, pending: list[SpooledReport]) -> dict[str, int | None]:
    """Per task, the newest entry time already delivered or already waiting in the spool."""
    cursors: dict[str, int | None] = {t: s.last_epoch for t, s in state.tasks.items()}
    for report in pending:
        current = cursors.get(report.task_id)
        cursors[report.task_id] = (
            report.last_epoch if current is None else max(current, report.last_epoch)
        )
    return cursors


def _chunks(entries: list[BrlogEntry], size: int) -> Iterator[list[BrlogEntry]]:
    for start in range(0, len(entries), size):
        yield entries[start : start + size]


def _needs_registration(task: TaskState | None, name: str) -> bool:
    """A task is registered when first seen, when its job is unknown, or when renamed."""
    return task is None or task.job_id is None or task.task_name != name


class _Run:
    """One delivery run over a state, a spool and an API client."""

    def __init__(self, config: AgentConfig, api: ApiClient, result: AgentRunResult) -> None:
        self.config = config
        self.api = api
        self.result = result
        self.spool = Spool(config.spool_root)
        self.state = AgentState.load(config.state_dir, config.server_name)
        self.stopped = False

    def stop(self, *, auth: bool = False, config: bool = False, down: bool = False) -> None:
        """Stop talking to the API for the rest of the run."""
        self.stopped = True
        self.result.auth_refused |= auth
        self.result.config_error |= config
        self.result.api_unavailable |= down

    def handle_unusable(self, answer: ApiAnswer | None, what: str) -> bool:
        """Stop on answers that end the run; True when the caller must not go on."""
        if answer is None:
            self.result.messages.append(f"{what}: API unreachable or failing; will retry")
            self.stop(down=True)
            return True
        if answer.status_code in _AUTH_STATUSES:
            self.result.messages.append(f"{what}: API key refused ({answer.status_code})")
            self.stop(auth=True)
            return True
        if answer.status_code in _CONFIG_STATUSES:
            self.result.messages.append(f"{what}: {answer.status_code} from the API; check api_url")
            self.stop(config=True)
            return True
        return False

    def register(self, task_id: str, task_name: str) -> int | None:
        """Register a task's job and remember its id; None when that was not possible."""
        body = register_body(self.config, task_id, task_name)
        answer = self.api.post(REGISTER_PATH, body)
        if self.handle_unusable(answer, f"register task {task_id}"):
            return None
        assert answer is not None

        data = answer.document.get("data") if answer.document else None
        job_id = data.get("job_id") if isinstance(data, dict) else None
        if answer.status_code == 200 and isinstance(job_id, int) and job_id > 0:
            previous = self.state.tasks.get(task_id)
            self.state.tasks[task_id] = TaskState(
                job_id, task_name, previous.last_epoch if previous else None
            )
            self.state.save(self.config.state_dir)
            self.result.registered[task_id] = job_id
            logger.info("task registered", extra={"task_id": task_id, "job_id": job_id})
            return job_id

        if answer.status_code in _REJECT_STATUSES:
            where = self.spool.record_register_rejection(
                task_id, {"task_id": task_id, "request": body, **answer.summary()}
            )
            self.result.rejected.append(f"register-{task_id}")
            self.result.messages.append(
                f"registration of task {task_id} refused: {answer.message} (see {where})"
            )
            return None

        self.result.messages.append(
            f"register task {task_id}: unexpected answer {answer.status_code}"
        )
        self.stop(down=True)
        return None

    def spool_new_entries(self, by_task: dict[str, list[BrlogEntry]]) -> None:
        """Register tasks as needed and write their new entries to the spool."""
        for task_id, entries in by_task.items():
            task = self.state.tasks.get(task_id)
            name = registration_name(entries, task.task_name if task else None, task_id)
            # A renamed task keeps its job, so its entries need not wait for the new name.
            job_id = task.job_id if task else None
            if _needs_registration(task, name) and not self.stopped:
                job_id = self.register(task_id, name) or job_id
            if job_id is None:
                self.result.tasks_waiting.append(task_id)
                continue

            for chunk in _chunks(entries, self.config.max_entries_per_report):
                body = report_body(self.config, job_id, task_id, chunk)
                report = self.spool.add(body, task_id, name, chunk)
                logger.info(
                    "report spooled",
                    extra={"report_id": report.report_id, "job_id": job_id, "entries": len(chunk)},
                )

    def send_pending(self) -> None:
        """Send the spool in order; stop at the first report the API cannot take now."""
        for report in self.spool.pending():
            if self.stopped:
                self.result.pending.append(report.report_id)
                continue
            self.send(report)
            if self.stopped:
                self.result.pending.append(report.report_id)

    def _job_for(self, report: SpooledReport) -> None:
        """Use the job id the state knows now (it changes when a lost job is re-made)."""
        task = self.state.tasks.get(report.task_id)
        if (
            task is not None
            and task.job_id is not None
            and report.body.get("job_id") != task.job_id
        ):
            report.body["job_id"] = task.job_id
            self.spool.rewrite(report)

    def send(self, report: SpooledReport) -> None:
        """Deliver one report; on a lost job, register again once and resend."""
        self._job_for(report)
        answer = self.api.post(LOG_ANALYSIS_PATH, report.body)
        if answer is not None and answer.says_job_not_found():
            logger.warning(
                "server lost the job; registering the task again",
                extra={"report_id": report.report_id, "job_id": report.body.get("job_id")},
            )
            task = self.state.tasks.get(report.task_id)
            name = task.task_name if task and task.task_name else report.task_name
            if self.register(report.task_id, name or f"AOMEI task {report.task_id}") is None:
                if not self.stopped:
                    self.reject(report, answer)
                return
            self._job_for(report)
            answer = self.api.post(LOG_ANALYSIS_PATH, report.body)

        if self.handle_unusable(answer, f"report {report.report_id}"):
            return
        assert answer is not None

        if answer.status_code == 200:
            self.spool.remove(report)
            self.advance(report)
            self.result.delivered.append(report.report_id)
            logger.info(
                "report delivered",
                extra={"report_id": report.report_id, "entries": report.entry_count},
            )
        elif answer.status_code in _REJECT_STATUSES:
            self.reject(report, answer)
        else:
            self.result.messages.append(
                f"report {report.report_id}: unexpected answer {answer.status_code}"
            )
            self.stop(down=True)

    def reject(self, report: SpooledReport, answer: ApiAnswer) -> None:
        """Move a refused report aside and move on: its entries are accounted for there."""
        where = self.spool.reject(report, answer.summary())
        self.advance(report)
        self.result.rejected.append(report.report_id)
        self.result.messages.append(
            f"report {report.report_id} refused: {answer.message} (see {where})"
        )
        logger.error(
            "report rejected",
            extra={"report_id": report.report_id, "status_code": answer.status_code},
        )

    def advance(self, report: SpooledReport) -> None:
        """Move the task's cursor past the report's entries and save the state."""
        task = self.state.tasks.get(report.task_id)
        job_id = _optional_int(report.body.get("job_id"))
        if task is None:
            task = TaskState(job_id, report.task_name, None)
            self.state.tasks[report.task_id] = task
        if task.last_epoch is None or report.last_epoch > task.last_epoch:
            task.last_epoch = report.last_epoch
        self.state.save(self.config.state_dir)


def run_once(
    config: AgentConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> AgentRunResult:
    """Read new entries, register, spool and send; never raises for expected failures.

    The spool is sent even when the history file cannot be read, so reports written by an
    earlier run still go out.
    """
    result = AgentRunResult()
    problems = config_problems(config)
    if problems:
        result.messages.extend(problems)
        result.config_error = True
        return result.finish()

    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        Spool(config.spool_root).create()
        with run_lock(config.state_dir):
            api = ApiClient(config, transport=transport, sleep=sleep, rng=rng)
            try:
                _deliver(config, api, result)
            finally:
                api.close()
    except LockBusy as error:
        result.messages.append(f"another agent run is in progress ({error})")
        result.api_unavailable = True
    except OSError as error:
        result.messages.append(f"state or spool not writable: {error}")
        result.config_error = True

    result.finish()
    logger.info(
        "agent run finished",
        extra={
            "exit_code": result.exit_code,
            "delivered": len(result.delivered),
            "rejected": len(result.rejected),
            "pending": len(result.pending),
        },
    )
    return result


def _deliver(config: AgentConfig, api: ApiClient, result: AgentRunResult) -> None:
    run = _Run(config, api, result)
    history = read_new_entries(config.brlog_path, cursors_for(run.state, run.spool.pending()))
    result.entries_read = history.entries_read
    result.new_entries = sum(len(entries) for entries in history.by_task.values())
    result.messages.extend(history.notes)
    if history.error is not None:
        result.messages.append(history.error)
        result.config_error = True

    run.spool_new_entries(history.by_task)
    run.send_pending()

    waiting = run.spool.rejected_count()
    if waiting:
        logger.warning("reports wait in the rejected folder", extra={"rejected": waiting})


def preview_requests(config: AgentConfig) -> tuple[list[PlannedRequest], HistoryRead]:
    """The requests a run would send now, touching no file and no server.

    Reports already in the spool come first; then, per task with new entries, its
    registration (when needed) and its report. A job id not known yet shows as null.
    """
    state = AgentState.load(config.state_dir, config.server_name, repair=False)
    pending = Spool(config.spool_root).pending(repair=False)
    requests: list[PlannedRequest] = []
    for report in pending:
        task = state.tasks.get(report.task_id)
        body = dict(report.body)
        if task is not None and task.job_id is not None:
            body["job_id"] = task.job_id
        requests.append(PlannedRequest("POST", LOG_ANALYSIS_PATH, body))

    history = read_new_entries(config.brlog_path, cursors_for(state, pending))
    for task_id, entries in history.by_task.items():
        task = state.tasks.get(task_id)
        name = registration_name(entries, task.task_name if task else None, task_id)
        if _needs_registration(task, name):
            requests.append(
                PlannedRequest("POST", REGISTER_PATH, register_body(config, task_id, name))
            )
        job_id = task.job_id if task else None
        for chunk in _chunks(entries, config.max_entries_per_report):
            body = report_body(config, job_id, task_id, chunk)
            requests.append(PlannedRequest("POST", LOG_ANALYSIS_PATH, body))
    return requests, history


def _judge_key_check(result: AgentRunResult, answer: ApiAnswer | None, seen: str) -> None:
    """Record what ``/aomei/ping`` says of the API key, as a real run would act on it.

    A refused key (401/403) is exit 3, as in a run. A 404 comes from a server older than
    ``/ping`` (or from an api_url that a run would also find wrong): a note, the key stays
    unchecked. No answer or a 408/429/5xx means the API cannot take reports now (exit 1).
    """
    where = f"API key check {PING_PATH}"
    if answer is None:
        result.messages.append(f"{where}: {seen}; key not checked")
        result.api_unavailable = True
    elif answer.status_code == 200:
        result.messages.append(f"{where}: key accepted")
    elif answer.status_code in _AUTH_STATUSES:
        result.messages.append(f"{where}: API key refused ({answer.status_code})")
        result.auth_refused = True
    elif answer.status_code == 404:
        result.messages.append(
            f"{where}: 404, a server older than /ping or a wrong api_url; key not checked"
        )
    else:
        result.messages.append(f"{where}: {seen}; key not checked")
        result.api_unavailable |= answer.status_code in _RETRY_STATUSES


def run_test_mode(
    config: AgentConfig, *, transport: httpx.BaseTransport | None = None
) -> AgentRunResult:
    """Check the configuration, reach ``/health``, check the key, read the file and plan.

    Nothing is sent (``/health`` and ``/aomei/ping`` are GETs without data) and no file is
    written. The key is checked unless the server could not be reached at all (a second
    wait for the same dead address would tell nothing more).
    """
    result = AgentRunResult()
    problems = config_problems(config)
    if problems:
        result.messages.extend(problems)
        result.config_error = True
        return result.finish()

    api = ApiClient(config, transport=transport)
    try:
        health, seen = api.health()
        result.messages.append(f"API {config.health_url}: {seen}")
        result.api_unavailable = health is None or health.status_code != 200
        if health is not None:
            _judge_key_check(result, *api.ping())
    finally:
        api.close()

    requests, history = preview_requests(config)
    result.requests = requests
    result.entries_read = history.entries_read
    result.new_entries = sum(len(entries) for entries in history.by_task.values())
    result.messages.extend(history.notes)
    if history.error is not None:
        result.messages.append(history.error)
        result.config_error = True
    return result.finish()


# --- command line ------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> AgentConfig:
    """Build the configuration from ``backuphub agent`` arguments and the environment."""
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    return AgentConfig(
        api_url=args.api_url,
        api_key=environ.get(args.api_key_env, "").strip(),
        brlog_path=Path(args.brlog),
        state_dir=state_dir,
        spool_dir=Path(args.spool_dir) if args.spool_dir else None,
        server_name=args.server_name or socket.gethostname(),
        max_attempts=args.max_attempts,
        timeout_seconds=args.timeout,
        job_type=args.job_type,
        log_file_path=args.log_file_path,
    )


def run_command(
    args: argparse.Namespace,
    *,
    environ: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``backuphub agent``: one delivery run, or a test-mode preview; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    config = config_from_args(args, dict(os.environ) if environ is None else environ)
    # httpx logs every request at INFO; the agent's own records already say what happened.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    if args.test_mode:
        result = run_test_mode(config)
        json.dump([r.to_json() for r in result.requests], out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        result = run_once(config)

    for message in result.messages:
        err.write(f"backuphub agent: {message}\n")
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m processors.aomei.agent``; same as ``backuphub agent``."""
    from backuphub.cli import main as cli_main

    return cli_main(["agent", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
