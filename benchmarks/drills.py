"""Fault drills: break one part of the distributed pipeline under load, then count.

Each drill starts its own deployment (a fresh database, its own topic prefix), runs agents
(``benchmarks.loadgen`` in fixed-rate mode, retrying a 503 after its Retry-After and a broken
connection after a second, bounded), breaks something, repairs it, waits for the backlog to
drain and ends with the exactly-once count: every report that got a 200 has exactly one row.

* ``broker_kill``: a broker of the drill's own (``deploy/local/kafka.sh`` on free ports) is
  SIGKILLed under load and started again after 30 s. No request may take longer than the
  publish timeout plus a margin; agents retry; nothing acknowledged is lost.
* ``persister_kill``: the persister is stopped while a backlog piles up, started, and SIGKILLed
  while it writes its first batches; three times. No loss, no duplicate row.
* ``processor_kill``: the processor is SIGKILLed under load, between its output and its offset
  commit (it commits every few seconds), three times. Its replayed output must not duplicate
  rows; the drill counts how many execution events were written twice.
* ``postgres_stop``: a PostgreSQL of the drill's own (``initdb``/``pg_ctl`` in a temporary
  folder, as ``postgres``) is stopped for 30 s under load. Ingest keeps accepting reports of
  known jobs, the persister commits no offset while it waits, and the backlog drains after.
* ``replay``: the same report sent 100 times at once gives one execution.

``python -m benchmarks.drills [--only NAME] [--out FILE]``. Loopback only; the shared broker
and the shared PostgreSQL cluster are never stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backuphub.kafka_topics import events_written
from benchmarks import harness
from benchmarks.bench_pipeline import Attempt, LoadResult, percentile
from benchmarks.harness import API_KEY, SHARED_KAFKA, Deployment, log

PUBLISH_TIMEOUT = 3.0
# A request may take the publish timeout plus this before it counts as hanging.
HANG_MARGIN = 2.0
PERSISTER_GROUP = "backuphub-persister"


class Agents:
    """Load generators in the background: fixed rate, retrying, bounded in count and time."""

    def __init__(
        self,
        url: str,
        jobs: list[int],
        workdir: Path,
        name: str,
        *,
        rate: float,
        duration: float,
        max_retries: int = 40,
        processes: int = 1,
    ) -> None:
        harness.only_loopback(url)
        self.workdir = workdir
        self.name = name
        self.processes = processes
        run_id = secrets.token_hex(3)
        self.children: list[subprocess.Popen[bytes]] = []
        self.hard_stop = duration + max_retries * 5 + 60
        for index in range(processes):
            jobs_file = workdir / f"{name}-{index}.jobs"
            jobs_file.write_text("\n".join(map(str, jobs[index::processes])) + "\n")
            argv = [
                sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--api-key", API_KEY,
                "--jobs-file", str(jobs_file), "--mode", "rate",
                "--rate", str(rate / processes), "--duration", str(duration),
                "--connections", "100", "--timeout", "30", "--max-retries", str(max_retries),
                "--retry-cap", "5", "--hard-stop", str(self.hard_stop),
                "--id-prefix", f"{name}-{run_id}-{index}", "--seed", str(index + 11),
                "--attempts", str(workdir / f"{name}-{index}.tsv"),
                "--summary", str(workdir / f"{name}-{index}.json"),
            ]  # fmt: skip
            self.children.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        self.started = time.time()

    def wait(self) -> LoadResult:
        for child in self.children:
            try:
                child.wait(timeout=self.hard_stop + 60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
        result = LoadResult(self.name)
        for index in range(self.processes):
            result.summaries.append(
                json.loads((self.workdir / f"{self.name}-{index}.json").read_text())
            )
            for line in (self.workdir / f"{self.name}-{index}.tsv").read_text().splitlines():
                status, report_id, wall, latency, attempt, _kind = line.split("\t")
                result.attempts.append(
                    Attempt(int(status), report_id, float(wall), float(latency), int(attempt))
                )
        return result

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()


def answers(result: LoadResult, bound: float) -> dict[str, Any]:
    """What the agents heard: counts, the slowest answer, and how many exceeded the bound."""
    counts: dict[str, int] = {}
    for attempt in result.attempts:
        counts[str(attempt.status)] = counts.get(str(attempt.status), 0) + 1
    answered = [a.latency for a in result.attempts if a.status > 0]
    return {
        "attempts": len(result.attempts),
        "by_status": counts,
        "acknowledged": len(result.accepted()),
        "gave_up": sum(s["gave_up"] for s in result.summaries),
        "retry_after_missing": sum(s["retry_after_missing"] for s in result.summaries),
        "slowest_answer_s": round(max(answered, default=0.0), 2),
        "p99_answer_ms": round(percentile(answered, 0.99) * 1000, 1),
        "bound_s": bound,
        "over_bound": sum(1 for latency in answered if latency > bound),
        "timeouts": counts.get("0", 0),
    }


def accepted_between(result: LoadResult, start: float, end: float) -> int:
    return sum(1 for a in result.attempts if a.status == 200 and start <= a.wall <= end)


def drained(database_url: str, result: LoadResult) -> dict[str, Any]:
    """Wait (bounded) until every acknowledged report has its row; the count, and how long
    the backlog took to drain after the agents stopped."""
    started = time.monotonic()
    once = harness.wait_persisted(database_url, result.accepted(), timeout=300)
    once["drained_s_after_agents"] = round(time.monotonic() - started, 1)
    return once


def verdict(drill: dict[str, Any]) -> bool:
    once = drill["exactly_once"]
    agents = drill["agents"]
    ok = once["missing"] == 0 and once["duplicated"] == 0 and agents["acknowledged"] > 0
    return bool(ok and agents["over_bound"] == 0 and agents["retry_after_missing"] == 0)


@contextlib.contextmanager
def trio(
    workdir: Path, database_url: str, bootstrap: str = SHARED_KAFKA
) -> Iterator[tuple[Deployment, str]]:
    prefix = f"drill{secrets.token_hex(3)}."
    deployment = harness.distributed(workdir, database_url, prefix, bootstrap)
    try:
        deployment.start()
        yield deployment, prefix
    finally:
        deployment.stop()
        harness.delete_topics(bootstrap, prefix)


def topic_end_offsets(bootstrap: str, topic: str) -> int:
    """The number of messages ever written to ``topic``."""
    return asyncio.run(asyncio.wait_for(events_written(bootstrap, topic), timeout=30))


# --- the drills ------------------------------------------------------------------------------


def drill_broker_kill(workdir: Path) -> dict[str, Any]:
    broker = harness.PrivateKafka(workdir / "kafka", wait_timeout=120)
    log("broker_kill: starting a broker of the drill's own")
    broker.start()
    events: dict[str, float] = {}
    try:
        with (
            harness.fresh_database(label="drill_broker") as database_url,
            trio(workdir, database_url, broker.bootstrap_servers) as (deployment, _prefix),
        ):
            jobs = harness.register_jobs(deployment.ingest.url, 200, "broker")
            agents = Agents(deployment.ingest.url, jobs, workdir, "broker", rate=200, duration=70)
            time.sleep(12)
            events["killed"] = time.time()
            broker.kill()
            log("broker_kill: broker SIGKILLed; restarting in 30 s")
            time.sleep(30)
            events["restarting"] = time.time()
            broker.start()
            events["restarted"] = time.time()
            log(f"broker_kill: broker back after {events['restarted'] - events['killed']:.0f} s")
            result = agents.wait()
            once = drained(database_url, result)
            alive = {name: s.alive() for name, s in deployment.services.items()}
    finally:
        broker.remove()
    outage = (events["killed"], events["restarted"])
    return {
        "agents": answers(result, PUBLISH_TIMEOUT + HANG_MARGIN),
        "accepted_while_broker_down": accepted_between(result, outage[0] + 5, outage[1]),
        "broker_down_s": round(outage[1] - outage[0], 1),
        "services_alive_after": alive,
        "exactly_once": once,
    }


def drill_persister_kill(workdir: Path) -> dict[str, Any]:
    kills = []
    with (
        harness.fresh_database(label="drill_persister") as database_url,
        trio(workdir, database_url) as (deployment, _prefix),
    ):
        persister = deployment.services["persister"]
        jobs = harness.register_jobs(deployment.ingest.url, 200, "persister")
        agents = Agents(deployment.ingest.url, jobs, workdir, "persister", rate=400, duration=60)
        for round_ in range(3):
            persister.stop()
            time.sleep(8)  # a backlog piles up in the executions topic
            persister.start()
            persister.wait_healthy()
            before = persister.metric("backuphub_rows_persisted_total")
            # Kill it while it writes the backlog: right after its first batch is counted.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                written = persister.metric("backuphub_rows_persisted_total")
                if written > before:
                    break
                time.sleep(0.02)
            time.sleep(0.05 * round_)
            persister.kill()
            kills.append({"round": round_, "rows_counted_before_kill": written})
            log(f"persister_kill: SIGKILL {round_ + 1} after {written:.0f} rows")
        persister.start()
        persister.wait_healthy()
        result = agents.wait()
        once = drained(database_url, result)
    return {
        "agents": answers(result, PUBLISH_TIMEOUT + HANG_MARGIN),
        "kills": kills,
        "exactly_once": once,
    }


def drill_processor_kill(workdir: Path) -> dict[str, Any]:
    kills = 0
    with (
        harness.fresh_database(label="drill_processor") as database_url,
        trio(workdir, database_url) as (deployment, prefix),
    ):
        processor = deployment.services["processor"]
        jobs = harness.register_jobs(deployment.ingest.url, 200, "processor")
        agents = Agents(deployment.ingest.url, jobs, workdir, "processor", rate=400, duration=60)
        time.sleep(5)
        for round_ in range(3):
            # The processor commits a batch's input after its outputs are acknowledged; a kill
            # in between leaves output written whose input is not committed, and the restart
            # processes it again (tests/integration/test_faults.py forces that case).
            time.sleep(4.0 + 0.7 * round_)
            processor.kill()
            kills += 1
            log(f"processor_kill: SIGKILL {kills}")
            time.sleep(2)
            processor.start()
            processor.wait_healthy()
        result = agents.wait()
        once = drained(database_url, result)
        events = topic_end_offsets(SHARED_KAFKA, f"{prefix}executions")
    return {
        "agents": answers(result, PUBLISH_TIMEOUT + HANG_MARGIN),
        "kills": kills,
        "execution_events_on_topic": events,
        "execution_events_written_twice": events - once["rows_total"],
        "exactly_once": once,
    }


def drill_postgres_stop(workdir: Path) -> dict[str, Any]:
    # Its own folder under /tmp, which the postgres user can reach (the workdir is root's).
    postgres = harness.PrivatePostgres(harness.scratch("pg"))
    log(f"postgres_stop: initdb a private PostgreSQL on port {postgres.port}")
    postgres.init()
    try:
        with trio(workdir, postgres.url) as (deployment, prefix):
            jobs = harness.register_jobs(deployment.ingest.url, 200, "postgres")
            agents = Agents(deployment.ingest.url, jobs, workdir, "postgres", rate=200, duration=70)
            time.sleep(10)
            group = PERSISTER_GROUP
            stopped = time.time()
            postgres.stop("fast")
            log("postgres_stop: PostgreSQL stopped for 30 s")
            time.sleep(5)  # the batch in flight when it stopped has failed by now
            offsets_early = harness.group_offsets(SHARED_KAFKA, group)
            time.sleep(24)
            offsets_late = harness.group_offsets(SHARED_KAFKA, group)
            time.sleep(1)
            postgres.start()
            restarted = time.time()
            log("postgres_stop: PostgreSQL started again")
            result = agents.wait()
            once = drained(postgres.url, result)
            mine = [key for key in offsets_late if key.startswith(f"{prefix}executions:")]
            moved = {k: offsets_late[k] - offsets_early.get(k, 0) for k in mine}
    finally:
        postgres.remove()
    return {
        "agents": answers(result, PUBLISH_TIMEOUT + HANG_MARGIN),
        "postgres_down_s": round(restarted - stopped, 1),
        "accepted_while_postgres_down": accepted_between(result, stopped + 1, restarted),
        "persister_offsets_moved_while_down": sum(moved.values()),
        "exactly_once": once,
    }


def drill_replay(workdir: Path) -> dict[str, Any]:
    with (
        harness.fresh_database(label="drill_replay") as database_url,
        trio(workdir, database_url) as (deployment, _prefix),
    ):
        jobs = harness.register_jobs(deployment.ingest.url, 1, "replay")
        jobs_file = workdir / "replay.jobs"
        jobs_file.write_text(f"{jobs[0]}\n")
        summary_file = workdir / "replay.json"
        argv = [
            sys.executable, "-m", "benchmarks.loadgen", "--url", deployment.ingest.url,
            "--api-key", API_KEY, "--jobs-file", str(jobs_file), "--mode", "replay",
            "--count", "100", "--max-retries", "10", "--retry-cap", "5",
            "--hard-stop", "120", "--id-prefix", "replay", "--mix", "status:1",
            "--attempts", str(workdir / "replay.tsv"), "--summary", str(summary_file),
        ]  # fmt: skip
        subprocess.run(argv, check=True, timeout=180, stdout=subprocess.DEVNULL)
        summary = json.loads(summary_file.read_text())
        once = harness.wait_persisted(database_url, ["replay-replayed"], timeout=120)
        time.sleep(3)  # any late duplicate would show now
        once = harness.rows_for(database_url, ["replay-replayed"])
    return {
        "agents": {
            "attempts": summary["attempts"],
            "by_status": summary["status_counts"],
            "acknowledged": summary["status_counts"].get("200", 0),
            "gave_up": summary["gave_up"],
            "retry_after_missing": summary["retry_after_missing"],
            "slowest_answer_s": round(summary["max_latency_s"], 2),
            "over_bound": int(summary["max_latency_s"] > PUBLISH_TIMEOUT + HANG_MARGIN),
        },
        "executions_for_the_report": once["rows_total"],
        "exactly_once": once,
    }


DRILLS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "replay": drill_replay,
    "persister_kill": drill_persister_kill,
    "processor_kill": drill_processor_kill,
    "postgres_stop": drill_postgres_stop,
    "broker_kill": drill_broker_kill,
}


def run(names: list[str], keep: bool = False) -> dict[str, Any]:
    workdir = harness.scratch("drills")
    results: dict[str, Any] = {"machine": harness.machine(), "drills": {}}
    for name in names:
        part = workdir / name
        part.mkdir()
        log(f"--- drill {name} (load {harness.load_average()})")
        started = time.monotonic()
        try:
            outcome = DRILLS[name](part)
            outcome["passed"] = verdict(outcome)
        except Exception as error:  # a drill that could not run is reported, not hidden
            outcome = {"passed": False, "error": f"{type(error).__name__}: {error}"}
        outcome["seconds"] = round(time.monotonic() - started, 1)
        outcome["load"] = harness.load_average()
        results["drills"][name] = outcome
        log(f"drill {name}: {'PASSED' if outcome['passed'] else 'FAILED'}")
    if keep:
        results["workdir"] = str(workdir)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(DRILLS), help="repeatable")
    parser.add_argument("--out", help="JSON file (else stdout)")
    parser.add_argument("--keep", action="store_true", help="keep logs and raw attempts")
    args = parser.parse_args(argv)
    results = run(args.only or list(DRILLS), keep=args.keep)
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0 if all(d.get("passed") for d in results["drills"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
