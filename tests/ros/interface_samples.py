"""One filled instance of every molmo2_ros interface type, and a field-by-field comparer.

Run as a script (`python interface_samples.py publish DOMAIN`) it publishes the samples
from its own process, for the cross-process DDS test.
"""
from __future__ import annotations

import math
import sys
import time

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, PointStamped
from std_msgs.msg import Header

from molmo2_ros.action import Ground
from molmo2_ros.msg import GroundedPoint, Grounding, Track, TrackedObject, TrackedObjectArray


NAN = float("nan")


def _in_base_link(stamp: Time, point: Point) -> PointStamped:
    return PointStamped(header=Header(frame_id="base_link", stamp=stamp), point=point)


def _point(i: int) -> GroundedPoint:
    """Even i: with a 3D position, also in base_link; odd i: flagged without one (NaN)."""
    has = i % 2 == 0
    stamp = Time(sec=1700000000 + i, nanosec=250_000_000 * i)
    nowhere = Point(x=NAN, y=NAN, z=NAN)
    return GroundedPoint(stamp=stamp, x=12.5 + i, y=480.25 - i, object_id=i + 1, label=f"red block {i}",
                         score=0.5 + 0.125 * i, has_position=has,
                         position=Point(x=0.125 * i - 0.3, y=-0.0625, z=1.5 + i) if has else nowhere,
                         has_target_position=has,
                         target_position=_in_base_link(stamp, Point(x=2.5 + i, y=0.25, z=0.75) if has else nowhere))


def _grounding() -> Grounding:
    points = [_point(i) for i in range(3)]
    return Grounding(
        header=Header(frame_id="camera_optical_frame", stamp=Time(sec=1700000002, nanosec=5)),
        query_id="0a1b2c", query="track the cup", task=Grounding.TASK_TRACK,
        points=points,
        tracks=[Track(id=1, label="cup", points=points[:2]), Track(id=2, label="cup", points=[])],
        count=-1,
        frame_stamps=[Time(sec=1700000000), Time(sec=1700000000, nanosec=500_000_000)],
        answer='<tracks coords="0.0 1 078 278;0.5 1 094 292">cup</tracks>',
        warnings=["clipped x=1003 to 1000"],
        model="allenai/Molmo2-4B", backend="torch",
        queue_wait=Duration(sec=0, nanosec=1_000), preprocess=Duration(sec=0, nanosec=20_000_000),
        generation=Duration(sec=2, nanosec=3),
    )


def _tracked_objects() -> TrackedObjectArray:
    objects = [TrackedObject(object_id=7, label="person in blue", x=320.5, y=240.0,
                             anchor_stamp=Time(sec=1700000001, nanosec=7),
                             age=Duration(sec=0, nanosec=800_000_000), confidence=0.75,
                             lost=False, has_position=True, position=Point(x=0.25, y=-0.5, z=2.75),
                             has_target_position=True,
                             target_position=_in_base_link(Time(sec=5, nanosec=6), Point(x=3.0, y=0.5, z=0.25))),
               TrackedObject(object_id=8, label="cup", x=1.0, y=2.0, lost=True, has_position=False,
                             position=Point(x=NAN, y=NAN, z=NAN))]
    return TrackedObjectArray(header=Header(frame_id="cam", stamp=Time(sec=5, nanosec=6)),
                              query_id="topic-3", objects=objects)


def samples() -> dict:
    """Topic suffix -> a message with every field set to a non-default value."""
    return {
        "grounded_point": _point(4),
        "track": Track(id=3, label="gripper", points=[_point(0), _point(1)]),
        "grounding": _grounding(),
        "tracked_object": _tracked_objects().objects[0],
        "tracked_object_array": _tracked_objects(),
        "ground_goal": Ground.Goal(query="point to the red block", task=Grounding.TASK_POINT,
                                   window_seconds=4.5, max_frames=16),
        "ground_result": Ground.Result(grounding=_grounding(),
                                       error_code=Ground.Result.ERROR_BACKEND,
                                       error_message="NaN logits"),
        "ground_feedback": Ground.Feedback(stage=Ground.Feedback.STAGE_GENERATING, elapsed=1.25,
                                           points=[_point(0), _point(1)],
                                           tracks=[Track(id=1, label="", points=[_point(0), _point(1)])]),
    }


def assert_same(expected, actual, path: str = "msg") -> None:
    """Compare an rclpy message with another message-like object field by field."""
    if hasattr(expected, "get_fields_and_field_types"):
        for name in expected.get_fields_and_field_types():
            assert_same(getattr(expected, name), getattr(actual, name), f"{path}.{name}")
    elif isinstance(expected, (list, tuple)) or hasattr(expected, "tolist"):
        expected, actual = list(expected), list(actual)
        assert len(expected) == len(actual), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{path}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(float(actual)), f"{path}: {actual} != NaN"
    elif isinstance(expected, float):
        assert math.isclose(expected, float(actual), rel_tol=1e-6), f"{path}: {actual} != {expected}"
    else:
        assert expected == actual, f"{path}: {actual!r} != {expected!r}"


def _publish(seconds: float) -> None:
    import rclpy
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

    rclpy.init()
    node = rclpy.create_node("interface_sample_publisher")
    qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    pubs = [(node.create_publisher(type(m), f"samples/{k}", qos), m) for k, m in samples().items()]
    for pub, msg in pubs:
        pub.publish(msg)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    _publish(float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
