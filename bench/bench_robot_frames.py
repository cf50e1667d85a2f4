"""Cost of giving 3D positions in the robot's frame (target_frame, molmo2_ros.ros.robot_frames):
per answer (16 frames, 2 points each, every point at its own stamp) and per camera frame
(10 tracked objects), through a real tf2 buffer filled over DDS by broadcasters in this
process (camera -> base_link static, base_link -> odom at 50 Hz for 3 s). Baseline measured
in the same run: converting the same answer / tracked objects to our messages
(grounding_to_msg, tracked_to_msg), which every answer and camera frame pays anyway.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_robot_frames.py [--repeats 200]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import TransformStamped
from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster

from molmo2_ros.core.grounding import NS, Frame, GroundedPoint, Grounding, Task
from molmo2_ros.core.propagation import TrackedObject, TrackedObjects
from molmo2_ros.ros.messages import grounding_to_msg, to_time, tracked_to_msg
from molmo2_ros.ros.robot_frames import RobotFrames

CAMERA = "camera_optical"
FRAMES, POINTS, OBJECTS = 16, 2, 10


def transform(parent: str, child: str, stamp_ns: int, x: float, rotation=(0.0, 0.0, 0.0, 1.0)) -> TransformStamped:
    t = TransformStamped(child_frame_id=child)
    t.header.frame_id, t.header.stamp = parent, to_time(stamp_ns)
    t.transform.translation.x = x
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = rotation
    return t


def median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("bench_robot_frames")
    frames = RobotFrames(node, "odom", tolerance_s=0.1)
    StaticTransformBroadcaster(node).sendTransform(transform("base_link", CAMERA, time.time_ns(), 0.3,
                                                             (-0.5, 0.5, -0.5, 0.5)))
    moving, start = TransformBroadcaster(node), time.time_ns()
    stop = threading.Event()

    def broadcast():
        while not stop.wait(0.02):
            now = time.time_ns()
            moving.sendTransform(transform("odom", "base_link", now, 0.5 * (now - start) / NS))

    thread = threading.Thread(target=broadcast, daemon=True)
    thread.start()
    time.sleep(3.0)
    stop.set()
    thread.join()
    # An answer over 16 frames 0.1 s apart inside the broadcast span, 2 points each.
    stamps = [start + NS + i * NS // 10 for i in range(FRAMES)]
    points = [GroundedPoint(s, 10.0 * k, 20.0, k + 1, "cup", position=(0.1 * k, 0.2, 1.5))
              for s in stamps for k in range(POINTS)]
    answer = Grounding(Task.POINT, "cup", points=points, frame_id=CAMERA, frame_stamps_ns=stamps)
    window = [Frame(np.zeros((1, 1, 3), np.uint8), s, (640, 480), CAMERA) for s in stamps]
    placed = frames.place(answer, window)
    assert all(p.target_position is not None for p in placed.points), placed.warnings
    snap = TrackedObjects(stamps[-1], "cup", "q", tuple(
        TrackedObject(k, "cup", 1.0, 2.0, stamps[0], 1.5, 0.9, False, (0.1 * k, 0.0, 2.0)) for k in range(OBJECTS)))
    assert all(o.target_position is not None for o in frames.place_tracked(snap, CAMERA).objects)

    answer_us = median_us(lambda: frames.place(answer, window), args.repeats)
    answer_msg_us = median_us(lambda: grounding_to_msg(placed, "q"), args.repeats)
    tracked_us = median_us(lambda: frames.place_tracked(snap, CAMERA), args.repeats)
    tracked_msg_us = median_us(lambda: tracked_to_msg(snap, CAMERA), args.repeats)
    frames.close()
    node.destroy_node()
    rclpy.shutdown()
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "repeats": args.repeats,
        "answer": {"frames": FRAMES, "points": FRAMES * POINTS, "target_frame_us": answer_us,
                   "baseline_grounding_to_msg_us": answer_msg_us, "ratio": round(answer_us / answer_msg_us, 2)},
        "camera_frame": {"objects": OBJECTS, "target_frame_us": tracked_us,
                         "baseline_tracked_to_msg_us": tracked_msg_us,
                         "ratio": round(tracked_us / tracked_msg_us, 2)},
    }, indent=1))


if __name__ == "__main__":
    main()
