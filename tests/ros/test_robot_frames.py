"""RobotFrames (molmo2_ros.ros.robot_frames) with real rclpy and tf2 in one process: a
broadcaster node and the node's own listener node talk over DDS. The lookup at a stamp,
each kind of reason, and camera-rate lookups that stop waiting for a stopped transform.
Between processes, with the whole node: tests/ros/test_robot_frames_node.py."""
from __future__ import annotations

import os
import time

import pytest
import rclpy
from geometry_msgs.msg import TransformStamped
from rclpy.context import Context
from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster

from molmo2_ros.core.grounding import NS
from molmo2_ros.core.propagation import TrackedObject, TrackedObjects
from molmo2_ros.ros.messages import to_time
from molmo2_ros.ros.robot_frames import RobotFrames, why_not

TOLERANCE_S = 0.3


def transform(parent: str, child: str, stamp_ns: int, x: float) -> TransformStamped:
    t = TransformStamped(child_frame_id=child)
    t.header.frame_id, t.header.stamp = parent, to_time(stamp_ns)
    t.transform.translation.x = x
    t.transform.rotation.w = 1.0
    return t


@pytest.fixture
def frames():
    context = Context()
    rclpy.init(context=context, domain_id=50 + (os.getpid() + 71) % 100)
    node = rclpy.create_node("robot_frames_test", context=context)
    robot = RobotFrames(node, "odom", TOLERANCE_S)
    broadcaster = rclpy.create_node("broadcaster", context=context)
    StaticTransformBroadcaster(broadcaster).sendTransform(transform("base_link", "cam", time.time_ns(), 0.5))
    try:
        yield robot, TransformBroadcaster(broadcaster)
    finally:
        robot.close()
        broadcaster.destroy_node()
        node.destroy_node()
        rclpy.shutdown(context=context)


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_lookup_at_the_stamp_and_every_reason_for_none(frames):
    robot, moving = frames
    t0 = time.time_ns()
    for i in range(3):   # base_link at x = 1, 2, 3 m in odom at t0 + 0, 1, 2 s
        moving.sendTransform(transform("odom", "base_link", t0 + i * NS, 1.0 + i))
    wait_until(lambda: robot.transform_at("cam", t0 + 2 * NS, wait=False)[0] is not None)
    middle, why = robot.transform_at("cam", t0 + NS // 2)
    assert why == "" and middle.apply((0.0, 0.0, 0.0)) == pytest.approx((2.0, 0.0, 0.0))   # 1.5 + 0.5
    started = time.monotonic()
    none, late = robot.transform_at("cam", t0 + 3 * NS)
    assert none is None and late.startswith("transform late: none at the frame's stamp after waiting 0.3 s (")
    assert time.monotonic() - started >= TOLERANCE_S
    started = time.monotonic()
    assert robot.transform_at("cam", t0 - NS)[1].startswith("frame too old")   # not waited for
    assert time.monotonic() - started < TOLERANCE_S
    assert robot.transform_at("nowhere_cam", t0)[1].startswith("frame unknown")
    assert robot.transform_at("", t0)[1] == "frame unknown: the camera frame has no frame_id"
    assert robot.reachable("cam") == "yes"
    assert robot.reachable("nowhere_cam").startswith("no: frame unknown")
    assert "odom" in robot.frames() and "base_link" in robot.frames()


def test_the_reason_keeps_tf2s_words_after_the_kind():
    why = why_not('Lookup would require extrapolation into the past. Requested time 1 (x)', 0.1)
    assert why == ("frame too old: its stamp is before the transforms tf2 still holds (Lookup would require "
                   "extrapolation into the past. Requested time 1 [x])")
    one = "Lookup would require extrapolation at time 5.5, but only time 4.25 is in the buffer, when looking up"
    assert why_not(one, 0.1).startswith("transform late: none at the frame's stamp after waiting 0.1 s")
    assert why_not(one.replace("5.5", "3.0"), 0.1).startswith("frame too old")
    assert why_not("Could not find a connection between 'a' and 'b' because they are not part of the same tree.",
                   0.1).startswith("frames not connected")


def test_camera_rate_lookups_stop_waiting_for_a_stopped_transform_until_it_is_back(frames):
    robot, moving = frames
    t0 = time.time_ns()
    moving.sendTransform(transform("odom", "base_link", t0, 1.0))
    wait_until(lambda: robot.transform_at("cam", t0, wait=False)[0] is not None)

    def tracked(stamp_ns: int) -> tuple[TrackedObjects, float]:
        snap = TrackedObjects(stamp_ns, "cup", "q", (TrackedObject(1, "cup", 1.0, 2.0, t0, 0.1, 0.9, False,
                                                                   position=(0.0, 0.0, 2.0)),))
        started = time.monotonic()
        placed = robot.place_tracked(snap, "cam")
        return placed, time.monotonic() - started

    placed, waited = tracked(t0 + NS)          # the transform stopped at t0: waits once ...
    assert placed.objects[0].target_position is None and waited >= TOLERANCE_S
    placed, waited = tracked(t0 + 2 * NS)      # ... then not again
    assert placed.objects[0].target_position is None and waited < TOLERANCE_S / 2
    assert robot.last_error.startswith("tracked objects without a position in odom: transform late")
    moving.sendTransform(transform("odom", "base_link", t0 + 3 * NS, 4.0))   # it is back
    wait_until(lambda: tracked(t0 + 3 * NS)[0].objects[0].target_position is not None)
    placed, _ = tracked(t0 + 2 * NS)
    assert placed.objects[0].target_position == pytest.approx((3.0 + 0.5, 0.0, 2.0))
    assert int(robot.diagnostics()["target_positions"]) >= 2
