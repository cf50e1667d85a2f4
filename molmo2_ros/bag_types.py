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


# GroundedPoint and TrackedObject before they carried 3D positions (has_position,
# position): to read recordings made then that hold no message definitions.
_BEFORE_3D = {
    "GroundedPoint": "builtin_interfaces/Time stamp\nfloat32 x\nfloat32 y\nint32 object_id\n"
                     "string label\nfloat32 score\n",
    "TrackedObject": "int32 object_id\nstring label\nfloat32 x\nfloat32 y\n"
                     "builtin_interfaces/Time anchor_stamp\nbuiltin_interfaces/Duration age\n"
                     "float32 confidence\nbool lost\n",
}


def typestore(before_3d: bool = False):
    """rosbags' Jazzy types plus molmo2_ros/msg/* (from their .msg text; with `before_3d`,
    as they were before points carried 3D positions)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for path in sorted(msg_dir().glob("*.msg")):
        text = _BEFORE_3D.get(path.stem, path.read_text()) if before_3d else path.read_text()
        types.update(get_types_from_msg(text, f"molmo2_ros/msg/{path.stem}"))
    store.register(types)
    return store


def stamp_ns(t) -> int:
    """builtin_interfaces/Time (as rosbags deserialises it) -> integer nanoseconds."""
    return int(t.sec) * NS + int(t.nanosec)
