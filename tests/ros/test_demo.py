"""`molmo2-ros demo` (the README's main command) end to end, and the video publisher on
a video file as a compressed camera."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage

from molmo2_ros.annotate import write_mp4
from molmo2_ros.core.image_conversion import compressed_to_rgb
from molmo2_ros.ros.messages import from_time

BIN = Path(sys.executable).parent


def env(domain: int) -> dict:
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS="1")


def test_demo_runs_publisher_node_and_one_query(pointing_model_dir, tmp_path):
    """With --depth: the publisher adds the scene's depth and camera info, and the answer's
    points come with 3D positions at one of the scene's known distances."""
    out = tmp_path / "demo.png"
    done = subprocess.run([str(BIN / "molmo2-ros"), "demo", "--model", str(pointing_model_dir), "--out", str(out),
                           "--max-new-tokens", "64", "--timeout", "240", "--depth"],
                          env=env(50 + (os.getpid() + 11) % 100), capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "over" in done.stdout and "'camera_optical_frame'" in done.stdout and "answer:" in done.stdout
    assert "point 1 'red square'" in done.stdout  # the pointing model's answer, mapped to pixels
    depths = [float(line.rsplit(", ", 1)[1].split(")")[0]) for line in done.stdout.splitlines()
              if line.strip().startswith("point ") and "3D (" in line]
    assert depths and all(z in (1.0, 1.4, 1.8, 3.0) for z in depths), done.stdout  # plates, background
    assert out.is_file() and out.stat().st_size > 1000


def test_video_file_published_as_compressed_camera_with_increasing_stamps(tmp_path):
    video = tmp_path / "clip.mp4"
    frames = [np.full((96, 128, 3), 40 * i, np.uint8) for i in range(6)]
    write_mp4(video, frames, fps=10)
    domain = 50 + (os.getpid() + 23) % 100
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("video_listener", context=context)
    received = []
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    node.create_subscription(CompressedImage, "/demo_video/image_raw/compressed", received.append,
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    publisher = subprocess.Popen(
        [sys.executable, "-m", "molmo2_ros.ros.video_publisher", "--video", str(video), "--topic",
         "/demo_video/image_raw", "--compressed", "--format", "png", "--rate", "10", "--frame-id", "cam9"],
        env=env(domain), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(received) < 12 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    finally:
        os.killpg(publisher.pid, signal.SIGINT)  # the ROS wheels re-execute Python: the group
        publisher.wait(timeout=20)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert len(received) >= 12, "fewer than 12 frames arrived"
    stamps = [from_time(m.header.stamp) for m in received]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))  # keeps increasing across the loop
    assert {m.header.frame_id for m in received} == {"cam9"}
    rgb, size = compressed_to_rgb(received[0])
    assert size == (128, 96) and rgb.shape == (96, 128, 3)
