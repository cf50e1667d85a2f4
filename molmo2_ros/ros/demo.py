"""`molmo2-ros demo`: the whole system end to end on one command.

Starts the video publisher (the synthetic shapes scene, or --video) and the grounding
node, with its default parameters, as their own processes, waits until the node's window
is full (or holds --frames frames; from its /diagnostics), sends one action goal, prints
the result and writes the frames the model saw with the answer drawn on them. Uses
--model, by default the packaged trained model, else the tiny random model built into the
cache (it runs everything; its answers are meaningless).

With --cameras N (2 or 3), N synthetic cameras, each showing other objects (CAMERA_SCENES),
feed the one node (its `cameras` parameter); each camera is asked for its own first object
(or --query), and each answer is drawn on that camera's frames (--out with the camera's name).
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
# The synthetic cameras of a several-camera demo (here and demo.launch.py): their names,
# and the objects each one's scene shows (no object in two scenes but as a distractor's colour).
CAMERA_SCENES = {"front": "red circle,blue square,yellow triangle", "wrist": "green circle,yellow square",
                 "rear": "blue triangle,red square"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint folder or hub id (default: the packaged model, "
                                        "else the tiny random model)")
    parser.add_argument("--backend", default="torch", help="torch, onnxruntime or tensorrt")
    parser.add_argument("--engine-dir", default="", help="exported engines (onnxruntime/tensorrt)")
    parser.add_argument("--device", default="", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--video", help="video file to publish (default: the synthetic shapes scene)")
    parser.add_argument("--query", default="", help="what to ground (default: red circle; with --cameras, each "
                                                    "camera's first object)")
    parser.add_argument("--task", choices=("point", "count", "track", "ask"), default="point")
    parser.add_argument("--frames", type=int, default=0,
                        help="frames the node's window must hold before asking (default: a full window, "
                             "the node's max_frames)")
    parser.add_argument("--depth", action="store_true",
                        help="the publisher adds a registered depth image and camera info of the synthetic "
                             "scene; the node answers with 3D positions")
    parser.add_argument("--cameras", type=int, default=1, choices=(1, 2, 3),
                        help="synthetic cameras sharing the one node (default %(default)s)")
    parser.add_argument("--out", default="molmo2_demo.png", help="annotated image (.png) or video (.mp4); with "
                                                                "--cameras, one per camera (name before the suffix)")
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


def _commands(args: argparse.Namespace, model: str) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """Each camera's (name, image topic, publisher command), the only camera named "", and
    the node's command."""
    node_cmd = [sys.executable, "-m", "molmo2_ros.cli", "node", "--ros-args",
                "-r", f"__ns:={NAMESPACE}", "-p", f"model:={model}", "-p", f"backend:={args.backend}",
                "-p", f"max_new_tokens:={args.max_new_tokens}"]
    for name, value in (("engine_dir", args.engine_dir), ("device", args.device)):
        if value:
            node_cmd += ["-p", f"{name}:={value}"]
    publisher = [sys.executable, "-m", "molmo2_ros.ros.video_publisher", "--rate", "10"]
    if args.depth:
        publisher.append("--depth")
    if args.cameras == 1:
        node_cmd += ["-p", f"image_topic:={TOPIC}"]
        if args.depth:
            node_cmd += ["-p", f"depth_topic:={NAMESPACE}/camera/depth/image_raw"]
        return [("", TOPIC, publisher + ["--topic", TOPIC] + (["--video", args.video] if args.video else []))], \
            node_cmd
    names = list(CAMERA_SCENES)[:args.cameras]
    node_cmd += ["-p", f"cameras:=[{', '.join(names)}]"]
    cameras = []
    for i, name in enumerate(names):
        topic = f"{NAMESPACE}/{name}/image_raw"
        cameras.append((name, topic, publisher + ["--topic", topic, "--objects", CAMERA_SCENES[name],
                                                  "--seed", str(i), "--frame-id", f"{name}_optical_frame"]))
        node_cmd += ["-p", f"cameras.{name}.image_topic:={topic}"]
        if args.depth:
            node_cmd += ["-p", f"cameras.{name}.depth_topic:={NAMESPACE}/{name}/depth/image_raw"]
    return cameras, node_cmd


def run(args: argparse.Namespace) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.action import ActionClient
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from molmo2_ros.action import Ground
    from molmo2_ros.backends.default_model import cache_dir, default_model
    from molmo2_ros.core.grounding import Task
    from molmo2_ros.ros.messages import TASK_TO_MSG, from_time

    if args.frames < 0:
        raise ValueError(f"--frames must be >= 0 (0: a full window), got {args.frames}")
    if args.video and args.cameras > 1:
        raise ValueError("--video feeds one camera; --cameras shows synthetic scenes")
    model = args.model
    if not model:
        model, is_random = default_model()
        if is_random:
            print(f"no packaged model: using the tiny RANDOM model {model} (answers are meaningless)")
    logs = cache_dir() / "demo_logs"
    logs.mkdir(parents=True, exist_ok=True)
    cameras, node_cmd = _commands(args, model)
    names = [name for name, _, _ in cameras]
    processes = [_start(cmd, logs / f"video_publisher{'_' + name if name else ''}.log")
                 for name, _, cmd in cameras] + [_start(node_cmd, logs / "node.log")]

    rclpy.init()
    node = rclpy.create_node("molmo2_demo_client", namespace=NAMESPACE)
    seen: dict[str, dict[int, Image]] = {name: {} for name in names}  # each camera's frames by stamp

    def keep(name: str, msg: Image) -> None:
        frames = seen[name]
        frames[from_time(msg.header.stamp)] = msg
        while len(frames) > 200:
            frames.pop(min(frames))

    for name, topic, _ in cameras:
        node.create_subscription(Image, topic, lambda m, n=name: keep(n, m),
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    windows = {name: {"frames": 0, "max_frames": 0} for name in names}
    status_names = {f"{NAMESPACE.strip('/')}/molmo2_grounding: {'camera ' + n if n else 'grounding'}": n
                    for n in names}

    def diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name in status_names:
                values = {kv.key: kv.value for kv in status.values}
                window = windows[status_names[status.name]]
                window["frames"] = int(values.get("window_frames", 0))
                window["max_frames"] = int(values.get("window_max_frames", 0))

    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    client = ActionClient(node, Ground, f"{NAMESPACE}/molmo2_grounding/ground")
    deadline = time.monotonic() + args.timeout

    def spin_until(done, failure: str) -> None:
        while not done():
            rclpy.spin_once(node, timeout_sec=0.1)
            for proc in processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(proc.args[:4])} exited with code {proc.returncode}; see {logs}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{failure} in {args.timeout} s; see {logs / 'node.log'}")

    try:
        print(f"starting the video publisher{'s' if len(names) > 1 else ''} and the node (logs in {logs}) ...")
        spin_until(client.server_is_ready, "the node did not come up")
        spin_until(lambda: all(w["max_frames"] for w in windows.values()), "no diagnostics from the node")
        wanted = {n: min(args.frames or w["max_frames"], w["max_frames"]) for n, w in windows.items()}
        print(f"waiting for {max(wanted.values())} frames in the node's window ...")
        spin_until(lambda: all(windows[n]["frames"] >= wanted[n] for n in names), "the node's window did not fill")
        failed = 0
        for name in names:
            query = args.query or (CAMERA_SCENES[name].split(",")[0] if name else "red circle")
            print(f"asking{' camera ' + repr(name) if name else ''}: {args.task} {query!r}")
            future = client.send_goal_async(Ground.Goal(query=query, task=TASK_TO_MSG[Task(args.task)],
                                                        cameras=[name] if name else []))
            spin_until(future.done, "the goal was not accepted")
            result_future = future.result().get_result_async()
            spin_until(result_future.done, "no answer")
            result = result_future.result().result
            if result.error_code != Ground.Result.ERROR_NONE:
                print(f"error {result.error_code}: {result.error_message}", file=sys.stderr)
                failed += 1
                continue
            out = args.out if not name else str(Path(args.out).with_stem(f"{Path(args.out).stem}_{name}"))
            _report(result.grounding, seen[name], out)
        return 1 if failed else 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for proc in reversed(processes):
            _stop(proc)


def _report(msg, seen: dict, out: str) -> None:
    """Print one answer and draw it on the frames the model saw (those received here)."""
    from molmo2_ros.annotate import write_annotation
    from molmo2_ros.core.grounding import Frame
    from molmo2_ros.core.image_conversion import image_to_rgb
    from molmo2_ros.ros.messages import grounding_from_msg

    grounding = grounding_from_msg(msg)
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
    frames = []
    for stamp in grounding.frame_stamps_ns:
        image = seen.get(stamp)
        if image is not None:
            rgb, size = image_to_rgb(image)
            frames.append(Frame(image=rgb, stamp_ns=stamp, source_size=size, frame_id=image.header.frame_id))
    if frames:
        print(f"annotated: {write_annotation(out, frames, grounding)}")
    else:
        print("warning: the frames the model saw were not received here; no annotated image", file=sys.stderr)
