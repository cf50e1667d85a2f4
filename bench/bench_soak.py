"""Soak: the node under repeated bursts of action goals, with frames streaming and a
continuous query running; prints JSON.

Starts `molmo2-ros node` in its own process (the packaged model, `queue_size` 2, a
continuous query every 0.5 s), publishes 160x120 frames at 10 Hz, and runs `--clients`
client processes (tests/ros/goal_clients.py, each its own ROS node) that send bursts of
`--goals` goals at once, wait until every goal is answered, pause and repeat until
`--duration` s are over. Reports goals answered per second, p50/p99 latency (sent ->
result) of answers and of ERROR_BUSY refusals, goals left without a response or result
(must be 0), and the node's resident memory sampled every `--rss-every` s. There is no
baseline to compare with: the node is compared with itself over time (RSS first vs last).

    python bench/bench_soak.py [--duration 30] [--clients 3] [--goals 20] [--pause 1.0]

The default run is short (run_all.py runs it); `--duration 600` is a 10-minute soak.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ros"))
import goal_clients  # noqa: E402
from node_harness import Harness, NodeProcess, write_params  # noqa: E402

TOPIC = "/soak/camera/image_raw"
ERROR_NONE, ERROR_BUSY = 0, 6


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"n": len(values), "p50_s": round(float(p50), 3), "p99_s": round(float(p99), 3),
            "max_s": round(max(values), 3)}


def soak(duration: float, clients: int, goals: int, pause: float, rss_every: float, tmp: Path) -> dict:
    domain = 200 + os.getpid() % 30
    params = write_params(tmp / "params.yaml", image_topic=TOPIC, queue_size=2, max_frames=4,
                          query="point: red square", query_period=0.5, diagnostics_period=1.0)
    node = NodeProcess(params, domain, tmp / "node.log")
    harness = Harness(domain, TOPIC)
    rss: list[tuple[float, float]] = []
    stop_frames = done = None
    try:
        harness.wait_diag(lambda d: d["state"] == "active", timeout=300, what="the node to become active")
        stop_frames = harness.stream_frames(hz=10)
        harness.wait_for(lambda: any(m.query_id.startswith("topic-") for m in harness.groundings), 60,
                         "the continuous query's first result")
        start = time.time() + 5.0  # the clients' start-up
        done = threading.Event()

        def sample():
            while not done.is_set():
                rss.append((round(time.time() - start, 1), round(node.rss_bytes() / 2**20, 1)))
                done.wait(rss_every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        procs = goal_clients.launch(clients, domain, goals, at=[start], until=start + duration,
                                    pause=pause, timeout=60.0)
        reports = goal_clients.collect(procs, timeout=duration + 300)
        done.set()
        sampler.join()
        diag = harness.wait_diag(lambda d: True)
    finally:
        if done is not None:
            done.set()
        if stop_frames is not None:
            stop_frames.set()
        harness.close()
        node.stop()
    records = [g for report in reports for g in report["goals"]]
    codes = collections.Counter(g.get("error_code") for g in records)
    answered = [g for g in records if "result_t" in g]
    span = max(g["result_t"] for g in answered) - min(g["sent_t"] for g in records) if answered else 0.0
    return {
        "clients": clients, "goals_per_burst": goals, "duration_s": duration,
        "goals_sent": len(records),
        "bursts": len({(r["client"], g["burst"]) for r in reports for g in r["goals"]}),
        "answered_per_s": round(len(answered) / span, 2) if span else 0.0,
        "results": codes[ERROR_NONE], "busy": codes[ERROR_BUSY],
        "other_errors": {str(k): v for k, v in codes.items() if k not in (ERROR_NONE, ERROR_BUSY, None)},
        "without_response": sum("accepted" not in g for g in records),
        "accepted_without_result": sum(bool(g.get("accepted")) and "result_t" not in g for g in records),
        "latency_result": percentiles([g["result_t"] - g["sent_t"] for g in records
                                       if g.get("error_code") == ERROR_NONE]),
        "latency_busy": percentiles([g["result_t"] - g["sent_t"] for g in records
                                     if g.get("error_code") == ERROR_BUSY]),
        "latency_goal_response": percentiles([g["response_t"] - g["sent_t"] for g in records
                                              if "response_t" in g]),
        "continuous_results": sum(1 for m in harness.groundings if m.query_id.startswith("topic-")),
        "node_state": diag["state"],
        "rss_mib": rss,
        "rss_growth_mib": round(rss[-1][1] - rss[0][1], 1) if rss else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of bursts")
    parser.add_argument("--clients", type=int, default=3, help="client processes")
    parser.add_argument("--goals", type=int, default=20, help="goals per burst and client")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between a client's bursts")
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    args = parser.parse_args()
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be in (0, 3600] s")
    with tempfile.TemporaryDirectory(prefix="molmo2_soak_") as tmp:
        report = soak(args.duration, args.clients, args.goals, args.pause, args.rss_every, Path(tmp))
    print(json.dumps(report, indent=2))
    return 0 if report["without_response"] == 0 and report["accepted_without_result"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
