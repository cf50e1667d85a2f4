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


@dataclass(frozen=True)
class TextPiece:
    """The next piece of an answer being decoded, handed to a backend's `on_text` hook.

    The pieces of one generation, concatenated, are its `Generation.text` (a stopped
    generation: the text so far). A piece is whole characters: a token that ends inside a
    multi-byte character waits for the rest. `frame_times`/`is_video` are those of the
    Generation (known once preprocessing is done), so a listener can map points before
    the answer ends.
    """

    text: str
    frame_times: Sequence[float]
    is_video: bool


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
        on_text: Callable[[TextPiece], None] | None = None,
    ) -> Generation:
        """Greedy-decode an answer to `prompt` over `frames` (one frame: image input;
        several: video input with the frames' own stamps as timestamps).

        `should_stop` is polled between decode steps; when it returns True the backend
        stops early and returns what it has (the caller treats that as canceled).
        `on_text`, when given, receives the answer as it is decoded, piece by piece, on the
        thread that runs generate(); the tokens decoded are the same with or without it.
        A backend that decodes token ids feeds them to an `IncrementalText`; one that
        receives text (a server's stream) hands its pieces on as they come.
        """
        ...

    def close(self) -> None:
        """Free the model and any GPU memory."""
        ...


class IncrementalText:
    """Token ids in, as they are decoded; the answer's new text out, as `TextPiece`s.

    The tokenizer decides how tokens join (spaces, byte-level pieces), so each new token is
    detokenized together with the few tokens before it (the window since the last piece
    handed out, plus the one before that, as text-generation-inference does): the text
    beyond the window's already-read part is the new piece. A piece ending in U+FFFD (a
    character cut between tokens) waits for the rest. Each step decodes a handful of
    tokens, not the whole answer: microseconds per token (bench/bench_stream.py).
    """

    def __init__(self, detokenize: Callable[[list[int]], str], on_text: Callable[[TextPiece], None],
                 frame_times: Sequence[float], is_video: bool):
        self._detokenize, self._on_text = detokenize, on_text
        self._frame_times, self._is_video = list(frame_times), is_video
        self._tokens: list[int] = []
        self._prefix = self._read = 0   # window: tokens[prefix:read] already read, tokens[read:] new
        self.sent = ""

    def add(self, token: int) -> None:
        self._tokens.append(int(token))
        read_text = self._detokenize(self._tokens[self._prefix:self._read])
        text = self._detokenize(self._tokens[self._prefix:])
        if len(text) > len(read_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._tokens)
            self._send(text[len(read_text):])

    def finish(self, text: str) -> None:
        """The final text: hand out whatever of it is still unsent (all of the answer's
        pieces, concatenated, are then `text`; tests/backends check it on real answers)."""
        if text.startswith(self.sent):
            self._send(text[len(self.sent):])

    def _send(self, piece: str) -> None:
        if piece:
            self.sent += piece
            self._on_text(TextPiece(piece, self._frame_times, self._is_video))


def staged_generation(prepare: Callable[[], Any], decode: Callable[[Any, Callable[[int], None] | None], list[int]],
                      detokenize: Callable[[list[int]], str], *,
                      progress: Callable[[str], None] | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      on_text: Callable[[TextPiece], None] | None = None) -> Generation:
    """One query's stages as every backend runs them: `prepare()` the model inputs (an
    object with `frame_times` and `is_video`), skip the model if the query was canceled
    meanwhile, `decode(inputs, on_token)` the answer's token ids (calling `on_token` with
    each id as it is decoded, when streaming), `detokenize` them; each stage timed and
    announced through `progress`, the text streamed through `on_text`."""
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
    stream = None if on_text is None else IncrementalText(detokenize, on_text, inputs.frame_times, inputs.is_video)
    tokens = decode(inputs, None if stream is None else stream.add)
    t2 = time.perf_counter()
    text = detokenize(tokens)
    if stream is not None:
        stream.finish(text)
    return Generation(text=text, frame_times=inputs.frame_times, is_video=inputs.is_video,
                      preprocess_s=t1 - t0, generate_s=t2 - t1, token_ids=tokens)
