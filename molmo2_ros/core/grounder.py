"""One query over a window of frames: prompt -> backend -> parse -> map -> Grounding.

Public API:
    ground(backend, frames, query, task, *, max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
           progress=None, should_stop=None, on_points=None) -> Grounding
    grounding_to_dict(g) -> dict      JSON-friendly (NaN scores become null)
    grounding_from_dict(d) -> Grounding

One frame is sent as an image, several as a video (the backend's choice of timestamps
comes back in Generation.frame_times). Bad input (no frames, empty/too long query)
raises; a bad *answer* never does: it gives a Grounding whose `warnings` say what was
wrong. Per task:
- point: `points`; count stays None.
- count: `count` is the total the answer states, else the number of distinct points;
  a warning when both exist and disagree.
- track: `tracks` from <tracks> tags (or, with a warning, from the object ids of a
  <points> answer), and `points` holds all of them flattened (by stamp, then id).
- ask: `answer` holds the reply; points/tracks the answer happens to contain are kept.
`query` in the result is the neutralised query text the prompt was built from.
Streaming: with `on_points`, the backend streams the answer's text into an AnswerStream
and `on_points(new_points, partial)` is called (on the thread that runs ground()) each
time the text completes points (or the label of points it gave); what it gets is final
(core.answer_stream).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
import unicodedata
from typing import Any, Callable, Sequence

from molmo2_ros.core.answer_format import ModelPoint
from molmo2_ros.core.answer_parser import ParsedAnswer, parse_answer
from molmo2_ros.core.answer_stream import AnswerStream, PartialAnswer
from molmo2_ros.core.backend import STAGE_PARSING, Backend, TextPiece
from molmo2_ros.core.grounding import Frame, GroundedPoint, Grounding, Task, Timings, Track
from molmo2_ros.core.mapping import map_points, map_tracks
from molmo2_ros.core.prompts import build_prompt, sanitize_query

DEFAULT_MAX_NEW_TOKENS = 512


def ground(backend: Backend, frames: Sequence[Frame], query: str, task: Task | str, *,
           max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
           progress: Callable[[str], None] | None = None,
           should_stop: Callable[[], bool] | None = None,
           on_points: Callable[[list[GroundedPoint], PartialAnswer], None] | None = None) -> Grounding:
    """Answer `query` as `task` over `frames` (oldest first) with `backend`."""
    task = Task(task)
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to ground the query in")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    clean_query = sanitize_query(query)
    warnings = []
    if clean_query != " ".join(unicodedata.normalize("NFKC", query).split()):
        warnings.append("template markers or control characters were removed from the query")
    prompt = build_prompt(task, clean_query, video=len(frames) > 1, fps=sampling_fps(frames))

    streaming = {} if on_points is None else {"on_text": _streamer(AnswerStream(task, frames), on_points)}
    generation = backend.generate(frames, prompt, max_new_tokens=max_new_tokens,
                                  progress=progress, should_stop=should_stop, **streaming)
    if progress:
        progress(STAGE_PARSING)
    started = time.perf_counter()
    if should_stop is not None and should_stop():
        warnings.append("canceled: generation was stopped early, the answer may be incomplete")
    parsed = parse_answer(generation.text)
    warnings += parsed.warnings
    points, found = map_points(parsed.points, frames, generation.frame_times)
    warnings += found

    result = Grounding(task=task, query=clean_query, answer=generation.text, warnings=warnings,
                       frame_stamps_ns=[f.stamp_ns for f in frames],
                       frame_id=_frame_id(frames, warnings),
                       model=backend.model_id, backend=backend.name)
    if task is Task.TRACK:
        by_id = parsed.tracks
        if not by_id and parsed.points:
            warnings.append("the answer gave <points>, not <tracks>: object ids taken as track ids")
            by_id = _group_by_id(parsed.points)
        result.tracks, found = map_tracks(by_id, frames, generation.frame_times)
        warnings += [w for w in found if w not in warnings]
        points = sorted(points, key=lambda p: (p.stamp_ns, p.object_id))
    elif task is Task.COUNT:
        result.count = _count(parsed, warnings)
    if task in (Task.POINT, Task.TRACK) and not parsed.points and parsed.count != 0:
        warnings.append("the answer holds no points and does not say there are none")
    result.points = points
    result.timings = Timings(preprocess=generation.preprocess_s, generation=generation.generate_s,
                             parse=time.perf_counter() - started)
    return result


def _streamer(stream: AnswerStream, on_points: Callable[[list[GroundedPoint], PartialAnswer], None]
              ) -> Callable[[TextPiece], None]:
    """The backend's on_text hook: feed `stream`, tell `on_points` when what is final grew."""
    def on_text(piece: TextPiece) -> None:
        new, changed = stream.feed(piece)
        if changed:
            on_points(new, stream.snapshot())
    return on_text


def sampling_fps(frames: Sequence[Frame]) -> float | None:
    """The frame rate the prompt states for `frames` (median gap), as training must too."""
    gaps = [b.stamp_ns - a.stamp_ns for a, b in zip(frames, frames[1:])]
    interval = statistics.median(gaps) if gaps else 0
    return 1e9 / interval if interval > 0 else None


def _frame_id(frames: Sequence[Frame], warnings: list[str]) -> str:
    ids = {f.frame_id for f in frames}
    newest = max(frames, key=lambda f: f.stamp_ns)
    if len(ids) > 1:
        warnings.append(f"frames come from several frame_ids {sorted(ids)}; "
                        f"using the newest frame's {newest.frame_id!r}")
    return newest.frame_id


def _count(parsed: ParsedAnswer, warnings: list[str]) -> int | None:
    distinct = len({(p.t, p.x, p.y) for p in parsed.points})
    if parsed.count is not None:
        if parsed.points and distinct != parsed.count:
            warnings.append(f"the answer states a total of {parsed.count} "
                            f"but points to {distinct} distinct places")
        return parsed.count
    if parsed.points:
        warnings.append(f"the answer states no total; counted its {distinct} distinct points")
        return distinct
    warnings.append("the answer holds no count")
    return None


def _group_by_id(points: Sequence[ModelPoint]) -> dict[int, list[ModelPoint]]:
    by_id: dict[int, list[ModelPoint]] = {}
    for p in points:
        by_id.setdefault(p.object_id, []).append(p)
    return by_id


def grounding_to_dict(g: Grounding) -> dict[str, Any]:
    """A JSON-serialisable dict (strict JSON: NaN scores become None)."""
    return {
        "task": g.task.value,
        "query": g.query,
        "count": g.count,
        "points": [_point_to_dict(p) for p in g.points],
        "tracks": [{"id": t.id, "label": t.label, "points": [_point_to_dict(p) for p in t.points]}
                   for t in g.tracks],
        "answer": g.answer,
        "warnings": list(g.warnings),
        "stamp_ns": g.stamp_ns,
        "frame_stamps_ns": list(g.frame_stamps_ns),
        "frame_id": g.frame_id,
        "target_frame": g.target_frame,
        "model": g.model,
        "backend": g.backend,
        "timings": dataclasses.asdict(g.timings),
    }


def grounding_from_dict(d: dict[str, Any]) -> Grounding:
    """Inverse of grounding_to_dict (`stamp_ns` is derived, so it is not read)."""
    return Grounding(
        task=Task(d["task"]), query=d["query"], count=d.get("count"),
        points=[_point_from_dict(p) for p in d.get("points", [])],
        tracks=[Track(id=t["id"], label=t["label"], points=[_point_from_dict(p) for p in t["points"]])
                for t in d.get("tracks", [])],
        answer=d.get("answer", ""), warnings=list(d.get("warnings", [])),
        frame_stamps_ns=list(d.get("frame_stamps_ns", [])), frame_id=d.get("frame_id", ""),
        target_frame=d.get("target_frame", ""), model=d.get("model", ""), backend=d.get("backend", ""),
        timings=Timings(**d.get("timings", {})),
    )


def _point_to_dict(p: GroundedPoint) -> dict[str, Any]:
    d = {"stamp_ns": p.stamp_ns, "x": p.x, "y": p.y, "object_id": p.object_id,
         "label": p.label, "score": None if math.isnan(p.score) else p.score}
    if p.position is not None:  # metres, optical frame (depth input)
        d["position"] = list(p.position)
    if p.target_position is not None:  # metres, the grounding's target_frame (tf2)
        d["target_position"] = list(p.target_position)
    return d


def _point_from_dict(d: dict[str, Any]) -> GroundedPoint:
    score = d.get("score")
    return GroundedPoint(stamp_ns=int(d["stamp_ns"]), x=float(d["x"]), y=float(d["y"]),
                         object_id=int(d["object_id"]), label=d.get("label", ""),
                         score=math.nan if score is None else float(score),
                         position=tuple(float(v) for v in d["position"]) if d.get("position") else None,
                         target_position=tuple(float(v) for v in d["target_position"])
                         if d.get("target_position") else None)
