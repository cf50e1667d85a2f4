"""`molmo2-train convert`: recordings (MCAP / rosbag2, read with `rosbags`) -> manifest.

Two kinds of truth become manifest lines (molmo2_ros.training.dataset) pointing into the bag:
- the node's own answers recorded from its results topic (molmo2_ros/msg/Grounding):
  each answer's frames (its frame_stamps) become the clip and its points/tracks the
  truth, so a user can record, correct them (`molmo2-train review`), and retrain;
- an annotation file: JSONL lines in the manifest format without a source (no
  "recording"/"topic"); they get this bag and image topic.
Only lines that load from the recording are written: an answer whose frames are not all
in it (e.g. recorded just after the recorder started, about frames from before) or an
annotation whose time range holds no image is dropped and counted by reason.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from molmo2_ros.bag_types import PAST_LAYOUTS, stamp_ns, typestore
from molmo2_ros.core.grounding import NS, TASK_CODES, Task

RESULTS_TOPIC = "/molmo2_grounding/grounding"   # the default node's results


@dataclass
class ConvertReport:
    """What convert wrote: lines kept, and lines dropped by reason (they would not train)."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        total = self.kept + sum(self.dropped.values())
        text = f"kept {self.kept} of {total} lines"
        if self.dropped:
            text += "; dropped " + ", ".join(f"{n} ({reason})" for reason, n in self.dropped.most_common())
        return text


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
        # without them with this version's, else with an earlier one's (PAST_LAYOUTS).
        stores = [reader.typestore] + [typestore(layout) for layout in PAST_LAYOUTS]
        for n, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
            msg = _decode(stores, raw, conn.msgtype)
            if msg is None:
                raise ValueError(
                    f"message {n} on {results_topic} in {bag} does not decode as {conn.msgtype}: the bag "
                    "has no message definitions and it fits neither this molmo2_ros's messages nor "
                    f"those {' nor those '.join(PAST_LAYOUTS)}; convert it with the molmo2_ros version that "
                    "recorded it")
            stamps = [stamp_ns(t) for t in msg.frame_stamps]
            task = TASK_CODES[msg.task]
            if task is Task.TRACK:
                points = [(p, t.id) for t in msg.tracks for p in t.points]
            else:
                points = [(p, p.object_id) for p in msg.points]
            fps = (len(stamps) - 1) * NS / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 2.0
            row = {"recording": recording, "topic": image_topic,
                   "start_ns": stamps[0] if stamps else 0, "end_ns": stamps[-1] if stamps else 0,
                   "max_frames": len(stamps), "_frames": stamps,
                   "fps": round(fps, 6), "task": task.value, "query": msg.query,
                   "points": [{"stamp_ns": stamp_ns(p.stamp), "id": int(i), "x": float(p.x), "y": float(p.y)}
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


def recorded_stamps(bag: Path, image_topic: str) -> list[int]:
    """Header stamps (ns, sorted) of the images on `image_topic`."""
    from molmo2_ros.training.dataset import read_recording_stamps

    return sorted(read_recording_stamps(bag, image_topic, str(bag)))


def why_untrainable(row: dict, stamps: list[int]) -> str | None:
    """The reason a line would fail to load from this recording, or None."""
    if not stamps:
        return "no images recorded"
    wanted = row.pop("_frames", None)
    if wanted is not None:   # a recorded answer: exactly these frames
        if not wanted:
            return "the answer used no frames"
        if wanted[0] < stamps[0]:
            return "frames from before the recording began"
        if wanted[-1] > stamps[-1]:
            return "frames from after the recording ended"
        if not set(wanted) <= set(stamps):
            return "frames missing from the recording"
        return None
    start = int(row.get("start_ns", stamps[0] + round(float(row.get("start", 0.0)) * NS)))
    end = int(row.get("end_ns", stamps[0] + round(float(row.get("end", 1e9)) * NS)))
    if not any(start <= s <= end for s in stamps):
        return "no recorded frames in its time range"
    return None


def convert(bag, image_topic: str, out, *, results_topic: str | None = None, annotations=None
            ) -> ConvertReport:
    """Write the manifest `out` with the lines that load from the recording; the others are
    dropped and counted by reason. The recording is referenced relative to the manifest's folder."""
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
    stamps = recorded_stamps(bag, image_topic)
    report = ConvertReport()
    kept = []
    for row in rows:
        reason = why_untrainable(row, stamps)
        if reason:
            report.dropped[reason] += 1
        else:
            kept.append(row)
    report.kept = len(kept)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="molmo2-train convert",
                                     description="Recording (MCAP/rosbag2) + answers/annotations -> manifest")
    parser.add_argument("bag", help="MCAP file or rosbag2 folder")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--results-topic",
                        help=f"molmo2_ros/msg/Grounding topic recorded from the node (a default node: {RESULTS_TOPIC})")
    parser.add_argument("--annotations", help="JSONL annotation lines (manifest format, without a source)")
    parser.add_argument("--out", required=True, help="manifest to write (JSONL)")
    args = parser.parse_args(argv)
    try:
        report = convert(args.bag, args.image_topic, args.out, results_topic=args.results_topic,
                    annotations=args.annotations)
    except (OSError, ValueError) as exc:
        print(f"molmo2-train convert: {exc}", file=sys.stderr)
        return 2
    print(f"{report.summary()}; wrote {args.out}")
    return 0
