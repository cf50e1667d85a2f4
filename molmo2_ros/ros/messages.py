"""Core types <-> molmo2_ros messages.

Header rules (DESIGN.md): a Grounding's header carries the source camera's frame_id and
the stamp of the newest frame the model saw; every point carries the absolute stamp of
the frame it lies in. Pixels stay in the original camera image.
"""
from __future__ import annotations

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, PointStamped
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from molmo2_ros.core.answer_stream import PartialAnswer
from molmo2_ros.core.grounding import NS, TASK_CODES, GroundedPoint, Grounding, Task, Timings, Track
from molmo2_ros.core.propagation import TrackedObjects
from molmo2_ros.msg import GroundedPoint as GroundedPointMsg
from molmo2_ros.msg import Grounding as GroundingMsg
from molmo2_ros.msg import Track as TrackMsg
from molmo2_ros.msg import TrackedObject as TrackedObjectMsg
from molmo2_ros.msg import TrackedObjectArray

TASK_FROM_MSG = dict(enumerate(TASK_CODES))
TASK_TO_MSG = {task: code for code, task in TASK_FROM_MSG.items()}


def to_time(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // NS), nanosec=int(stamp_ns % NS))


def from_time(stamp: Time) -> int:
    """Nanoseconds of a builtin_interfaces/Time; ValueError when nanosec is not < 1e9."""
    if stamp.nanosec >= NS:
        raise ValueError(f"malformed stamp: nanosec {stamp.nanosec} is not < 1e9 (sec {stamp.sec})")
    return stamp.sec * NS + stamp.nanosec


def to_duration(seconds: float) -> Duration:
    ns = max(0, round(seconds * NS))
    return Duration(sec=ns // NS, nanosec=ns % NS)


def from_duration(duration: Duration) -> float:
    return duration.sec + duration.nanosec / NS


_NAN = float("nan")


def position_to_msg(position) -> tuple[bool, Point]:
    """(has_position, geometry_msgs/Point): NaN when the position is unknown."""
    if position is None:
        return False, Point(x=_NAN, y=_NAN, z=_NAN)
    return True, Point(x=float(position[0]), y=float(position[1]), z=float(position[2]))


def target_to_msg(position, target_frame: str, stamp_ns: int) -> tuple[bool, PointStamped]:
    """(has_target_position, geometry_msgs/PointStamped in `target_frame` at `stamp_ns`)."""
    has, point = position_to_msg(position)
    msg = PointStamped(point=point)
    msg.header.frame_id = target_frame
    msg.header.stamp = to_time(stamp_ns)
    return has, msg


def point_to_msg(point: GroundedPoint, target_frame: str = "") -> GroundedPointMsg:
    has_position, position = position_to_msg(point.position)
    has_target, target = target_to_msg(point.target_position, target_frame, point.stamp_ns)
    return GroundedPointMsg(stamp=to_time(point.stamp_ns), x=float(point.x), y=float(point.y),
                            object_id=int(point.object_id), label=point.label,
                            score=float(point.score), has_position=has_position, position=position,
                            has_target_position=has_target, target_position=target)


def point_from_msg(msg: GroundedPointMsg) -> GroundedPoint:
    position = (msg.position.x, msg.position.y, msg.position.z) if msg.has_position else None
    target = msg.target_position.point
    return GroundedPoint(stamp_ns=from_time(msg.stamp), x=msg.x, y=msg.y,
                         object_id=msg.object_id, label=msg.label, score=msg.score, position=position,
                         target_position=(target.x, target.y, target.z) if msg.has_target_position else None)


def grounding_to_msg(grounding: Grounding, query_id: str) -> GroundingMsg:
    msg = GroundingMsg()
    msg.header.frame_id = grounding.frame_id
    msg.header.stamp = to_time(grounding.stamp_ns)
    msg.camera = grounding.camera
    msg.query_id = query_id
    msg.query = grounding.query
    msg.task = TASK_TO_MSG[Task(grounding.task)]
    msg.points = [point_to_msg(p, grounding.target_frame) for p in grounding.points]
    msg.tracks = [TrackMsg(id=int(t.id), label=t.label, points=[point_to_msg(p, grounding.target_frame)
                                                                for p in t.points])
                  for t in grounding.tracks]
    msg.count = -1 if grounding.count is None else int(grounding.count)
    msg.frame_stamps = [to_time(s) for s in grounding.frame_stamps_ns]
    msg.answer = grounding.answer
    msg.warnings = list(grounding.warnings)
    msg.model = grounding.model
    msg.backend = grounding.backend
    msg.queue_wait = to_duration(grounding.timings.queue_wait)
    msg.preprocess = to_duration(grounding.timings.preprocess)
    msg.generation = to_duration(grounding.timings.generation)
    return msg


def partial_to_msgs(partial: PartialAnswer) -> tuple[list[GroundedPointMsg], list[TrackMsg]]:
    """A streamed answer so far (core.answer_stream) as the Ground feedback's points and tracks."""
    return ([point_to_msg(p) for p in partial.points],
            [TrackMsg(id=int(t.id), label=t.label, points=[point_to_msg(p) for p in t.points])
             for t in partial.tracks])


def grounding_from_msg(msg: GroundingMsg) -> Grounding:
    targets = {p.target_position.header.frame_id for p in msg.points if p.has_target_position}
    return Grounding(
        task=TASK_FROM_MSG[msg.task], query=msg.query,
        points=[point_from_msg(p) for p in msg.points],
        tracks=[Track(id=t.id, label=t.label, points=[point_from_msg(p) for p in t.points])
                for t in msg.tracks],
        count=None if msg.count < 0 else msg.count,
        answer=msg.answer, warnings=list(msg.warnings),
        frame_stamps_ns=[from_time(s) for s in msg.frame_stamps],
        frame_id=msg.header.frame_id, camera=msg.camera, target_frame=targets.pop() if targets else "",
        model=msg.model, backend=msg.backend,
        timings=Timings(queue_wait=from_duration(msg.queue_wait),
                        preprocess=from_duration(msg.preprocess),
                        generation=from_duration(msg.generation)))


def tracked_to_msg(snap: TrackedObjects, frame_id: str) -> TrackedObjectArray:
    """Propagated positions for one camera frame: the header is that frame's
    (`frame_id` and the snapshot's stamp); query_id is the answer's (`snap.answer_id`)."""
    msg = TrackedObjectArray(query_id=snap.answer_id)
    msg.header.frame_id = frame_id
    msg.header.stamp = to_time(snap.stamp_ns)
    objects = []
    for o in snap.objects:
        has_position, position = position_to_msg(o.position)
        has_target, target = target_to_msg(o.target_position, snap.target_frame, snap.stamp_ns)
        objects.append(TrackedObjectMsg(
            object_id=int(o.object_id), label=o.label, x=float(o.x), y=float(o.y),
            anchor_stamp=to_time(o.anchor_stamp_ns), age=to_duration(o.age_s),
            confidence=float(o.confidence), lost=bool(o.lost), has_position=has_position,
            position=position, has_target_position=has_target, target_position=target))
    msg.objects = objects
    return msg


_PALETTE = [(0.9, 0.2, 0.2), (0.2, 0.8, 0.3), (0.2, 0.4, 0.95), (0.95, 0.85, 0.2),
            (0.8, 0.3, 0.9), (0.2, 0.85, 0.9)]


def grounding_markers(grounding: Grounding, image_size: tuple[int, int], ns: str = "molmo2",
                      lifetime_s: float = 0.0) -> MarkerArray:
    """RViz markers: a labelled dot per point (per track: at its latest point) and a
    line along each track's path.

    A point with a target-frame position (target_frame, tf2) is drawn there, in that
    frame; one with only a 3D position (depth input), there in the camera's optical frame
    (x right, y down, z forward). One without lies on an image plane 1 m in front of the
    camera, scaled so the image is 1 m wide: (u, v) -> ((u - w/2) / w, (v - h/2) / w, 1).
    A track's line is in the target frame when all its points have a position there.
    """
    width, height = image_size
    scale = 1.0 / max(width, 1)
    target = grounding.target_frame

    def xyz(position) -> Point:
        return Point(x=float(position[0]), y=float(position[1]), z=float(position[2]))

    def place(p: GroundedPoint, in_target: bool) -> Point:
        if in_target:
            return xyz(p.target_position)
        if p.position is not None:
            return xyz(p.position)
        return Point(x=(p.x - width / 2) * scale, y=(p.y - height / 2) * scale, z=1.0)

    def colour(object_id: int) -> ColorRGBA:
        r, g, b = _PALETTE[(max(object_id, 1) - 1) % len(_PALETTE)]
        return ColorRGBA(r=r, g=g, b=b, a=1.0)

    header_stamp = to_time(grounding.stamp_ns)
    markers = [Marker(action=Marker.DELETEALL, ns=ns)]
    markers[0].header.frame_id = grounding.frame_id

    def marker(kind: int, mid: int, in_target: bool) -> Marker:
        m = Marker(ns=ns, id=mid, type=kind, action=Marker.ADD)
        m.header.frame_id = target if in_target else grounding.frame_id
        m.header.stamp = header_stamp
        m.pose.orientation.w = 1.0
        m.lifetime = to_duration(lifetime_s)
        return m

    # Tracks: a dot at each track's latest point and a line along its path.
    dots = [t.points[-1] for t in grounding.tracks if t.points] if grounding.tracks else grounding.points
    for i, p in enumerate(dots):
        in_target = bool(target) and p.target_position is not None
        sphere = marker(Marker.SPHERE, 2 * i + 1, in_target)
        sphere.pose.position = place(p, in_target)
        sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.02
        sphere.color = colour(p.object_id)
        text = marker(Marker.TEXT_VIEW_FACING, 2 * i + 2, in_target)
        text.pose.position = place(p, in_target)
        if in_target:   # the label above the dot: z is up in a robot's frames (REP 103) ...
            text.pose.position.z += 0.03
        else:           # ... and y is down in the optical frame
            text.pose.position.y -= 0.03
        text.scale.z = 0.03
        text.color = colour(p.object_id)
        text.text = f"{p.object_id}: {p.label}" if p.label else str(p.object_id)
        markers += [sphere, text]
    for track in grounding.tracks:
        if len(track.points) < 2:
            continue
        in_target = bool(target) and all(p.target_position is not None for p in track.points)
        line = marker(Marker.LINE_STRIP, 10_000 + track.id, in_target)
        line.points = [place(p, in_target) for p in track.points]
        line.scale.x = 0.005
        line.color = colour(track.id)
        markers.append(line)
    return MarkerArray(markers=markers)
