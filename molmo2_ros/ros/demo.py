"""`molmo2-ros demo`: the whole system end to end on one command.

Starts the video publisher (the synthetic shapes scene, or --video) and the grounding
node, with its default parameters, as their own processes, waits until the node's window
is full (or holds --frames frames; from its /diagnostics), sends one action goal, prints
the result and writes the frames the model saw with the answer drawn on them. Uses
--model, by default the packaged trained model, else the tiny random model built into the
cache (it runs everything; its answers are meaningless).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

NAMESPACE = "/molmo2_demo"
TOPIC = f"{NAMESPACE}/camera/image_raw"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint folder or hub id (default: the packaged model, "
                                        "else the tiny random model)")
    parser.add_argument("--backend", default="torch", help="torch, onnxruntime or tensorrt")
    parser.add_argument("--engine-dir", default="", help="exported engines (onnxruntime/tensorrt)")
    parser.add_argument("--device", default="", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--video", help="video file to publish (default: the synthetic shapes scene)")
    parser.add_argument("--query", default="red circle", help="what to ground (default: %(default)s)")
    parser.add_argument("--task", choices=("point", "count", "track", "ask"), default="point")
    parser.add_argument("--frames", type=int, default=0,
                        help="frames the node's window must hold before asking (default: a full window, "
                             "the node's max_frames)")
    parser.add_argument("--depth", action="store_true",
                        help="the publisher adds a registered depth image and camera info of the synthetic "
                             "scene; the node answers with 3D positions")
    parser.add_argument("--out", default="molmo2_demo.png", help="annotated image (.png) or video (.mp4)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the process group (the ROS wheels re-execute Python once), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(args: argparse.Namespace) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.action import ActionClient
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from molmo2_ros.action import Ground
    from molmo2_ros.annotate import write_annotation
    from molmo2_ros.core.grounding import Frame, Task
    from molmo2_ros.backends.default_model import cache_dir, default_model
    from molmo2_ros.core.image_conversion import image_to_rgb
    from molmo2_ros.ros.messages import TASK_TO_MSG, from_time, grounding_from_msg

    if args.frames < 0:
        raise ValueError(f"--frames must be >= 0 (0: a full window), got {args.frames}")
    model = args.model
    if not model:
        model, is_random = default_model()
        if is_random:
            print(f"no packaged model: using the tiny RANDOM model {model} (answers are meaningless)")
    logs = cache_dir() / "demo_logs"
    logs.mkdir(parents=True, exist_ok=True)
    publisher_cmd = [sys.executable, "-m", "molmo2_ros.ros.video_publisher", "--topic", TOPIC, "--rate", "10"]
    if args.video:
        publisher_cmd += ["--video", args.video]
    if args.depth:
        publisher_cmd.append("--depth")
    node_cmd = [sys.executable, "-m", "molmo2_ros.cli", "node", "--ros-args",
                "-r", f"__ns:={NAMESPACE}", "-p", f"model:={model}", "-p", f"backend:={args.backend}",
                "-p", f"image_topic:={TOPIC}", "-p", f"max_new_tokens:={args.max_new_tokens}"]
    if args.depth:
        node_cmd += ["-p", f"depth_topic:={NAMESPACE}/camera/depth/image_raw"]
    for name, value in (("engine_dir", args.engine_dir), ("device", args.device)):
        if value:
            node_cmd += ["-p", f"{name}:={value}"]
    processes = [_start(publisher_cmd, logs / "video_publisher.log"), _start(node_cmd, logs / "node.log")]

    rclpy.init()
    node = rclpy.create_node("molmo2_demo_client", namespace=NAMESPACE)
    seen: dict[int, Image] = {}  # camera frames by stamp, to draw the answer on

    def keep(msg: Image) -> None:
        seen[from_time(msg.header.stamp)] = msg
        while len(seen) > 200:
            seen.pop(min(seen))

    node.create_subscription(Image, TOPIC, keep, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    window = {"frames": 0, "max_frames": 0}

    def diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"{NAMESPACE.strip('/')}/molmo2_grounding:"):
                values = {kv.key: kv.value for kv in status.values}
                window["frames"] = int(values.get("window_frames", 0))
                window["max_frames"] = int(values.get("window_max_frames", 0))

    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    client = ActionClient(node, Ground, f"{NAMESPACE}/molmo2_grounding/ground")
    deadline = time.monotonic() + args.timeout
    try:
        print(f"starting the video publisher and the node (logs in {logs}) ...")
        while not client.server_is_ready():
            rclpy.spin_once(node, timeout_sec=0.2)
            for proc, name in zip(processes, ("video publisher", "node")):
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} exited with code {proc.returncode}; see {logs}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not come up in {args.timeout} s; see {logs / 'node.log'}")
        while not window["max_frames"]:
            rclpy.spin_once(node, timeout_sec=0.1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no diagnostics from the node in {args.timeout} s; see {logs}")
        wanted = min(args.frames or window["max_frames"], window["max_frames"])
        print(f"waiting for {wanted} frames in the node's window ...")
        while window["frames"] < wanted:
            rclpy.spin_once(node, timeout_sec=0.1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node's window did not fill in {args.timeout} s; see {logs}")
        print(f"asking: {args.task} {args.query!r}")
        future = client.send_goal_async(Ground.Goal(query=args.query, task=TASK_TO_MSG[Task(args.task)]))
        rclpy.spin_until_future_complete(node, future, timeout_sec=max(1.0, deadline - time.monotonic()))
        result_future = future.result().get_result_async()
        rclpy.spin_until_future_complete(node, result_future, timeout_sec=max(1.0, deadline - time.monotonic()))
        if not result_future.done():
            raise RuntimeError(f"no answer in {args.timeout} s")
        result = result_future.result().result
        if result.error_code != Ground.Result.ERROR_NONE:
            print(f"error {result.error_code}: {result.error_message}", file=sys.stderr)
            return 1
        grounding = grounding_from_msg(result.grounding)
        msg = result.grounding
        print(f"{grounding.task.value}: {grounding.query!r} over {len(msg.frame_stamps)} frames of "
              f"{msg.header.frame_id!r}, newest stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}")
        print(f"model: {grounding.model} ({grounding.backend})")
        print(f"answer: {grounding.answer!r}")
        if grounding.count is not None:
            print(f"count: {grounding.count}")
        for p in grounding.points:
            where = (f", 3D ({p.position[0]:.3f}, {p.position[1]:.3f}, {p.position[2]:.3f}) m"
                     if p.position is not None else "")
            print(f"  point {p.object_id} {p.label!r}: x={p.x:.1f} y={p.y:.1f} px at stamp {p.stamp_ns}{where}")
        for w in grounding.warnings:
            print(f"warning: {w}")
        t = grounding.timings
        print(f"timings: queue {t.queue_wait:.3f} s, preprocess {t.preprocess:.3f} s, generation {t.generation:.3f} s")
        images = [seen.get(s) for s in grounding.frame_stamps_ns]
        frames = []
        for stamp, image in zip(grounding.frame_stamps_ns, images):
            if image is not None:
                rgb, size = image_to_rgb(image)
                frames.append(Frame(image=rgb, stamp_ns=stamp, source_size=size, frame_id=image.header.frame_id))
        if frames:
            print(f"annotated: {write_annotation(args.out, frames, grounding)}")
        else:
            print("warning: the frames the model saw were not received here; no annotated image", file=sys.stderr)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for proc in reversed(processes):
            _stop(proc)
