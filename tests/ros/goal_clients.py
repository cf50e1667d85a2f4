"""Action clients in their own OS processes, each sending bursts of Ground goals at
once, as several users of one node would. Used by the load test and bench/bench_soak.py.

One process (`python goal_clients.py --domain D --goals M --at T1 T2 ...`) is one ROS
node with one ActionClient. Its goal and result services keep every response (KEEP_ALL):
with the default (keep last 10) a client with more than 10 goals in flight loses
responses in its own DDS reader when they arrive faster than it takes them, whatever the
server does (docs/node.md, "Bursts of goals"). At each wall-clock time T it sends M goals
without waiting between them, then waits until every goal has its goal response and,
when accepted, its result (or `--timeout` s pass). With `--until T` it keeps sending
bursts until wall time T, `--pause` s after each burst is answered. It prints one JSON
object: a record per goal (sent/response/result times, accepted, status, error_code).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ACTION = "/molmo2_grounding/ground"


def run_client(args) -> None:
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile

    from molmo2_ros.action import Ground

    rclpy.init(domain_id=args.domain)
    node = rclpy.create_node(args.name)
    keep_all = QoSProfile(history=HistoryPolicy.KEEP_ALL)
    client = ActionClient(node, Ground, ACTION, goal_service_qos_profile=keep_all,
                          result_service_qos_profile=keep_all)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    records: list[dict] = []
    lock = threading.Lock()

    def on_result(record, future):
        with lock:
            record["result_t"] = time.time()
            record["status"] = future.result().status
            record["error_code"] = future.result().result.error_code
            record["goal_id"] = record.pop("_goal_id")

    def on_goal_response(record, future):
        handle = future.result()
        with lock:
            record["response_t"] = time.time()
            record["accepted"] = handle.accepted
            record["_goal_id"] = bytes(handle.goal_id.uuid).hex()
        if handle.accepted:
            handle.get_result_async().add_done_callback(lambda f: on_result(record, f))

    def burst(index: int) -> list[dict]:
        sent = []
        for i in range(args.goals):
            record = {"burst": index, "sent_t": time.time()}
            future = client.send_goal_async(Ground.Goal(query=args.query, task=0))
            future.add_done_callback(lambda f, r=record: on_goal_response(r, f))
            sent.append(record)
        return sent

    def answered(record) -> bool:
        return "result_t" in record or record.get("accepted") is False

    if not client.wait_for_server(timeout_sec=60.0):
        raise SystemExit(f"{args.name}: action server {ACTION} not available")
    times = list(args.at)
    index = 0
    while times or (args.until and time.time() < args.until):
        start = times.pop(0) if times else time.time()
        time.sleep(max(0.0, start - time.time()))
        sent = burst(index)
        records += sent
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            with lock:
                if all(answered(r) for r in sent):
                    break
            time.sleep(0.02)
        index += 1
        if not times and args.until:
            time.sleep(args.pause)
    with lock:
        print(json.dumps({"client": args.name, "goals": records}), flush=True)
    executor.shutdown()
    spinner.join()
    node.destroy_node()
    rclpy.shutdown()


def launch(n: int, domain: int, goals: int, at: list[float], timeout: float = 120.0,
           until: float = 0.0, pause: float = 0.0, query: str = "red square") -> list[subprocess.Popen]:
    """Start `n` client processes (see the module docstring); collect them with `collect`."""
    procs = []
    for i in range(n):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--domain", str(domain), "--name", f"burst_client_{i}",
               "--goals", str(goals), "--timeout", str(timeout), "--query", query,
               "--until", str(until), "--pause", str(pause), "--at", *map(str, at)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def collect(procs: list[subprocess.Popen], timeout: float) -> list[dict]:
    """Every client's report (a failed client raises with its stderr)."""
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"client exited {proc.returncode}: {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", type=int, required=True)
    parser.add_argument("--name", default="burst_client")
    parser.add_argument("--goals", type=int, default=20, help="goals per burst")
    parser.add_argument("--at", type=float, nargs="*", default=[], help="wall-clock times of the bursts")
    parser.add_argument("--until", type=float, default=0.0, help="then keep bursting until this wall time")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between repeated bursts")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a burst's answers")
    parser.add_argument("--query", default="red square")
    run_client(parser.parse_args())


if __name__ == "__main__":
    main()
