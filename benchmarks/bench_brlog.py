"""Benchmark of the brlog parser on synthetic run histories.

Writes brlog files of many interleaved task runs (UTF-16LE with a byte-order mark, as
PowerShell copies are, and plain UTF-8) to a temporary directory, times ``parse_brlog``
and ``iter_brlog_entries`` on them, and measures peak memory of each in a fresh
interpreter so that the numbers of one run do not leak into the next. Memory is measured
for a small and a large file: the streaming reader must not grow with the file.

Run from the repository root: ``python -m benchmarks.bench_brlog [--entries N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape

from processors.aomei.brlog import iter_brlog_entries, parse_brlog

REPO_ROOT = Path(__file__).resolve().parents[1]
ENCODINGS = ("utf-16-le", "utf-8")
SMALL_ENTRIES = 10_000
DEFAULT_ENTRIES = 100_000
FIRST_EPOCH = 1_700_000_000
# (task GUID, task name, operation) of the synthetic machine's tasks.
TASKS = (
    ("3F2504E0-4F89-41D3-9A0C-0305E82C3301", "System Backup Daily", "System Backup"),
    ("6B29FC40-CA47-1067-B31D-00DD010662DA", "Documents to NAS", "File Backup"),
    ("A8098C1A-F86E-11DA-BD1A-00112444BE1E", "Photos \u2192 NAS", "Sauvegarde incr\u00e9mentielle"),
    ("0E984725-C51C-4BF4-9960-E1C80E27ABA0", "Mail & Contacts", "File Sync"),
    ("F47AC10B-58CC-4372-A567-0E02B2C3D479", "\u7cfb\u7edf\u5907\u4efd", "Disk Backup"),
)
OUTCOMES = (
    ("Success", "0", "The operation completed successfully."),
    ("Failed", "4103", "Failed to write file."),
    ("Warning", None, "Some files were skipped."),
)


def synthetic_logs(entries: int, seed: int = 7) -> Iterator[str]:
    """Yield ``<Log>`` elements of interleaved task runs in time order."""
    chooser = random.Random(seed)
    epoch = FIRST_EPOCH
    for _number in range(entries):
        guid, name, operation = chooser.choice(TASKS)
        result, code, detail = chooser.choices(OUTCOMES, weights=(90, 7, 3))[0]
        epoch += chooser.randint(60, 3600)
        code_line = f"    <ResultCode>{code}</ResultCode>\r\n" if code is not None else ""
        yield (
            f'  <Log ID="{{{guid}}}">\r\n'
            f"    <Time>{epoch}</Time>\r\n"
            f"    <Task>{escape(name)}</Task>\r\n"
            f"    <Operation>{escape(operation)}</Operation>\r\n"
            f"    <Result>{result}</Result>\r\n"
            f"{code_line}"
            f'    <Detail Level="1">{escape(detail)}</Detail>\r\n'
            "  </Log>\r\n"
        )


def write_brlog(path: Path, entries: int, encoding: str) -> int:
    """Write a synthetic brlog file in batches; return its size in bytes."""
    with path.open("wb") as handle:
        if encoding == "utf-16-le":
            handle.write(b"\xff\xfe")
        head = f'<?xml version="1.0" encoding="{encoding}"?>\r\n<BRLog>\r\n'
        handle.write(head.encode(encoding))

        batch: list[str] = []
        for log in synthetic_logs(entries):
            batch.append(log)
            if len(batch) >= 1000:
                handle.write("".join(batch).encode(encoding))
                batch.clear()
        handle.write("".join(batch).encode(encoding))
        handle.write("</BRLog>\r\n".encode(encoding))
    return path.stat().st_size


def time_parse(path: Path) -> tuple[float, int]:
    """Read and parse the whole file in memory; return (seconds, entries)."""
    started = time.perf_counter()
    result = parse_brlog(path.read_bytes())
    return time.perf_counter() - started, len(result.entries)


def time_iter(path: Path) -> tuple[float, int]:
    """Stream through the file; return (seconds, entries)."""
    started = time.perf_counter()
    count = sum(1 for _entry in iter_brlog_entries(path))
    return time.perf_counter() - started, count


def best_of(
    runs: int, measure: Callable[[Path], tuple[float, int]], path: Path
) -> tuple[float, int]:
    """Return the fastest of several runs of a timing function."""
    timings = [measure(path) for _run in range(runs)]
    return min(timings)


def timing_report(mode: str, encoding: str, seconds: float, entries: int) -> dict[str, object]:
    """Describe one timing in the numbers the target is stated in."""
    return {
        "mode": mode,
        "encoding": encoding,
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_second": round(entries / seconds),
        "seconds_per_10k_entries": round(seconds * 10_000 / entries, 4),
    }


def measure_in_child(mode: str, path: Path) -> dict[str, object]:
    """Run one mode in a fresh interpreter and return its memory figures."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_brlog", "--child", mode, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    figures: dict[str, object] = json.loads(completed.stdout)
    return figures


def peak_rss_kib() -> int:
    """Peak resident memory of this process in KiB.

    Linux's VmHWM belongs to the process image, so a child started by a large parent does
    not inherit the parent's peak (ru_maxrss can: it survives exec); elsewhere
    ru_maxrss is the fallback.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def read_all(mode: str, path: Path) -> int:
    """Read the file in one mode and return the number of entries found."""
    if mode == "iter":
        return sum(1 for _entry in iter_brlog_entries(path))
    if mode == "parse":
        return len(parse_brlog(path.read_bytes()).entries)
    raise ValueError(f"unknown mode {mode!r}")


def child_main(mode: str, path: Path) -> None:
    """In the child: read the file once for peak RSS, once under tracemalloc; print JSON.

    The two runs are separate because tracemalloc's own bookkeeping inflates RSS.
    """
    rss_before = peak_rss_kib()
    entries = read_all(mode, path)
    rss_after = peak_rss_kib()

    tracemalloc.start()
    read_all(mode, path)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print(
        json.dumps(
            {
                "mode": mode,
                "entries": entries,
                "file_bytes": path.stat().st_size,
                "tracemalloc_peak_kib": peak // 1024,
                "peak_rss_kib": rss_after,
                "peak_rss_growth_kib": rss_after - rss_before,
            }
        )
    )


def run_benchmark(entries: int, runs: int) -> dict[str, object]:
    """Generate the files, time both readers and measure their memory."""
    timings: list[dict[str, object]] = []
    memory: list[dict[str, object]] = []
    files: dict[str, int] = {}

    with tempfile.TemporaryDirectory(prefix="bench_brlog_") as folder:
        for encoding in ENCODINGS:
            for size in sorted({SMALL_ENTRIES, entries}):
                path = Path(folder) / f"brlog_{encoding}_{size}.xml"
                files[path.name] = write_brlog(path, size, encoding)

                if size == entries:
                    for mode, measure in (("parse_brlog", time_parse), ("iter", time_iter)):
                        seconds, found = best_of(runs, measure, path)
                        assert found == size, f"{mode} found {found} of {size} entries"
                        timings.append(timing_report(mode, encoding, seconds, found))

                for mode in ("iter", "parse"):
                    figures = measure_in_child(mode, path)
                    figures["encoding"] = encoding
                    memory.append(figures)

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "files_bytes": files,
        "timing": timings,
        "memory": memory,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the benchmark result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=DEFAULT_ENTRIES)
    parser.add_argument("--runs", type=int, default=2, help="timing runs, best is kept")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child_main(args.child[0], Path(args.child[1]))
        return 0

    print(json.dumps(run_benchmark(args.entries, max(1, args.runs)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
