"""Render model-space points and tracks in Molmo2's exact output syntax.

Written from the training-target renderer (allenai/molmo2
`olmo/preprocessing/point_formatter.py`, UnifiedPointFormatter, html-v2); training
renders its targets with it and the parser tests round-trip it.

Public API:
    ModelPoint                       one point as the model states it (t, object_id, x, y, label)
    format_point_answer(points, label, *, video, separator=";") -> str
    format_count_answer(points, label, *, video, separator=";") -> str
    format_track_answer(points, label, separator=";") -> str
    NONE_ANSWER = "There are none."
    SEPARATORS = (";", "\\t")       html-v2 (released models) and the older html-v1

Syntax (html-v2; html-v1 joins frames with a tab instead of ";"):
    <points coords="T I x y I x y;T I x y">label</points>
    <tracks coords="T I x y I x y;T I x y">label</tracks>
- T: video: seconds as presented to the model, one decimal ("13.5"); image input: the
  1-based image index ("1").
- x, y: 0..1000 of the image width/height, rounded, zero-padded to 3 digits ("078").
- Points: frames in time order, points of a frame sorted by (x, y) after rounding,
  numbered 1..N across the whole answer (input object ids are not used), so the last
  index is the count.
- Tracks: frames in time order; ids renumbered 1.. in order of first appearance
  (time, then x, y), points of a frame listed by id; absent (occluded) objects are
  simply missing from a frame.
- No points: "There are none." Counting: "Counting the <points ...>label</points>
  shows a total of N."
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

NONE_ANSWER = "There are none."
SEPARATORS = (";", "\t")
COORD_MAX = 1000


@dataclass(frozen=True)
class ModelPoint:
    """A point in the model's space.

    `t`: video: seconds as presented to the model; image input: 1-based image index.
    `x`, `y`: 0..1000 across the image width/height (column, row from the top-left).
    """

    t: float
    object_id: int
    x: float
    y: float
    label: str = ""


def format_point_answer(points: Sequence[ModelPoint], label: str, *, video: bool,
                        separator: str = ";") -> str:
    """Answer to a pointing prompt: the <points> tag, or "There are none."."""
    if not points:
        return NONE_ANSWER
    return _tag("points", _points_coords(points, video, separator), label)


def format_count_answer(points: Sequence[ModelPoint], label: str, *, video: bool,
                        separator: str = ";") -> str:
    """Answer to a counting prompt: point first, then state the total."""
    if not points:
        return NONE_ANSWER
    tag = _tag("points", _points_coords(points, video, separator), label)
    return f"Counting the {tag} shows a total of {len(points)}."


def format_track_answer(points: Sequence[ModelPoint], label: str, separator: str = ";") -> str:
    """Answer to a tracking prompt (video only): the <tracks> tag, or "There are none."."""
    if not points:
        return NONE_ANSWER
    return _tag("tracks", _tracks_coords(points, separator), label)


def _tag(kind: str, coords: str, label: str) -> str:
    if "<" in label or ">" in label:
        raise ValueError(f"label {label!r} must not contain '<' or '>'")
    return f'<{kind} coords="{coords}">{label}</{kind}>'


def _coord(value: float) -> int:
    if not math.isfinite(value):
        raise ValueError(f"coordinate {value!r} is not finite")
    return min(max(round(value), 0), COORD_MAX)


def _time_text(t: float, video: bool) -> str:
    if not math.isfinite(t):
        raise ValueError(f"time {t!r} is not finite")
    if video:
        return "%0.1f" % t
    if t < 1 or t != int(t):
        raise ValueError(f"image index {t!r} must be a whole number >= 1")
    return str(int(t))


def _frames(points: Sequence[ModelPoint], video: bool) -> list[tuple[str, list[tuple[int, int, int]]]]:
    """Group points by rendered time, in time order: [(T text, [(x, y, object_id)])]."""
    if not points:
        return []
    by_time: dict[str, tuple[float, list[tuple[int, int, int]]]] = {}
    for p in points:
        text = _time_text(p.t, video)
        by_time.setdefault(text, (float(text), []))[1].append((_coord(p.x), _coord(p.y), p.object_id))
    return [(text, pts) for text, (_, pts) in sorted(by_time.items(), key=lambda kv: kv[1][0])]


def _check_separator(separator: str) -> None:
    if separator not in SEPARATORS:
        raise ValueError(f"separator must be one of {SEPARATORS!r}, got {separator!r}")


def _points_coords(points: Sequence[ModelPoint], video: bool, separator: str) -> str:
    _check_separator(separator)
    parts, index = [], 1
    for time_text, pts in _frames(points, video):
        items = []
        for x, y, _ in sorted(pts, key=lambda p: (p[0], p[1])):
            items.append(f"{index} {x:03d} {y:03d}")
            index += 1
        parts.append(f"{time_text} " + " ".join(items))
    return separator.join(parts)


def _tracks_coords(points: Sequence[ModelPoint], separator: str) -> str:
    _check_separator(separator)
    new_ids: dict[int, int] = {}
    parts = []
    for time_text, pts in _frames(points, video=True):
        ids = [p[2] for p in pts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"an object appears twice at t={time_text}: ids {sorted(ids)}")
        for _, _, object_id in sorted(pts, key=lambda p: (p[0], p[1])):
            new_ids.setdefault(object_id, len(new_ids) + 1)
        items = sorted((new_ids[i], x, y) for x, y, i in pts)
        parts.append(f"{time_text} " + " ".join(f"{i} {x:03d} {y:03d}" for i, x, y in items))
    return separator.join(parts)
