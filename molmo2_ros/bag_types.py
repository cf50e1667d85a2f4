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


# GroundedPoint and TrackedObject as they were before, newest first: to read recordings
# made then that hold no message definitions. Before target positions they had no
# has_target_position/target_position; before 3D positions, no has_position/position either.
_BEFORE_TARGET = {
    "GroundedPoint": "builtin_interfaces/Time stamp\nfloat32 x\nfloat32 y\nint32 object_id\n"
                     "string label\nfloat32 score\nbool has_position\ngeometry_msgs/Point position\n",
    "TrackedObject": "int32 object_id\nstring label\nfloat32 x\nfloat32 y\n"
                     "builtin_interfaces/Time anchor_stamp\nbuiltin_interfaces/Duration age\n"
                     "float32 confidence\nbool lost\nbool has_position\ngeometry_msgs/Point position\n",
}
PAST_LAYOUTS = {
    "before target positions": _BEFORE_TARGET,
    "before 3D positions": {
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
        types.update(get_types_from_msg(past.get(path.stem, path.read_text()), f"molmo2_ros/msg/{path.stem}"))
    store.register(types)
    return store


def stamp_ns(t) -> int:
    """builtin_interfaces/Time (as rosbags deserialises it) -> integer nanoseconds."""
    return int(t.sec) * NS + int(t.nanosec)
