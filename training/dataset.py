"""The JSONL dataset manifest: one example per line, loaded into `Example`s.

Each line names one visual source, the query and the truth (see docs/training.md):

    {"video": "clips/a.mp4", "start": 2.0, "end": 6.0,               # seconds in the file
     "task": "point", "query": "red cup",
     "points": [{"t": 1.5, "id": 1, "x": 320, "y": 240}]}            # t: seconds from start
    {"recording": "bags/run1", "topic": "/camera/image_raw",          # MCAP or rosbag2 folder
     "start_ns": 1700000000000000000, "end_ns": 1700000004000000000,
     "task": "track", "query": "person",
     "points": [{"stamp_ns": 1700000000500000000, "id": 1, "x": 50, "y": 80},
                {"stamp_ns": 1700000001000000000, "id": 1, "x": 0, "y": 0, "occluded": true}]}
    {"image": "img.png", "task": "count", "query": "cups", "points": [...]}
    {"shapes": {"kind": "image_point", "seed": 7}}                   # the synthetic world

Point times: "t" = seconds relative to the clip start ("start"/"start_ns", else the first
frame), or "stamp_ns" = absolute nanoseconds (recordings: header stamps; videos: the
presentation time). Pixels are in the source image. Frames are sampled exactly as the
node does (`FrameWindow` at "fps", default 2, keeping the newest "max_frames", default 16,
longer side at most "max_side", 0 = as recorded); each truth point goes to the nearest
sampled frame within half a sampling period, and points flagged "occluded" or falling
between sampled frames are left out (counted in `LoadStats`). "ask" examples carry "answer" instead of points.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from molmo2_ros.core.frame_window import FrameWindow
from molmo2_ros.core.grounding import NS, Frame, Task
from molmo2_ros.training.examples import Example, TruthPoint

SOURCE_KEYS = ("video", "recording", "image", "shapes")


class ManifestError(ValueError):
    """A manifest line is malformed; the message names the file and line."""


@dataclass
class LoadStats:
    examples: int = 0
    points_kept: int = 0
    points_occluded: int = 0
    points_off_frame: int = 0
    warnings: list[str] = field(default_factory=list)


def read_manifest(path, errors: list[str] | None = None) -> list[dict]:
    """The manifest's lines as dicts (blank lines and lines starting with # skipped). A line
    that is not a JSON object raises ManifestError, or is listed in `errors` when given."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{number}: expected a JSON object")
        except (json.JSONDecodeError, ManifestError) as exc:
            error = exc if isinstance(exc, ManifestError) else ManifestError(f"{path}:{number}: not JSON ({exc})")
            if errors is None:
                raise error from exc
            errors.append(str(error))
            continue
        row["_where"] = f"{path}:{number}"
        rows.append(row)
    return rows


def load_examples(path, stats: LoadStats | None = None) -> Iterator[Example]:
    """Examples of the manifest at `path`, in order (sources relative to its folder)."""
    path = Path(path)
    stats = stats if stats is not None else LoadStats()
    readers = Recordings()
    try:
        for row in read_manifest(path):
            yield row_to_example(row, path.parent, stats, readers)
    finally:
        readers.close()


def load_all(path, stats: LoadStats | None = None) -> list[Example]:
    """Every example of the manifest, or one ManifestError listing every bad line
    (`file:line: reason`, one a line): a manifest is checked in full before training."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    stats = stats if stats is not None else LoadStats()
    readers = Recordings()
    examples, errors = [], []
    try:
        for row in read_manifest(path, errors):
            try:
                examples.append(row_to_example(row, path.parent, stats, readers))
            except ManifestError as exc:
                errors.append(str(exc))
    finally:
        readers.close()
    if errors:
        raise ManifestError(f"{len(errors)} bad line(s) in {path}:\n" + "\n".join(f"  {e}" for e in errors))
    return examples


def row_to_example(row: dict, base: Path, stats: LoadStats, readers: "Recordings | None" = None
                   ) -> Example:
    where = row.get("_where", "manifest")
    sources = [k for k in SOURCE_KEYS if k in row]
    if len(sources) != 1:
        raise ManifestError(f"{where}: give exactly one of {SOURCE_KEYS}, got {sources or 'none'}")
    if sources[0] == "shapes":
        from molmo2_ros.training.shapes_tasks import make_example

        spec = row["shapes"]
        try:
            example = make_example(spec["kind"], int(spec["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: bad shapes source {spec!r}: {exc}") from exc
        stats.examples += 1
        return example
    if "task" not in row:
        raise ManifestError(f"{where}: no 'task' (one of {', '.join(t.value for t in Task)})")
    try:
        task = Task(row["task"])
    except ValueError as exc:
        raise ManifestError(f"{where}: unknown task {row.get('task')!r}") from exc
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ManifestError(f"{where}: 'query' must be a non-empty string")
    fps = float(row.get("fps", 2.0))
    max_frames = int(row.get("max_frames", 16))
    max_side = int(row.get("max_side", 0))
    frames, clip_start_ns = _frames(row, sources[0], base, fps, max_frames, max_side, where,
                                    readers or Recordings())
    points = _points(row.get("points", []), frames, clip_start_ns, fps, where, stats)
    if task is Task.ASK and not row.get("answer"):
        raise ManifestError(f"{where}: an 'ask' example needs an 'answer'")
    stats.examples += 1
    return Example(frames=frames, task=task, query=query, points=points,
                   answer=str(row.get("answer", "")), source=where)


def _frames(row, kind, base, fps, max_frames, max_side, where, readers) -> tuple[list[Frame], int]:
    from molmo2_ros.video_io import read_image, read_video

    if kind == "image":
        path = base / row["image"]
        if not path.is_file():
            raise ManifestError(f"{where}: image {path} does not exist")
        try:
            image = read_image(path)
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{where}: cannot read image {path} ({exc})") from exc
        return [Frame(image=image, stamp_ns=0, source_size=(image.shape[1], image.shape[0]))], 0
    window = FrameWindow(fps=fps, max_seconds=1e6, max_frames=max_frames, max_side=max_side)
    if kind == "video":
        if not (base / row["video"]).is_file():
            raise ManifestError(f"{where}: video {base / row['video']} does not exist")
        start = float(row.get("start", 0.0))
        end = float(row.get("end", float("inf")))
        # Decode at the source rate and let the node's own window pick the frames.
        for f in read_video(base / row["video"], fps=1000.0):
            if start * NS - 1000 <= f.stamp_ns <= end * NS + 1000:
                window.add(f.stamp_ns, f.image)
        frames = window.select()
        clip_start_ns = round(start * NS)
    else:
        topic = row.get("topic")
        if not topic:
            raise ManifestError(f"{where}: a recording needs its image 'topic'")
        images = readers.images(base / row["recording"], topic, where)
        if not images:
            raise ManifestError(f"{where}: no images on {topic} in {row['recording']}")
        first = images[0][0]
        clip_start_ns = int(row.get("start_ns", first + round(float(row.get("start", 0.0)) * NS)))
        end_ns = int(row.get("end_ns", first + round(float(row.get("end", 1e9)) * NS)))
        for stamp_ns, image, size in images:
            if clip_start_ns <= stamp_ns <= end_ns:
                window.add(stamp_ns, image, source_size=size)
        frames = window.select()
    if not frames:
        raise ManifestError(f"{where}: no frames in the requested time range")
    return frames, clip_start_ns


def _points(rows, frames: list[Frame], clip_start_ns: int, fps: float, where: str, stats: LoadStats
            ) -> list[TruthPoint]:
    stamps = np.array([f.stamp_ns for f in frames])
    tolerance = 0.5 * NS / fps
    out = []
    for p in rows:
        try:
            x, y, object_id = float(p["x"]), float(p["y"]), int(p.get("id", 1))
            stamp = int(p["stamp_ns"]) if "stamp_ns" in p else clip_start_ns + round(float(p.get("t", 0.0)) * NS)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: bad point {p!r} ({exc})") from exc
        if p.get("occluded"):
            stats.points_occluded += 1
            continue
        if len(frames) == 1:
            i = 0
        else:
            i = int(np.argmin(np.abs(stamps - stamp)))
            if abs(stamps[i] - stamp) > tolerance:
                stats.points_off_frame += 1
                continue
        out.append(TruthPoint(frames[i].stamp_ns, object_id, x, y))
        stats.points_kept += 1
    return out


class Recordings:
    """Image messages of recordings (MCAP or rosbag2 folders), read with `rosbags`."""

    def __init__(self):
        self._cache: dict[tuple[str, str], list[tuple[int, np.ndarray, tuple[int, int]]]] = {}

    def images(self, path: Path, topic: str, where: str):
        key = (str(path), topic)
        if key not in self._cache:
            self._cache[key] = list(read_recording_images(path, topic, where))
        return self._cache[key]

    def close(self) -> None:
        self._cache.clear()


def read_recording_stamps(path: Path, topic: str, where: str = "") -> list[int]:
    """Header stamps (ns) of the images on `topic`, without decoding them."""
    return [stamp for stamp, _ in _recording_messages(path, topic, where)]


def read_recording_images(path: Path, topic: str, where: str = ""):
    """(header stamp ns, RGB image, source size) of every Image/CompressedImage on `topic`."""
    from molmo2_ros.core.image_conversion import compressed_to_rgb, image_to_rgb

    for stamp, msg in _recording_messages(path, topic, where):
        if hasattr(msg, "format"):
            image, size = compressed_to_rgb(msg)
        else:
            image, size = image_to_rgb(msg)
        yield stamp, image, size


def _recording_messages(path: Path, topic: str, where: str):
    from rosbags.highlevel import AnyReader

    from molmo2_ros.bag_types import typestore

    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{where}: recording {path} does not exist")
    # rosbag2 before Jazzy stored no message definitions: read those with Jazzy's
    with AnyReader([path], default_typestore=typestore()) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            topics = sorted({c.topic for c in reader.connections})
            raise ManifestError(f"{where}: no topic {topic!r} in {path} (topics: {topics})")
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            yield msg.header.stamp.sec * NS + msg.header.stamp.nanosec, msg
