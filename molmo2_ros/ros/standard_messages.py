"""The standard messages beside ours, so that other nodes and rviz2 need no glue code.

The set is what a robot developer wires up first:
- `~/detections` (vision_msgs/Detection2DArray): what detectors (yolo_ros, darknet_ros,
  Isaac ROS) publish, so trackers, loggers and rviz plugins that take detections take
  ours. One detection per grounded point: the point as the box centre (size 0: the model
  points, it draws no boxes), the label as the hypothesis' class_id, the object id as
  `id`, the header of the camera frame the point lies in.
- `~/detections_3d` (vision_msgs/Detection3DArray), with depth: the same detections with
  their 3D pose, in the target frame when `target_frame` is set (else the camera's
  optical frame); a point without a position in that frame is left out (our
  ~/grounding keeps it, with the reason in its warnings).
- `~/tracked_poses` (geometry_msgs/PoseArray): the camera-rate tracked objects with a 3D
  position, in the target frame, one message per camera frame: what rviz2 draws and a
  planner (MoveIt, Nav2) reads without knowing our messages. Ids and labels are in
  ~/tracked_objects, in the same order.
- TF frames of the tracked objects (`tracked_tf_frames`): `<node>_<label>_<id>`, child of
  the camera frame at each camera frame's stamp (tf2 then gives it in base_link, odom or
  map), so a node that follows a TF frame (Nav2's `tracked_frame`) or rviz's TF display
  works with no code at all. Lost objects are no longer broadcast.

Each topic is published only while someone subscribes; TF frames are broadcast while on.
"""
from __future__ import annotations

import math
import re
from typing import Callable

from geometry_msgs.msg import Pose, PoseArray, TransformStamped
from rclpy.qos import QoSProfile
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import (Detection2D, Detection2DArray, Detection3D, Detection3DArray, ObjectHypothesisWithPose)

from molmo2_ros.core.grounding import GroundedPoint, Grounding
from molmo2_ros.core.propagation import TrackedObjects
from molmo2_ros.ros.messages import to_time

TF_QOS = QoSProfile(depth=100)   # what tf2_ros.TransformBroadcaster uses


def score_of(point: GroundedPoint) -> float:
    """The point's score; 1.0 while the model gives none (NaN), so a score threshold keeps it."""
    return float(point.score) if math.isfinite(point.score) else 1.0


def hypothesis(point: GroundedPoint, position=None) -> ObjectHypothesisWithPose:
    result = ObjectHypothesisWithPose()
    result.hypothesis.class_id = point.label
    result.hypothesis.score = score_of(point)
    if position is not None:
        result.pose.pose = pose_at(position)
    return result


def pose_at(position) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    pose.orientation.w = 1.0
    return pose


def detections_2d(grounding: Grounding) -> Detection2DArray:
    """One Detection2D per grounded point (pixels of the source image)."""
    array = Detection2DArray()
    array.header.frame_id = grounding.frame_id
    array.header.stamp = to_time(grounding.stamp_ns)
    for p in grounding.points:
        d = Detection2D(id=str(p.object_id), results=[hypothesis(p)])
        d.header.frame_id = grounding.frame_id
        d.header.stamp = to_time(p.stamp_ns)
        d.bbox.center.position.x, d.bbox.center.position.y = float(p.x), float(p.y)
        array.detections.append(d)
    return array


def detections_3d(grounding: Grounding) -> Detection3DArray:
    """One Detection3D per point with a 3D position in the target frame (when the answer has
    one) or the camera's optical frame."""
    frame = grounding.target_frame or grounding.frame_id
    array = Detection3DArray()
    array.header.frame_id = frame
    array.header.stamp = to_time(grounding.stamp_ns)
    for p in grounding.points:
        position = p.target_position if grounding.target_frame else p.position
        if position is None:
            continue
        d = Detection3D(id=str(p.object_id), results=[hypothesis(p, position)])
        d.header.frame_id = frame
        d.header.stamp = to_time(p.stamp_ns)
        d.bbox.center = pose_at(position)
        array.detections.append(d)
    return array


def tracked_poses(snap: TrackedObjects, camera_frame: str) -> PoseArray:
    """The tracked objects that are not lost and have a 3D position in the target frame
    (else the camera frame), at the camera frame's stamp."""
    target = snap.target_frame
    poses = PoseArray()
    poses.header.frame_id = target or camera_frame
    poses.header.stamp = to_time(snap.stamp_ns)
    for o in snap.objects:
        position = o.target_position if target else o.position
        if not o.lost and position is not None:
            poses.poses.append(pose_at(position))
    return poses


def tf_frame_name(prefix: str, label: str, object_id: int) -> str:
    """`<prefix>_<label>_<id>`, the label in lower case with every run of other characters
    than a-z and 0-9 as one `_` ("Red Cup!" and 2 -> molmo2_grounding_red_cup_2)."""
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "object"
    return f"{prefix}_{slug}_{object_id}"


def tracked_transforms(snap: TrackedObjects, camera_frame: str, prefix: str) -> list[TransformStamped]:
    """A TF frame per tracked object that is not lost and has a 3D position: child of the
    camera frame, at the camera frame's stamp, no rotation."""
    transforms = []
    for o in snap.objects:
        if o.lost or o.position is None:
            continue
        t = TransformStamped(child_frame_id=tf_frame_name(prefix, o.label, o.object_id))
        t.header.frame_id = camera_frame
        t.header.stamp = to_time(snap.stamp_ns)
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = \
            (float(v) for v in o.position)
        t.transform.rotation.w = 1.0
        transforms.append(t)
    return transforms


class StandardOutputs:
    """The publishers of one camera's standard messages, made by `publisher(kind, topic, qos)`
    (the node's lifecycle publishers) on `topic(leaf)` (the camera's own topics); `tf_prefix`
    non-empty: tracked objects broadcast on /tf."""

    def __init__(self, publisher: Callable, qos: QoSProfile, topic: Callable[[str], str], tf_prefix: str = ""):
        self._detections = publisher(Detection2DArray, topic("detections"), qos)
        self._detections_3d = publisher(Detection3DArray, topic("detections_3d"), qos)
        self._poses = publisher(PoseArray, topic("tracked_poses"), qos)
        self._tf_prefix = tf_prefix
        self._tf = publisher(TFMessage, "/tf", TF_QOS) if tf_prefix else None

    def results(self, grounding: Grounding) -> None:
        if self._detections.get_subscription_count() > 0:
            self._detections.publish(detections_2d(grounding))
        if self._detections_3d.get_subscription_count() > 0:
            self._detections_3d.publish(detections_3d(grounding))

    def tracked(self, snap: TrackedObjects, camera_frame: str) -> None:
        if self._poses.get_subscription_count() > 0:
            self._poses.publish(tracked_poses(snap, camera_frame))
        if self._tf is not None:
            transforms = tracked_transforms(snap, camera_frame, self._tf_prefix)
            if transforms:
                self._tf.publish(TFMessage(transforms=transforms))
