"""What the core needs from an inference backend (torch, onnxruntime, tensorrt).

Backends live in molmo2_ros.backends and import heavy libraries; the core only knows
this protocol, so the node, the CLI, the engines' parity checks and training's
evaluation all drive any backend the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from molmo2_ros.core.grounding import Frame


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN/inf logits (broken weights, dtype overflow, corrupted buffers)."""


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
STAGE_PARSING = "parsing"        # announced by ground() once generation is done


class Backend(Protocol):
    name: str          # "torch", "onnxruntime", "tensorrt"
    model_id: str      # checkpoint id/path, plus engine identity where there is one
    # The first generate() of a new input length compiles (torch on CUDA: static KV cache
    # captured into CUDA graphs), so a warm-up answer moves that cost out of the first query.
    compiles_on_first_use: bool

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


def staged_generation(prepare: Callable[[], Any], decode: Callable[[Any], list[int]],
                      detokenize: Callable[[list[int]], str], *,
                      progress: Callable[[str], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Generation:
    """One query's stages as every backend runs them: `prepare()` the model inputs (an
    object with `frame_times` and `is_video`), skip the model if the query was canceled
    meanwhile, `decode(inputs)` the answer's token ids, `detokenize` them; each stage
    timed and announced through `progress`."""
    if progress:
        progress(STAGE_PREPROCESSING)
    t0 = time.perf_counter()
    inputs = prepare()
    t1 = time.perf_counter()
    if should_stop is not None and should_stop():
        return Generation(text="", frame_times=inputs.frame_times, is_video=inputs.is_video,
                          preprocess_s=t1 - t0, generate_s=0.0, token_ids=[])
    if progress:
        progress(STAGE_GENERATING)
    tokens = decode(inputs)
    t2 = time.perf_counter()
    return Generation(text=detokenize(tokens), frame_times=inputs.frame_times, is_video=inputs.is_video,
                      preprocess_s=t1 - t0, generate_s=t2 - t1, token_ids=tokens)
