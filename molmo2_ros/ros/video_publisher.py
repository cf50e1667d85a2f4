"""Publish a video file or a synthetic moving-shapes scene as a camera topic.

    video_publisher [--video FILE] [--topic /camera/image_raw] [--compressed] [--rate 10]
                    [--size 320x240] [--frame-id camera_optical_frame] [--once]
                    [--depth [--depth-size 160x120] [--depth-encoding 16UC1|32FC1]] [--ros-args ...]

Each frame is stamped with the node clock when it is published (ROS time, so
`use_sim_time` works), like a live camera; a looping video keeps time increasing.
Without --video it publishes the shapes world (molmo2_ros/sim/shapes_world.py): coloured
circles, squares and triangles moving in straight lines, the scene the shipped model
was trained on. With --compressed it publishes sensor_msgs/CompressedImage on
`<topic>/compressed` (the image_transport convention).

With --depth (synthetic scene only) it also publishes, with each frame's stamp, a depth
image registered to it on `<topic's namespace>/depth/image_raw` (each shape a plate
facing the camera at its own distance, 1.0 m for the top one, +0.4 m per shape below,
in front of a background plane at 3.0 m: molmo2_ros/sim/depth_scene.py) and the colour
camera's CameraInfo on `<topic's namespace>/camera_info` (fx = fy = image width, no
distortion), as a depth camera's driver does.
"""
from __future__ import annotations

import argparse
import sys

import rclpy
from rclpy.utilities import remove_ros_args
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from molmo2_ros.ros.image_messages import camera_info, depth_to_image, rgb_to_compressed, rgb_to_image


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return width, height


def parse_objects(text: str) -> list[tuple[str, str]]:
    """'red circle,blue square' -> [("red", "circle"), ("blue", "square")]."""
    objects = []
    for label in text.split(","):
        words = label.split()
        if len(words) != 2:
            raise argparse.ArgumentTypeError(f"each object is 'colour shape', got {label.strip()!r}")
        objects.append((words[0], words[1]))
    return objects


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="video_publisher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", help="video file to publish (default: the synthetic shapes scene)")
    parser.add_argument("--topic", default="/camera/image_raw", help="image topic (default %(default)s)")
    parser.add_argument("--compressed", action="store_true",
                        help="publish CompressedImage on <topic>/compressed")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="compressed format")
    parser.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8", help="raw encoding")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second (default %(default)s)")
    parser.add_argument("--size", type=parse_size, default=(320, 240),
                        help="synthetic scene size WxH (default 320x240)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of the synthetic scene before it loops (default %(default)s)")
    parser.add_argument("--objects", type=parse_objects, default="red circle,blue square,yellow triangle",
                        help="the synthetic scene's shapes, 'colour shape' comma-separated "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    parser.add_argument("--frame-id", default="camera_optical_frame", help="header frame_id")
    parser.add_argument("--reliability", choices=("best_effort", "reliable"), default="reliable",
                        help="publisher QoS reliability (default %(default)s: matches any subscriber)")
    parser.add_argument("--once", action="store_true", help="publish the clip once, then exit")
    parser.add_argument("--depth", action="store_true",
                        help="also publish a registered depth image and camera info (synthetic scene)")
    parser.add_argument("--depth-size", type=parse_size, default=None,
                        help="depth image size WxH (default: the colour size); same aspect ratio")
    parser.add_argument("--depth-encoding", choices=("16UC1", "32FC1"), default="16UC1",
                        help="16UC1 (mm) or 32FC1 (m) (default %(default)s)")
    return parser


def sibling(topic: str, name: str) -> str:
    """'/camera/image_raw', 'camera_info' -> '/camera/camera_info'."""
    base = topic.rstrip("/").rpartition("/")[0]
    return f"{base}/{name}" if base else name


def load_frames(args) -> tuple[list, list | None, object]:
    """RGB frames to publish, in order; with --depth also their depth images (metres)
    and the camera model (else None, None)."""
    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    if args.video:
        if args.depth:
            raise ValueError("--depth needs the synthetic scene (a video file has no depth)")
        from molmo2_ros.video_io import read_video

        return [f.image for f in read_video(args.video, fps=args.rate)], None, None
    from molmo2_ros.sim.shapes_world import make_clip

    clip = make_clip(args.seed, n_frames=max(1, round(args.seconds * args.rate)), fps=args.rate,
                     size=args.size, objects=args.objects, speed_range=(0.05, 0.15))
    if not args.depth:
        return clip.frames, None, None
    from molmo2_ros.core.depth import same_aspect
    from molmo2_ros.sim.depth_scene import DepthScene, default_camera

    depth_size = args.depth_size or args.size
    if not same_aspect(depth_size, args.size):
        raise ValueError(f"--depth-size {depth_size} must have the colour image's aspect ratio {args.size}")
    scene = DepthScene(clip, default_camera(args.size, args.frame_id))
    return clip.frames, [scene.depth_m(i, depth_size) for i in range(len(clip.frames))], scene.camera


class VideoPublisher(Node):
    def __init__(self, args):
        super().__init__("video_publisher")
        self.args = args
        self.frames, self.depths, self.camera = load_frames(args)
        self.index = 0
        qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE if args.reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT)
        if args.compressed:
            topic = args.topic if args.topic.endswith("/compressed") else args.topic.rstrip("/") + "/compressed"
            self.publisher = self.create_publisher(CompressedImage, topic, qos)
        else:
            topic = args.topic
            self.publisher = self.create_publisher(Image, topic, qos)
        if self.depths is not None:
            depth_topic, info_topic = sibling(args.topic, "depth/image_raw"), sibling(args.topic, "camera_info")
            self.depth_publisher = self.create_publisher(Image, depth_topic, qos)
            self.info_publisher = self.create_publisher(CameraInfo, info_topic, qos)
            self.get_logger().info(f"publishing depth on {self.resolve_topic_name(depth_topic)}, camera info "
                                   f"on {self.resolve_topic_name(info_topic)}")
        self.done = False
        self.timer = self.create_timer(1.0 / args.rate, self.tick)
        source = args.video or f"synthetic shapes {args.size[0]}x{args.size[1]}"
        self.get_logger().info(f"publishing {source} ({len(self.frames)} frames) on "
                               f"{self.resolve_topic_name(topic)} at {args.rate} Hz")

    def tick(self) -> None:
        if self.index >= len(self.frames):
            if self.args.once:
                self.done = True
                return
            self.index = 0
        rgb = self.frames[self.index]
        stamp = self.get_clock().now().to_msg()
        if self.depths is not None:  # depth first: it is there when the colour frame is
            self.depth_publisher.publish(depth_to_image(self.depths[self.index], stamp, self.args.frame_id,
                                                        self.args.depth_encoding))
            self.info_publisher.publish(camera_info(self.camera, stamp))
        self.index += 1
        if self.args.compressed:
            msg = rgb_to_compressed(rgb, stamp, self.args.frame_id, fmt=self.args.format)
        else:
            msg = rgb_to_image(rgb, stamp, self.args.frame_id, encoding=self.args.encoding)
        self.publisher.publish(msg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = None
    try:
        node = VideoPublisher(args)
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError) as exc:
        print(f"video_publisher: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
