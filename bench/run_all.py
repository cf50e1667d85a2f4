"""Run every benchmark in bench/ (bench_*.py, default arguments) and print one JSON.

Each benchmark prints its own JSON report with ratios against a baseline run in the
same process; this collects them under "benchmarks" by name (bench_preprocess.py ->
"preprocess"). A benchmark that fails or prints no JSON is reported under "failed" with
the end of its output, and the exit status is then 1.

    .venv/bin/python bench/run_all.py [--only preprocess ingest] [--skip stages] [--timeout 900]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def parse_report(stdout: str):
    """The benchmark's JSON: the whole output, or the last JSON object that starts a line."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(stdout) if ch == "{" and (i == 0 or stdout[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            return decoder.raw_decode(stdout, start)[0]
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON report in its output")


def run_one(path: Path, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=timeout,
                          cwd=BENCH_DIR.parent, env=env)
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
    return {"report": parse_report(proc.stdout), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="benchmark names to run (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], help="benchmark names to leave out")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark")
    args = parser.parse_args()
    found = discover()
    unknown = (set(args.only or []) | set(args.skip)) - set(found)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; found {sorted(found)}")
    names = [n for n in (args.only or found) if n not in args.skip]

    benchmarks, failed = {}, {}
    for name in names:
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        try:
            result = run_one(found[name], args.timeout)
            benchmarks[name] = {"wall_s": result["seconds"], "report": result["report"]}
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            failed[name] = str(exc)
    print(json.dumps({
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1")},
        "benchmarks": benchmarks,
        "failed": failed,
    }, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
