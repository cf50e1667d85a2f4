"""What the core needs from an inference backend (torch, onnxruntime, tensorrt).

Backends live in molmo2_ros.backends and import heavy libraries; the core only knows
this protocol, so the node, the CLI, the engines' parity checks and training's
evaluation all drive any backend the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from molmo2_ros.core.grounding import Frame


@dataclass
class Generation:
    """A backend's raw answer and what is needed to map it back to the frames.

    `frame_times` hold, per input frame and in input order, the value the model's `T`
    refers to: for video, the frame's time in seconds exactly as the processor presented
    it; for image input, the 1-based image index.
    """

    text: str
    frame_times: list[float]
    is_video: bool
    preprocess_s: float
    generate_s: float
    token_ids: list[int] | None = None


# Stages reported to `progress` callbacks, in order.
STAGE_PREPROCESSING = "preprocessing"
STAGE_GENERATING = "generating"


class Backend(Protocol):
    name: str          # "torch", "onnxruntime", "tensorrt"
    model_id: str      # checkpoint id/path, plus engine identity where there is one

    def generate(
        self,
        frames: Sequence[Frame],
        prompt: str,
        *,
        max_new_tokens: int,
        progress: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        """Greedy-decode an answer to `prompt` over `frames` (one frame: image input;
        several: video input with the frames' own stamps as timestamps).

        `should_stop` is polled between decode steps; when it returns True the backend
        stops early and returns what it has (the caller treats that as canceled).
        """
        ...

    def close(self) -> None:
        """Free the model and any GPU memory."""
        ...
