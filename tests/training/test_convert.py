"""A recording with camera images and the node's own answers (real MCAP written with
rosbags, messages serialised by our generated type support) becomes a manifest that
loads with the right frames and truth, and trains; lines that would not load are dropped
and counted by reason."""
import json

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from sensor_msgs.msg import Image

from molmo2_ros.core.grounding import GroundedPoint, Grounding, Task
from molmo2_ros.ros.messages import grounding_to_msg, to_time
from molmo2_ros.training.config import Data, TinyInit, TrainConfig
from molmo2_ros.bag_types import PAST_LAYOUTS, typestore
from molmo2_ros.training.convert import RESULTS_TOPIC, convert
from molmo2_ros.training.dataset import LoadStats, load_examples
from molmo2_ros.sim.shapes_world import make_clip
from molmo2_ros.training.trainer import train

T0 = 1_700_000_000_000_000_000
CAMERA_HZ = 10


def write_bag(path, clip):
    store = typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        results = writer.add_connection(RESULTS_TOPIC, "molmo2_ros/msg/Grounding", typestore=store)
        for frame, stamp in zip(clip.frames, clip.stamps_ns):
            msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8",
                        step=frame.shape[1] * 3, data=frame.tobytes())
            msg.header.stamp = to_time(stamp)
            msg.header.frame_id = "camera"
            writer.write(images, stamp, serialize_message(msg))
        # the node's answer over frames sampled at 2 fps: frames 0, 5, 10, 15
        sampled = clip.stamps_ns[0:20:5]
        obj = clip.objects[5][0]
        answer = Grounding(task=Task.POINT, query=obj.label, frame_stamps_ns=sampled, frame_id="camera",
                           points=[GroundedPoint(sampled[1], obj.cx, obj.cy, 1, obj.label)])
        writer.write(results, sampled[-1] + 1, serialize_message(grounding_to_msg(answer, "q1")))
        # answers a recorder catches just after it starts: about frames from before the bag began
        early = [sampled[0] - 500_000_000, sampled[0]]
        for n in range(2):
            before = Grounding(task=Task.POINT, query=obj.label, frame_stamps_ns=early, frame_id="camera",
                               points=[GroundedPoint(early[0], obj.cx, obj.cy, 1, obj.label)])
            writer.write(results, sampled[0] + 2 + n, serialize_message(grounding_to_msg(before, f"e{n}")))
        missing = Grounding(task=Task.COUNT, query=obj.label, count=0, frame_id="camera",
                            frame_stamps_ns=[sampled[0], sampled[0] + 1234])
        writer.write(results, sampled[-1] + 2, serialize_message(grounding_to_msg(missing, "m")))
    return sampled, obj


def test_bag_to_manifest_to_training(tmp_path):
    clip = make_clip(4, n_frames=20, fps=CAMERA_HZ, size=(160, 120), n_objects=2, start_ns=T0)
    bag = tmp_path / "rec"
    sampled, obj = write_bag(bag, clip)
    annotations = tmp_path / "notes.jsonl"
    second = clip.objects[10][1]
    annotations.write_text(json.dumps({
        "task": "count", "query": second.label + "s", "start_ns": T0, "end_ns": clip.stamps_ns[10],
        "points": [{"t": 1.0, "id": 1, "x": second.cx, "y": second.cy},
                   {"t": 0.5, "id": 2, "x": 1, "y": 1, "occluded": True},
                   {"t": 1.4, "id": 3, "x": 1, "y": 1}]}) + "\n")
    manifest = tmp_path / "data" / "train.jsonl"
    report = convert(bag, "/camera/image_raw", manifest, results_topic=RESULTS_TOPIC, annotations=annotations)
    assert report.kept == 2
    assert dict(report.dropped) == {"frames from before the recording began": 2,
                                    "frames missing from the recording": 1}
    assert report.summary() == ("kept 2 of 5 lines; dropped 2 (frames from before the recording began), "
                                "1 (frames missing from the recording)")

    stats = LoadStats()
    answer, counted = load_examples(manifest, stats)
    # the node's answer: its own frames again, its point on the frame it named
    assert [f.stamp_ns for f in answer.frames] == sampled
    assert answer.task is Task.POINT and answer.query == obj.label
    assert [(p.stamp_ns, round(p.x, 3)) for p in answer.points] == [(sampled[1], round(obj.cx, 3))]
    assert np.array_equal(answer.frames[1].image, clip.frames[5])
    # the annotation: frames at 2 fps over its range; occluded points and points off the sampled frames left out
    assert [f.stamp_ns for f in counted.frames] == clip.stamps_ns[0:11:5]
    assert counted.task is Task.COUNT and counted.count == 1
    assert counted.points[0].stamp_ns == clip.stamps_ns[10]
    assert (stats.points_occluded, stats.points_off_frame) == (1, 1)

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), tiny_init=TinyInit(seed=0),
                      data=Data(manifest=str(manifest)), steps=2, batch_size=1, lr=1e-3, warmup=1,
                      save_every=2, threads=1)
    final = train(cfg, log=lambda m: None)
    assert (final / "model.safetensors").is_file()


def write_old_bag(path, storage, clip, layout: str, *, definitions: bool = True, garbage: bool = False):
    """The node's answer as recorded by an earlier version (`layout`, a key of PAST_LAYOUTS):
    serialised with that GroundedPoint layout (by rosbags, from the old .msg text)."""
    import sqlite3

    old = typestore(layout)
    T = old.types
    sampled = clip.stamps_ns[0:20:5]
    obj = clip.objects[5][0]

    def time(ns):
        return T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)

    zero = T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0)
    kind = T["molmo2_ros/msg/GroundedPoint"]
    origin = T["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0)
    since_3d = {"has_position": False, "position": origin} if "has_position" in kind.__dataclass_fields__ else {}
    since_target = {"has_target_position": False, "target_position": T["geometry_msgs/msg/PointStamped"](
        header=T["std_msgs/msg/Header"](stamp=time(0), frame_id=""), point=origin)} \
        if "has_target_position" in kind.__dataclass_fields__ else {}
    point = kind(stamp=time(sampled[1]), x=obj.cx, y=obj.cy, object_id=1, label=obj.label, score=float("nan"),
                 **since_3d, **since_target)
    msg = T["molmo2_ros/msg/Grounding"](
        header=T["std_msgs/msg/Header"](stamp=time(sampled[-1]), frame_id="camera"), query_id="q1",
        query=obj.label, task=0, points=[point], tracks=[], count=-1, frame_stamps=[time(s) for s in sampled],
        answer="", warnings=[], model="m", backend="torch", queue_wait=zero, preprocess=zero, generation=zero)
    raw = old.serialize_cdr(msg, "molmo2_ros/msg/Grounding")
    with Writer(path, version=9, storage_plugin=storage) as writer:
        images = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=old)
        for frame, stamp in zip(clip.frames, clip.stamps_ns):   # convert keeps lines whose frames are recorded
            image = T["sensor_msgs/msg/Image"](
                header=T["std_msgs/msg/Header"](stamp=time(stamp), frame_id="camera"), height=frame.shape[0],
                width=frame.shape[1], encoding="rgb8", is_bigendian=0, step=frame.shape[1] * 3,
                data=frame.reshape(-1))
            writer.write(images, stamp, old.serialize_cdr(image, "sensor_msgs/msg/Image"))
        results = writer.add_connection("/molmo2/grounding", "molmo2_ros/msg/Grounding", typestore=old)
        writer.write(results, sampled[-1] + 1, raw[:-9] if garbage else raw)
    if not definitions:  # as rosbag2 before Jazzy recorded: no message definitions
        db = next(path.glob("*.db3"))
        with sqlite3.connect(db) as con:
            con.execute("DELETE FROM message_definitions")
        con.close()
    return sampled, obj


@pytest.mark.parametrize("layout", list(PAST_LAYOUTS))
def test_bags_recorded_by_earlier_versions_convert_or_are_refused_clearly(tmp_path, layout):
    clip = make_clip(4, n_frames=20, fps=CAMERA_HZ, size=(160, 120), n_objects=2, start_ns=T0)
    for name, storage, definitions in (("mcap", StoragePlugin.MCAP, True),
                                       ("sqlite_without_definitions", StoragePlugin.SQLITE3, False)):
        sampled, obj = write_old_bag(tmp_path / name, storage, clip, layout, definitions=definitions)
        manifest = tmp_path / f"{name}.jsonl"
        assert convert(tmp_path / name, "/camera/image_raw", manifest, results_topic="/molmo2/grounding").kept == 1
        row = json.loads(manifest.read_text())
        assert row["points"] == [{"stamp_ns": sampled[1], "id": 1, "x": pytest.approx(obj.cx),
                                  "y": pytest.approx(obj.cy)}]
    write_old_bag(tmp_path / "cut", StoragePlugin.SQLITE3, clip, layout, definitions=False, garbage=True)
    with pytest.raises(ValueError, match="does not decode as molmo2_ros/msg/Grounding: the bag has no message "
                                         "definitions"):
        convert(tmp_path / "cut", "/camera/image_raw", tmp_path / "cut.jsonl", results_topic="/molmo2/grounding")
