"""The short markdown summary of a benchmark run (``benchmarks/results/latest.md``)."""

from __future__ import annotations

from typing import Any

TARGETS = {
    "sustained": 2500.0,  # accepted reports/s
    "fixed_rate_p99_ms": 50.0,
    "end_to_end_p99_ms": 1000.0,
    "backlog_rows_per_s": 10_000.0,
    "ingest_rss_mib": 150.0,
}


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text}{unit}"


def _ratio(value: Any, reference: Any) -> str:
    if (
        not isinstance(value, int | float)
        or not isinstance(reference, int | float)
        or not reference
    ):
        return "-"
    return f"{value / reference:.2f}x"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def _rss(system: dict[str, Any] | None, service: str | None = None) -> float | None:
    memory = _get(system or {}, "memory")
    if not memory:
        return None
    if service is not None:
        return _get(memory, service, "peak_rss_mib")
    return float(sum(item["peak_rss_mib"] for item in memory.values()))


def _cpu_per_report(system: dict[str, Any] | None) -> float | None:
    """The services' CPU (Kafka and PostgreSQL not counted) per report, in microseconds."""
    cores = _get(system or {}, "sustained", "service_cpu_cores")
    rate = _get(system or {}, "sustained", "accepted_per_s")
    if not cores or not rate:
        return None
    return float(sum(cores.values())) / rate * 1e6


def render(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    versions = machine.get("versions", {})
    dist = results.get("distributed")
    base = results.get("baseline")
    emb = results.get("embedded")
    lines = [
        "# backuphub benchmark",
        "",
        f"Machine: {machine.get('cores')} cores ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gib')} GiB RAM, kernel {machine.get('kernel')}; everything "
        "(load generator, Kafka, PostgreSQL, the services) on this one machine, shared with other "
        "work. Load average (1/5/15 min) at start "
        f"{results.get('load_at_start')}, at end {results.get('load_at_end')}.",
        f"Versions: Python {versions.get('python')}, Kafka {versions.get('kafka')}, "
        f"PostgreSQL {versions.get('postgresql')}, FastAPI {versions.get('fastapi')}, "
        f"uvicorn {versions.get('uvicorn')}, aiokafka {versions.get('aiokafka')}, "
        f"uvloop {versions.get('uvloop')}, SQLAlchemy "
        f"{versions.get('sqlalchemy')}, psycopg {versions.get('psycopg')}.",
        f"Run started {results.get('started')}; plan: {results.get('plan')}.",
        *([results["note"]] if results.get("note") else []),
        "",
        "| figure | target | distributed | baseline (write per request) | embedded (SQLite) "
        "| ÷ baseline | ÷ embedded |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(label: str, target: str, path: tuple[str, ...], unit: str = "") -> None:
        values = [_get(s or {}, *path) for s in (dist, base, emb)]
        lines.append(
            f"| {label} | {target} | {_fmt(values[0], unit)} | {_fmt(values[1], unit)} | "
            f"{_fmt(values[2], unit)} | {_ratio(values[0], values[1])} | "
            f"{_ratio(values[0], values[2])} |"
        )

    row("accepted reports/s, 200 connections", "≥ 2,500", ("sustained", "accepted_per_s"))
    runs = _get(dist or {}, "sustained", "runs_per_s")
    if runs:
        lines.append(
            "| the distributed system's closed-loop runs (the median one is reported) | | "
            + ", ".join(_fmt(rate) for rate in runs)
            + "/s | | | | |"
        )
    row(
        "reports/s stored, until the phases' last 200 was in the database",
        "",
        ("sustained", "stored_per_s"),
    )
    row("POST p50 at that load", "", ("sustained", "post_latency_ms", "p50"), " ms")
    row("POST p99 at that load", "", ("sustained", "post_latency_ms", "p99"), " ms")
    row("reports/s reached in the 1,000/s phase", "1,000", ("fixed_rate", "accepted_per_s"))
    row("POST p50 at 1,000/s", "", ("fixed_rate", "post_latency_ms", "p50"), " ms")
    row("POST p95 at 1,000/s", "", ("fixed_rate", "post_latency_ms", "p95"), " ms")
    row("POST p99 at 1,000/s", "≤ 50 ms", ("fixed_rate", "post_latency_ms", "p99"), " ms")
    row("200 → row visible, p50", "", ("fixed_rate", "end_to_end", "p50_ms"), " ms")
    row("200 → row visible, p99", "≤ 1 s", ("fixed_rate", "end_to_end", "p99_ms"), " ms")
    row("503 answers (both phases)", "", ("sustained", "rejected_503"))
    row("other errors (both phases)", "", ("sustained", "errors_other"))
    row("load generator CPU (cores)", "", ("sustained", "generator_cpu_cores"))
    cpu = [_cpu_per_report(s) for s in (dist, base, emb)]
    lines.append(
        f"| CPU of the services per accepted report, closed loop | | {_fmt(cpu[0], ' µs')} | "
        f"{_fmt(cpu[1], ' µs')} | {_fmt(cpu[2], ' µs')} | {_ratio(cpu[0], cpu[1])} | "
        f"{_ratio(cpu[0], cpu[2])} |"
    )
    lines.append(
        f"| peak RSS, all services | | {_fmt(_rss(dist), ' MiB')} | {_fmt(_rss(base), ' MiB')} "
        f"| {_fmt(_rss(emb), ' MiB')} | {_ratio(_rss(dist), _rss(base))} | "
        f"{_ratio(_rss(dist), _rss(emb))} |"
    )
    if dist:
        for name, item in dist["memory"].items():
            target = "≤ 150 MiB" if name == "ingest" else ""
            lines.append(
                f"| peak RSS {name} ({item['processes'] or '?'} process(es)) | {target} | "
                f"{_fmt(item['peak_rss_mib'], ' MiB')} | | | | |"
            )
    for label, system in (("distributed", dist), ("baseline", base), ("embedded", emb)):
        once = _get(system or {}, "exactly_once")
        if once:
            lines.append(
                f"| exactly once, {label} | every 200 once | "
                f"{once['acknowledged']:,} acknowledged, {once['missing']} missing, "
                f"{once['duplicated']} duplicated | | | | |"
            )

    burst = results.get("burst")
    backlog = results.get("backlog")
    lines += ["", "| distributed only | target | result |", "|---|---|---|"]
    paused = _get(dist or {}, "fixed_rate_pipeline_paused", "post_latency_ms")
    if paused:
        lines.append(
            f"| POST p50 / p99 at 1,000/s with processor and persister paused (ingest and Kafka "
            f"alone on the CPU) | ≤ 50 ms | {_fmt(paused['p50'], ' ms')} / "
            f"{_fmt(paused['p99'], ' ms')} |"
        )
    two = results.get("distributed_2w")
    if two:
        ingest = two["memory"]["ingest"]
        lines.append(
            f"| 2 ingest workers (`--workers 2`): accepted/s, POST p99 at 1,000/s, "
            f"end-to-end p99 | | {_fmt(_get(two, 'sustained', 'accepted_per_s'))}/s; "
            f"{_fmt(_get(two, 'fixed_rate', 'post_latency_ms', 'p99'), ' ms')}; "
            f"{_fmt(_get(two, 'fixed_rate', 'end_to_end', 'p99_ms'), ' ms')} |"
        )
        lines.append(
            f"| 2 ingest workers: ingest RSS | ≤ 150 MiB | {_fmt(ingest['peak_rss_mib'], ' MiB')} "
            f"in {ingest['processes']} processes (largest "
            f"{_fmt(ingest['peak_rss_per_process_mib'], ' MiB')}) |"
        )
    if burst:
        once = burst["exactly_once"]
        lines.append(
            f"| burst: {burst['agents']:,} agents in {burst['window_s']:.0f} s, first answers | "
            f"200 or 503 + Retry-After | {burst['first_attempt']}; every 503 had Retry-After: "
            f"{burst['every_503_had_retry_after']} |"
        )
        lines.append(
            f"| burst: after retries | all persisted once | {burst['accepted_after_retries']:,} "
            f"accepted, {burst['gave_up']} gave up; {once['missing']} missing, "
            f"{once['duplicated']} duplicated; all done in {burst['all_done_s']} s |"
        )
    if backlog:
        lines.append(
            f"| persister draining {backlog['rows']:,} queued executions | ≥ 10,000 rows/s | "
            f"{_fmt(backlog['rows_per_s'])} rows/s ({backlog['exactly_once']['missing']} missing, "
            f"{backlog['exactly_once']['duplicated']} duplicated) |"
        )
    calibrate = results.get("calibrate")
    if calibrate:
        lines.append(
            f"| load generator alone (trivial server) | not the bottleneck | "
            f"{_fmt(calibrate['closed_max_per_s'])} req/s with "
            f"{calibrate['closed_generator_cpu_cores']} cores; 3,000/s costs "
            f"{calibrate['rate_3000_generator_cpu_cores']} cores |"
        )

    drills = _get(results, "drills", "drills")
    if drills:
        lines += ["", "| fault drill | passed | detail |", "|---|---|---|"]
        for name, drill in drills.items():
            once = drill.get("exactly_once", {})
            agents = drill.get("agents", {})
            detail = drill.get("error") or (
                f"{agents.get('acknowledged', 0):,} acknowledged, {once.get('missing')} missing, "
                f"{once.get('duplicated')} duplicated; slowest answer "
                f"{agents.get('slowest_answer_s')} s; answers {agents.get('by_status')}"
            )
            lines.append(f"| {name} | {'yes' if drill.get('passed') else '**no**'} | {detail} |")

    verdicts = targets(results)
    if verdicts:
        lines += ["", "Targets: " + "; ".join(f"{k} {_met(v)}" for k, v in verdicts.items()) + "."]
    return "\n".join(lines) + "\n"


def targets(results: dict[str, Any]) -> dict[str, bool | None]:
    dist = results.get("distributed") or {}
    sustained = _get(dist, "sustained", "accepted_per_s")
    p99 = _get(dist, "fixed_rate", "post_latency_ms", "p99")
    e2e = _get(dist, "fixed_rate", "end_to_end", "p99_ms")
    backlog = _get(results, "backlog", "rows_per_s")
    rss = _get(dist, "memory", "ingest", "peak_rss_mib")
    return {
        "≥ 2,500 reports/s": None if sustained is None else sustained >= TARGETS["sustained"],
        "p99 ≤ 50 ms at 1,000/s": None if p99 is None else p99 <= TARGETS["fixed_rate_p99_ms"],
        "end-to-end p99 ≤ 1 s": None if e2e is None else e2e <= TARGETS["end_to_end_p99_ms"],
        "persister ≥ 10,000 rows/s": (
            None if backlog is None else backlog >= TARGETS["backlog_rows_per_s"]
        ),
        "ingest RSS ≤ 150 MB": None if rss is None else rss <= TARGETS["ingest_rss_mib"],
    }
