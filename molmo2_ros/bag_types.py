"""Message types for reading and writing recordings (MCAP / rosbag2) with `rosbags`.

rosbags' Jazzy typestore plus molmo2_ros' own messages, parsed from their .msg text (the
repository's msg/ folder, else the installed package share). Shared by the recorder
(`molmo2-ros record`) and the converter (`molmo2-train convert`); needs no rclpy.
"""
from __future__ import annotations

from pathlib import Path

NS = 1_000_000_000


def msg_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "msg"
    if here.is_dir():
        return here
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("molmo2_ros")) / "msg"


def typestore():
    """rosbags' Jazzy types plus molmo2_ros/msg/* (from their .msg text)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for path in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"molmo2_ros/msg/{path.stem}"))
    store.register(types)
    return store


def stamp_ns(t) -> int:
    """builtin_interfaces/Time (as rosbags deserialises it) -> integer nanoseconds."""
    return int(t.sec) * NS + int(t.nanosec)
