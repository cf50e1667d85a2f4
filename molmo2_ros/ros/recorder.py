"""`molmo2-ros record`: the camera and the node's answers into a rosbag2 (MCAP) recording.

For a pip install without `ros2 bag`: subscribes (rclpy, serialised messages as they come
off the wire) to the camera topic (`sensor_msgs/Image`, or `CompressedImage` on
`<topic>/compressed` with --compressed) and to the node's results
(`molmo2_ros/msg/Grounding`, default `/molmo2_grounding/grounding`), and writes them with
`rosbags` into a rosbag2 folder (metadata.yaml + one .mcap file with the message
definitions) that `ros2 bag info/play` and `molmo2-train convert` read. Stops after
--duration seconds or --max-mb megabytes, or on Ctrl-C, and always closes the bag
cleanly. Prints progress once a second.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

RESULTS_TOPIC = "/molmo2_grounding/grounding"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="rosbag2 folder to create (must not exist)")
    parser.add_argument("--image-topic", default="/camera/image_raw", help="camera topic (default %(default)s)")
    parser.add_argument("--compressed", action="store_true",
                        help="record sensor_msgs/CompressedImage on <image-topic>/compressed")
    parser.add_argument("--results-topic", default=RESULTS_TOPIC,
                        help="the node's molmo2_ros/msg/Grounding topic (default %(default)s; '' = none)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = no limit)")
    parser.add_argument("--max-mb", type=float, default=1024.0,
                        help="stop when the recorded messages reach this many MB (default %(default)s)")


def camera_topic(image_topic: str, compressed: bool) -> str:
    if compressed and not image_topic.endswith("/compressed"):
        return image_topic.rstrip("/") + "/compressed"
    return image_topic


class Recording:
    """A rosbag2 (MCAP) writer fed with serialised messages; counts what it wrote."""

    def __init__(self, out: Path, topics: dict[str, str]):
        from rosbags.rosbag2 import StoragePlugin, Writer

        from molmo2_ros.bag_types import typestore

        if out.exists():
            raise FileExistsError(f"{out} exists; choose a new --out folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        store = typestore()
        self.writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.connections = {topic: self.writer.add_connection(topic, msgtype, typestore=store)
                            for topic, msgtype in topics.items()}
        self.counts = {topic: 0 for topic in topics}
        self.bytes = 0

    def write(self, topic: str, receive_ns: int, raw: bytes) -> None:
        self.writer.write(self.connections[topic], receive_ns, raw)
        self.counts[topic] += 1
        self.bytes += len(raw)

    def close(self) -> None:
        self.writer.close()


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from molmo2_ros.msg import Grounding

    if args.duration < 0 or args.max_mb <= 0:
        raise ValueError("--duration must be >= 0 and --max-mb > 0")
    out = Path(args.out)
    camera = camera_topic(args.image_topic, args.compressed)
    image_type = CompressedImage if args.compressed else Image
    topics = {camera: f"sensor_msgs/msg/{image_type.__name__}"}
    if args.results_topic:
        topics[args.results_topic] = "molmo2_ros/msg/Grounding"
    recording = Recording(out, topics)
    rclpy.init()
    node = rclpy.create_node("molmo2_recorder")
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def keep(topic):
        return lambda raw: recording.write(topic, node.get_clock().now().nanoseconds, raw)

    # Best effort matches reliable and best-effort cameras; the results are published reliably.
    node.create_subscription(image_type, camera, keep(camera),
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT), raw=True)
    if args.results_topic:
        node.create_subscription(Grounding, args.results_topic, keep(args.results_topic),
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE), raw=True)
    limit_bytes = args.max_mb * 1e6
    started = time.monotonic()
    next_report = started + 1.0
    stop = "stopped"
    print(f"recording {', '.join(topics)} into {out} "
          f"({f'{args.duration:g} s' if args.duration else 'until Ctrl-C'}, at most {args.max_mb:g} MB)",
          flush=True)
    try:
        while True:
            executor.spin_once(timeout_sec=0.1)
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                stop = f"duration {args.duration:g} s reached"
                break
            if recording.bytes >= limit_bytes:
                stop = f"size limit {args.max_mb:g} MB reached"
                break
            if now >= next_report:
                print(f"  {_progress(recording, now - started)}", flush=True)
                next_report += 1.0
    except (KeyboardInterrupt, ExternalShutdownException):
        stop = "interrupted"
    finally:
        recording.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"{stop}: {_progress(recording, time.monotonic() - started)}; wrote {out}", flush=True)
    if not any(recording.counts.values()):
        print(f"warning: nothing arrived on {', '.join(topics)}", flush=True)
    return 0


def _progress(recording: Recording, elapsed: float) -> str:
    counts = ", ".join(f"{n} on {topic}" for topic, n in recording.counts.items())
    return f"{elapsed:.0f} s, {counts}, {recording.bytes / 1e6:.1f} MB"
