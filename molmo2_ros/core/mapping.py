"""Map model time and 0..1000 coordinates back to frame stamps and source pixels.

Public API:
    match_frame(t, frame_times) -> (index, within_tolerance)
    to_source_pixels(x, y, source_size) -> (x_px, y_px)
    map_points(points, frames, frame_times) -> (list[GroundedPoint], warnings)
    map_tracks(tracks, frames, frame_times) -> (list[Track], warnings)

Time. `frame_times[i]` is what the model's `T` means for `frames[i]` (Generation
.frame_times: video: seconds as the processor presented them; image input: the 1-based
image index). A `T` maps to the frame whose presented time is nearest (ties: the
earlier frame), and the point takes that frame's absolute `stamp_ns`. A `T` farther
than half a frame interval (the median spacing of `frame_times`; at least 0.05 s, the
rounding of one decimal) from every frame still maps to the nearest one, with a warning.

Pixels. The model's x, y are round(1000 * x / width), round(1000 * y / height) of the
frame it saw, and the frame it saw is the whole source image (resized, never cropped),
so in the *source* image of that frame:
    x_px = x / 1000 * source_width,   y_px = y / 1000 * source_height
x is the column and y the row, origin at the top-left corner, +x right, +y down
(msg/GroundedPoint.msg). 0..1000 spans the image edges: 0 is the left/top edge
(0.0 px), 1000 the right/bottom edge (width/height px); pixel centres are at integer
+ 0.5, so the pixel containing a point is (floor(x_px), floor(y_px)), clamped to the
image. Each frame uses its own source_size, so frames of different sizes map correctly.
"""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence

from molmo2_ros.core.answer_format import COORD_MAX, ModelPoint
from molmo2_ros.core.grounding import Frame, GroundedPoint, Track

MIN_TIME_TOLERANCE = 0.05  # seconds: T and presented times carry one decimal


def match_frame(t: float, frame_times: Sequence[float]) -> tuple[int, bool]:
    """Index of the frame whose presented time is nearest to `t`, and whether it lies
    within half a frame interval."""
    if not frame_times:
        raise ValueError("no frames to match a time against")
    index = min(range(len(frame_times)), key=lambda i: (abs(frame_times[i] - t), i))
    return index, abs(frame_times[index] - t) <= _tolerance(frame_times) + 1e-9


def _tolerance(frame_times: Sequence[float]) -> float:
    gaps = [b - a for a, b in zip(frame_times, frame_times[1:]) if b > a]
    spacing = statistics.median(gaps) if gaps else 1.0
    return max(spacing / 2, MIN_TIME_TOLERANCE)


def to_source_pixels(x: float, y: float, source_size: tuple[int, int]) -> tuple[float, float]:
    """Model 0..1000 coordinates -> pixels of a source image of (width, height)."""
    width, height = source_size
    return x / COORD_MAX * width, y / COORD_MAX * height


def map_points(points: Sequence[ModelPoint], frames: Sequence[Frame],
               frame_times: Sequence[float]) -> tuple[list[GroundedPoint], list[str]]:
    """Ground model points in the frames they refer to (input order is kept)."""
    if len(frames) != len(frame_times):
        raise ValueError(f"{len(frame_times)} frame times for {len(frames)} frames")
    grounded, unmatched = [], set()
    for p in points:
        index, within = match_frame(p.t, frame_times)
        if not within:
            unmatched.add(p.t)
        frame = frames[index]
        x_px, y_px = to_source_pixels(p.x, p.y, frame.source_size)
        grounded.append(GroundedPoint(stamp_ns=frame.stamp_ns, x=x_px, y=y_px,
                                      object_id=p.object_id, label=p.label))
    warnings = [f"model time {t:g} matches no frame within half a frame interval "
                f"(frames at {_times_text(frame_times)}); mapped to the nearest frame"
                for t in sorted(unmatched)]
    return grounded, warnings


def map_tracks(tracks: Mapping[int, Sequence[ModelPoint]], frames: Sequence[Frame],
               frame_times: Sequence[float]) -> tuple[list[Track], list[str]]:
    """Ground parsed tracks (id -> points); tracks by id, points by stamp."""
    result, warnings = [], []
    for track_id in sorted(tracks):
        points, found = map_points(tracks[track_id], frames, frame_times)
        warnings += [w for w in found if w not in warnings]
        label = next((p.label for p in tracks[track_id] if p.label), "")
        result.append(Track(id=track_id, label=label,
                            points=sorted(points, key=lambda g: g.stamp_ns)))
    return result, warnings


def _times_text(frame_times: Sequence[float]) -> str:
    shown = ", ".join(f"{t:g}" for t in frame_times[:8])
    return shown + (", ..." if len(frame_times) > 8 else "")
