"""Message types for reading and writing recordings (MCAP / rosbag2) with `rosbags`.

rosbags' Jazzy typestore plus molmo2_ros' own messages, parsed from their .msg text (the
repository's msg/ folder, else the installed package share). Shared by the recorder
(`molmo2-ros record`) and the converter (`molmo2-train convert`); needs no rclpy.
"""
from __future__ import annotations

from pathlib import Path

from molmo2_ros.core.grounding import NS


def msg_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "msg"
    if here.is_dir():
        return here
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("molmo2_ros")) / "msg"


# Our messages as they were before, newest first: to read recordings made then that hold
# no message definitions. Before target positions they had no
# has_target_position/target_position; before 3D positions, no has_position/position either.
_BEFORE_TARGET = {
    "GroundedPoint": "builtin_interfaces/Time stamp\nfloat32 x\nfloat32 y\nint32 object_id\n"
                     "string label\nfloat32 score\nbool has_position\ngeometry_msgs/Point position\n",
    "TrackedObject": "int32 object_id\nstring label\nfloat32 x\nfloat32 y\n"
                     "builtin_interfaces/Time anchor_stamp\nbuiltin_interfaces/Duration age\n"
                     "float32 confidence\nbool lost\nbool has_position\ngeometry_msgs/Point position\n",
}
# Grounding before several cameras: without its `camera` line (a tuple: the lines the
# current .msg had not yet).
_BEFORE_CAMERAS = {"Grounding": ("string camera",)}
PAST_LAYOUTS = {
    "before cameras": _BEFORE_CAMERAS,
    "before target positions": {**_BEFORE_CAMERAS, **_BEFORE_TARGET},
    "before 3D positions": {
        **_BEFORE_CAMERAS,
        "GroundedPoint": "builtin_interfaces/Time stamp\nfloat32 x\nfloat32 y\nint32 object_id\n"
                         "string label\nfloat32 score\n",
        "TrackedObject": "int32 object_id\nstring label\nfloat32 x\nfloat32 y\n"
                         "builtin_interfaces/Time anchor_stamp\nbuiltin_interfaces/Duration age\n"
                         "float32 confidence\nbool lost\n",
    },
}


def typestore(layout: str = ""):
    """rosbags' Jazzy types plus molmo2_ros/msg/* (from their .msg text; with `layout`, a
    key of PAST_LAYOUTS, as they were then)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    past = PAST_LAYOUTS[layout] if layout else {}
    types = {}
    for path in sorted(msg_dir().glob("*.msg")):
        text, then = path.read_text(), past.get(path.stem)
        if isinstance(then, tuple):
            text = "".join(line for line in text.splitlines(keepends=True) if line.strip() not in then)
        elif then is not None:
            text = then
        types.update(get_types_from_msg(text, f"molmo2_ros/msg/{path.stem}"))
    store.register(types)
    return store


def stamp_ns(t) -> int:
    """builtin_interfaces/Time (as rosbags deserialises it) -> integer nanoseconds."""
    return int(t.sec) * NS + int(t.nanosec)
