"""Run every benchmark and drill; write ``benchmarks/results/latest.json`` and ``latest.md``.

``python -m benchmarks`` (``make bench``) runs the pipeline benchmark (``bench_pipeline``: the
distributed system against the write-per-request baseline and the embedded mode, a burst, a
persister backlog), the fault drills (``drills``) and the brlog parser benchmark
(``bench_brlog``). ``--quick`` shortens every phase for a smoke run; ``--skip-drills`` and
``--skip-brlog`` leave those out. It needs the Kafka broker on 127.0.0.1:9092 and the
PostgreSQL on 127.0.0.1:5432 (``make services-up``); nothing else is reached.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import bench_pipeline, drills, harness, report

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    bench_pipeline.plan_arguments(parser)
    parser.add_argument("--skip-drills", action="store_true")
    parser.add_argument("--skip-brlog", action="store_true")
    parser.add_argument("--drill", action="append", choices=list(drills.DRILLS))
    parser.add_argument("--results", default=str(RESULTS), help="folder for latest.json/.md")
    args = parser.parse_args(argv)

    plan, parts = bench_pipeline.plan_from(args)
    results = bench_pipeline.run(plan, parts, keep=args.keep)
    if not args.skip_drills:
        harness.log("--- fault drills")
        results["drills"] = drills.run(args.drill or list(drills.DRILLS), keep=args.keep)
        results["drills"].pop("machine", None)
    if not args.skip_brlog:
        harness.log("--- brlog parser")
        entries = "20000" if args.quick else "100000"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_brlog", "--entries", entries],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        try:
            results["brlog"] = json.loads(done.stdout)
        except json.JSONDecodeError:
            results["brlog"] = {"error": done.stderr[-2000:]}
    results["load_at_end"] = harness.load_average()

    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "latest.md").write_text(report.render(results))
    harness.log(f"results in {folder / 'latest.json'} and {folder / 'latest.md'}")
    print(report.render(results))
    drills_passed = all(
        d.get("passed") for d in results.get("drills", {}).get("drills", {}).values()
    )
    return 0 if drills_passed else 1


if __name__ == "__main__":
    sys.exit(main())
