"""Load: several client processes send bursts of goals at once, far more than the queue
holds, while a continuous query runs and frames stream at 10 Hz. Every goal must get a
response: accepted goals exactly one result (an answer, or ERROR_BUSY when the queue
was full), the node stays active and its memory bounded."""
from __future__ import annotations

import collections
import os
import sys
import time
from pathlib import Path

from action_msgs.msg import GoalStatus

from molmo2_ros.action import Ground

sys.path.insert(0, str(Path(__file__).parent))
import goal_clients  # noqa: E402
from node_harness import Harness, NodeProcess, write_params  # noqa: E402

R = Ground.Result
TOPIC = "/load_test/camera/image_raw"
CLIENTS, GOALS, BURSTS = 3, 20, 2


def test_bursts_from_several_clients_get_every_goal_answered(tmp_path):
    domain = 150 + os.getpid() % 80
    params = write_params(tmp_path / "params.yaml", image_topic=TOPIC, queue_size=2, max_frames=4,
                          query="point: red square", query_period=0.5, diagnostics_period=0.5)
    node = NodeProcess(params, domain, tmp_path / "node.log")
    harness = Harness(domain, TOPIC)
    stop_frames = None
    try:
        harness.wait_diag(lambda d: d["state"] == "active", timeout=180, what="the node to become active")
        stop_frames = harness.stream_frames(hz=10)
        harness.wait_for(lambda: any(m.query_id.startswith("topic-") for m in harness.groundings), 120,
                         "the continuous query's first result")
        rss_before = node.rss_bytes()
        start = time.time() + 5.0  # the clients' start-up, then all at once
        procs = goal_clients.launch(CLIENTS, domain, GOALS, at=[start, start + 15.0], timeout=60.0)
        goals = [g for report in goal_clients.collect(procs, timeout=240) for g in report["goals"]]
        time.sleep(1.0)  # the last results' ~/grounding messages
        rss_after = node.rss_bytes()
        diag = harness.wait_diag(lambda d: True)
    finally:
        if stop_frames is not None:
            stop_frames.set()
        harness.close()
        node.stop()
    print(node.log()[-2000:])

    codes = collections.Counter(g.get("error_code") for g in goals)
    no_response = [g for g in goals if "accepted" not in g]
    no_result = [g for g in goals if g.get("accepted") and "result_t" not in g]
    published = collections.Counter(m.query_id for m in harness.groundings)
    answered = [g for g in goals if g.get("error_code") == R.ERROR_NONE]
    print(f"load: {CLIENTS} clients x {GOALS} goals x {BURSTS} bursts = {len(goals)} goals: "
          f"{len(goals) - len(no_response)} goal responses, {codes[R.ERROR_NONE]} results, "
          f"{codes[R.ERROR_BUSY]} ERROR_BUSY, {len(no_response)} without a response, "
          f"{len(no_result)} accepted without a result; continuous results "
          f"{sum(1 for q in published if q.startswith('topic-'))}; node RSS "
          f"{rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    assert len(goals) == CLIENTS * GOALS * BURSTS
    assert not no_response and not no_result
    assert all(g["accepted"] for g in goals)
    assert codes[R.ERROR_NONE] + codes[R.ERROR_BUSY] == len(goals), codes
    assert codes[R.ERROR_NONE] >= BURSTS and codes[R.ERROR_BUSY] >= BURSTS  # the queue overflowed
    assert all(g["status"] == (GoalStatus.STATUS_SUCCEEDED if g["error_code"] == R.ERROR_NONE
                               else GoalStatus.STATUS_ABORTED) for g in goals)
    # Exactly one result per answered goal: one Grounding each on ~/grounding, none for BUSY.
    assert all(published[g["goal_id"]] == 1 for g in answered)
    assert not any(published[g["goal_id"]] for g in goals if g["error_code"] == R.ERROR_BUSY)
    assert diag["state"] == "active" and "Traceback" not in node.log()
    assert rss_after - rss_before < 100 * 2**20
