"""3D positions in another frame of the robot: a rigid transform (what tf2 gives for one
stamp) applied to the camera-frame positions of an answer's points and of camera-rate
tracked objects. ROS-free: the lookup itself (tf2, at each point's own stamp) is the
caller's `transform_at(frame_id, stamp_ns)`.

A point without a transform keeps its camera-frame position and gets no target-frame
one; the answer's warnings say why, one warning per kind of reason (the text before its
details in parentheses), like the depth lookup's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from molmo2_ros.core.grounding import Grounding, GroundedPoint, Track
from molmo2_ros.core.propagation import TrackedObjects

Position = tuple[float, float, float]


@dataclass(frozen=True)
class RigidTransform:
    """p_target = R p_source + t: `translation` (x, y, z) in metres and `rotation` a unit
    quaternion (x, y, z, w), as geometry_msgs/Transform holds them."""

    translation: Position
    rotation: tuple[float, float, float, float]

    def matrix(self) -> np.ndarray:
        """The 3x3 rotation matrix of the (normalised) quaternion."""
        x, y, z, w = np.asarray(self.rotation, np.float64) / np.linalg.norm(self.rotation)
        return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

    def apply(self, position: Position) -> Position:
        p = self.matrix() @ np.asarray(position, np.float64) + np.asarray(self.translation, np.float64)
        return float(p[0]), float(p[1]), float(p[2])


# (frame_id, stamp_ns) -> the transform from that frame into the target frame at that
# stamp, or None and why not.
TransformAt = Callable[[str, int], tuple[RigidTransform | None, str]]


def cached(transform_at: TransformAt) -> TransformAt:
    """`transform_at` asked once per (frame_id, stamp): an answer's points share a few
    frames, and a missing transform is waited for only once."""
    seen: dict[tuple[str, int], tuple[RigidTransform | None, str]] = {}

    def lookup(frame_id: str, stamp_ns: int):
        if (frame_id, stamp_ns) not in seen:
            seen[frame_id, stamp_ns] = transform_at(frame_id, stamp_ns)
        return seen[frame_id, stamp_ns]
    return lookup


def with_target_positions(grounding: Grounding, target_frame: str, frame_of: Callable[[int], str],
                          transform_at: TransformAt) -> Grounding:
    """The answer with `target_frame` positions on every point that has a camera-frame
    position and whose frame's transform is found (`frame_of(stamp_ns)`: the frame_id of
    the camera frame at that stamp), each at its own stamp; one warning per kind of
    reason for the points without."""
    lookup = cached(transform_at)
    reasons: dict[str, list] = {}   # kind -> [first reason, count]

    def place(p: GroundedPoint) -> GroundedPoint:
        if p.position is None:
            return p
        transform, why = lookup(frame_of(p.stamp_ns), p.stamp_ns)
        if transform is None:
            reasons.setdefault(why.split(" (")[0], [why, 0])[1] += 1
            return p
        return replace(p, target_position=transform.apply(p.position))

    points = [place(p) for p in grounding.points]
    tracks = [Track(id=t.id, label=t.label, points=[place(p) for p in t.points]) for t in grounding.tracks]
    warnings = list(grounding.warnings) + [
        f"{target_frame}: {n} point{'s' if n > 1 else ''} without a position in {target_frame}: {why}"
        for why, n in reasons.values()]
    return replace(grounding, points=points, tracks=tracks, warnings=warnings, target_frame=target_frame)


def tracked_in_target(snap: TrackedObjects, target_frame: str, frame_id: str,
                      transform_at: TransformAt) -> tuple[TrackedObjects, str]:
    """Camera-rate objects with `target_frame` positions (the transform at the camera
    frame's stamp), and why they have none ("" when they do or nothing needed one)."""
    if not any(o.position is not None for o in snap.objects):
        return replace(snap, target_frame=target_frame), ""
    transform, why = transform_at(frame_id, snap.stamp_ns)
    objects = tuple(o if transform is None or o.position is None
                    else replace(o, target_position=transform.apply(o.position)) for o in snap.objects)
    return replace(snap, objects=objects, target_frame=target_frame), why
