"""The wire format a real consumer sees: messages recorded to a rosbag2/MCAP file by our
generated type support are decoded by `rosbags` (an independent CDR implementation)
from nothing but this repository's .msg/.action text."""
import sys
from pathlib import Path

import pytest
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from interface_samples import assert_same, samples  # noqa: E402

ROS_TYPE = {
    "grounded_point": "molmo2_ros/msg/GroundedPoint",
    "track": "molmo2_ros/msg/Track",
    "grounding": "molmo2_ros/msg/Grounding",
    "tracked_object": "molmo2_ros/msg/TrackedObject",
    "tracked_object_array": "molmo2_ros/msg/TrackedObjectArray",
    "ground_goal": "molmo2_ros/action/Ground_Goal",
    "ground_result": "molmo2_ros/action/Ground_Result",
    "ground_feedback": "molmo2_ros/action/Ground_Feedback",
}


def typestore_from_repo_text():
    """A Jazzy typestore plus our types, parsed from msg/*.msg and action/*.action only."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for path in sorted((ROOT / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"molmo2_ros/msg/{path.stem}"))
    for path in sorted((ROOT / "action").glob("*.action")):
        goal, result, feedback = path.read_text().split("\n---\n")
        for part, text in (("Goal", goal), ("Result", result), ("Feedback", feedback)):
            types.update(get_types_from_msg(text, f"molmo2_ros/action/{path.stem}_{part}"))
    store.register(types)
    return store


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_recorded_messages_decode_with_rosbags(tmp_path, storage):
    store = typestore_from_repo_text()
    expected = samples()
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=storage) as writer:
        for i, (key, msg) in enumerate(expected.items()):
            conn = writer.add_connection(f"/samples/{key}", ROS_TYPE[key], typestore=store)
            writer.write(conn, 1_000 + i, serialize_message(msg))

    decoded = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            decoded[conn.topic.rsplit("/", 1)[1]] = store.deserialize_cdr(raw, conn.msgtype)
    assert set(decoded) == set(expected)
    for key, msg in expected.items():
        assert_same(msg, decoded[key], key)
