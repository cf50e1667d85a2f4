"""One training/evaluation example and its rendering into a prompt, a target answer and
per-token loss weights.

An Example holds the frames exactly as inference would receive them (already sampled at
the model's rate, `molmo2_ros.core.Frame`, source pixel sizes and absolute stamps) and
ground truth in source pixels and absolute stamps. Rendering goes through the same
code as inference: prompts from `molmo2_ros.core.prompts`, answers from
`molmo2_ros.core.answer_format` (the formatter the parser is tested against), frame
times from the processor's own token stream (`molmo2_ros.backends.inputs`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from molmo2_ros.core.answer_format import (
    ModelPoint,
    format_count_answer,
    format_point_answer,
    format_track_answer,
)
from molmo2_ros.core.grounding import Frame, Task
from molmo2_ros.core.grounder import sampling_fps
from molmo2_ros.core.prompts import build_prompt, extract_label, sanitize_query

# Upstream weighting (allenai/molmo2): pointing/counting/tracking answers get a fixed
# per-token weight; other answers 2/sqrt(n_tokens), divided by sqrt(n_branches) when
# several annotations share one visual input.
POINTING_TOKEN_WEIGHT = 0.2


@dataclass(frozen=True)
class TruthPoint:
    """Ground truth: object `object_id` at (x, y) source pixels in the frame stamped `stamp_ns`."""

    stamp_ns: int
    object_id: int
    x: float
    y: float


@dataclass(frozen=True)
class TruthObject:
    """Toy-world extra truth for one object in one frame (auxiliary loss, metrics)."""

    label: str
    x: float
    y: float
    visible: bool = True


@dataclass
class Example:
    """One query over one visual input.

    points: POINT/COUNT: one point per object (ids distinct), at a frame where it shows;
            TRACK: per-frame points with persistent ids (occluded frames omitted).
    answer: free text for Task.ASK (ignored otherwise).
    scene:  optional per-frame list of every object (toy world: auxiliary loss).
    inside: optional mask test (stamp_ns, object_id, x, y) -> bool for the metrics.
    """

    frames: list[Frame]
    task: Task
    query: str
    points: list[TruthPoint] = field(default_factory=list)
    answer: str = ""
    scene: list[list[TruthObject]] | None = None
    inside: Callable[[int, int, float, float], bool] | None = None
    source: str = ""   # where it came from (manifest line, clip seed), for messages
    kind: str = ""     # evaluation group (shapes task kind); default image_/video_ + task

    @property
    def group(self) -> str:
        return self.kind or f"{'video' if self.is_video else 'image'}_{self.task.value}"

    @property
    def is_video(self) -> bool:
        return len(self.frames) > 1

    @property
    def count(self) -> int:
        return len({p.object_id for p in self.points})

    def prompt(self) -> str:
        """The user prompt exactly as `molmo2_ros.core.grounder.ground()` builds it."""
        fps = sampling_fps(self.frames) if self.is_video else None
        return build_prompt(self.task, sanitize_query(self.query), video=self.is_video, fps=fps)

    def target(self, frame_times: list[float]) -> str:
        """The answer in Molmo2's syntax; `frame_times` are the model-side times of the
        frames (as returned by `molmo2_ros.backends.inputs.build_inputs`)."""
        if self.task is Task.ASK:
            if not self.answer:
                raise ValueError(f"{self.source}: an 'ask' example needs an answer text")
            return self.answer
        label = extract_label(self.query)
        points = [self._model_point(p, frame_times) for p in self.points]
        if self.task is Task.POINT:
            return format_point_answer(points, label, video=self.is_video)
        if self.task is Task.COUNT:
            return format_count_answer(points, label, video=self.is_video)
        if not self.is_video:
            raise ValueError(f"{self.source}: tracking needs a video (several frames)")
        return format_track_answer(points, label)

    def token_weight(self, n_answer_tokens: int, n_branches: int = 1) -> float:
        if self.task in (Task.POINT, Task.COUNT, Task.TRACK):
            return POINTING_TOKEN_WEIGHT
        return 2.0 / math.sqrt(max(n_answer_tokens, 1)) / math.sqrt(max(n_branches, 1))

    def frame_index(self, stamp_ns: int) -> int:
        for i, f in enumerate(self.frames):
            if f.stamp_ns == stamp_ns:
                return i
        raise ValueError(f"{self.source}: no frame stamped {stamp_ns}")

    def _model_point(self, p: TruthPoint, frame_times: list[float]) -> ModelPoint:
        i = self.frame_index(p.stamp_ns)
        width, height = self.frames[i].source_size
        return ModelPoint(t=frame_times[i], object_id=p.object_id,
                          x=1000.0 * p.x / width, y=1000.0 * p.y / height)
