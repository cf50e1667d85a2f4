"""`molmo2-train convert`: recordings (MCAP / rosbag2, read with `rosbags`) -> manifest.

Two kinds of truth become manifest lines (molmo2_ros.training.dataset) pointing into the bag:
- the node's own answers recorded from its results topic (molmo2_ros/msg/Grounding):
  each answer's frames (its frame_stamps) become the clip and its points/tracks the
  truth, so a user can record, correct the JSONL by hand, and retrain;
- an annotation file: JSONL lines in the manifest format without a source (no
  "recording"/"topic"); they get this bag and image topic.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from molmo2_ros.core.grounding import TASK_CODES, Task

NS = 1_000_000_000


def _msg_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "msg"
    if here.is_dir():
        return here
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("molmo2_ros")) / "msg"


# GroundedPoint and TrackedObject before they carried 3D positions (has_position,
# position): recordings without message definitions (rosbag2 before Jazzy) from then.
_BEFORE_3D = {
    "GroundedPoint": "builtin_interfaces/Time stamp\nfloat32 x\nfloat32 y\nint32 object_id\n"
                     "string label\nfloat32 score\n",
    "TrackedObject": "int32 object_id\nstring label\nfloat32 x\nfloat32 y\n"
                     "builtin_interfaces/Time anchor_stamp\nbuiltin_interfaces/Duration age\n"
                     "float32 confidence\nbool lost\n",
}


def typestore(before_3d: bool = False):
    """rosbags' Jazzy types plus molmo2_ros' own messages (from their .msg text; with
    `before_3d`, as they were before points carried 3D positions)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for path in sorted(_msg_dir().glob("*.msg")):
        text = _BEFORE_3D.get(path.stem, path.read_text()) if before_3d else path.read_text()
        types.update(get_types_from_msg(text, f"molmo2_ros/msg/{path.stem}"))
    store.register(types)
    return store


def _decode(stores, raw: bytes, msgtype: str):
    """`raw` decoded with the first store whose definition it fits exactly (decodes, and
    re-encodes to as many bytes); None when none does."""
    for store in stores:
        try:
            msg = store.deserialize_cdr(raw, msgtype)
            if len(store.serialize_cdr(msg, msgtype)) == len(raw):
                return msg
        except Exception:  # a layout that does not fit runs off the buffer somewhere
            continue
    return None


def _stamp(t) -> int:
    return int(t.sec) * NS + int(t.nanosec)


def grounding_rows(bag: Path, results_topic: str, image_topic: str, recording: str) -> list[dict]:
    """One manifest line per recorded Grounding answer."""
    from rosbags.highlevel import AnyReader

    rows = []
    with AnyReader([bag], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == results_topic]
        if not conns:
            raise ValueError(f"no topic {results_topic!r} in {bag} "
                             f"(topics: {sorted({c.topic for c in reader.connections})})")
        # A bag with message definitions decodes with its own (any version of ours); one
        # without them with this version's, else with the one before 3D positions.
        stores = [reader.typestore, typestore(before_3d=True)]
        for n, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
            msg = _decode(stores, raw, conn.msgtype)
            if msg is None:
                raise ValueError(
                    f"message {n} on {results_topic} in {bag} does not decode as {conn.msgtype}: the bag "
                    "has no message definitions and it fits neither this molmo2_ros's messages nor "
                    "those before 3D positions; convert it with the molmo2_ros version that recorded it")
            stamps = [_stamp(t) for t in msg.frame_stamps]
            if not stamps:
                continue
            task = TASK_CODES[msg.task]
            if task is Task.TRACK:
                points = [(p, t.id) for t in msg.tracks for p in t.points]
            else:
                points = [(p, p.object_id) for p in msg.points]
            fps = (len(stamps) - 1) * NS / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 2.0
            row = {"recording": recording, "topic": image_topic,
                   "start_ns": stamps[0], "end_ns": stamps[-1], "max_frames": len(stamps),
                   "fps": round(fps, 6), "task": task.value, "query": msg.query,
                   "points": [{"stamp_ns": _stamp(p.stamp), "id": int(i), "x": float(p.x), "y": float(p.y)}
                              for p, i in points]}
            if task is Task.ASK:
                row["answer"] = msg.answer
            rows.append(row)
    return rows


def annotation_rows(path: Path, image_topic: str, recording: str) -> list[dict]:
    from molmo2_ros.training.dataset import ManifestError, read_manifest

    rows = []
    for row in read_manifest(path):
        where = row.pop("_where")
        if any(k in row for k in ("video", "recording", "image", "shapes")):
            raise ManifestError(f"{where}: annotation lines must not name a source; the bag is the source")
        rows.append({"recording": recording, "topic": image_topic, **row})
    return rows


def convert(bag, image_topic: str, out, *, results_topic: str | None = None, annotations=None) -> int:
    """Write the manifest `out`; returns the number of lines. The recording is referenced
    relative to the manifest's folder."""
    bag, out = Path(bag), Path(out)
    if not bag.exists():
        raise FileNotFoundError(f"recording {bag} does not exist")
    if results_topic is None and annotations is None:
        raise ValueError("nothing to convert: give a results topic and/or an annotation file")
    recording = os.path.relpath(bag.resolve(), out.resolve().parent)
    rows = []
    if results_topic:
        rows += grounding_rows(bag, results_topic, image_topic, recording)
    if annotations:
        rows += annotation_rows(Path(annotations), image_topic, recording)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="molmo2-train convert",
                                     description="Recording (MCAP/rosbag2) + answers/annotations -> manifest")
    parser.add_argument("bag", help="MCAP file or rosbag2 folder")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--results-topic", help="molmo2_ros/msg/Grounding topic recorded from the node")
    parser.add_argument("--annotations", help="JSONL annotation lines (manifest format, without a source)")
    parser.add_argument("--out", required=True, help="manifest to write (JSONL)")
    args = parser.parse_args(argv)
    try:
        n = convert(args.bag, args.image_topic, args.out, results_topic=args.results_topic,
                    annotations=args.annotations)
    except (OSError, ValueError) as exc:
        print(f"molmo2-train convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} examples to {args.out}")
    return 0
