"""Greedy decoding with an explicit KV cache over exported Molmo2 graphs.

The ONNX Runtime and TensorRT backends share this loop; they differ only in the
`GraphRunner` that executes the exported graphs (molmo2_ros.engines.export): vision, and the
one language-model graph run as prefill and as decode (over the runner's preallocated cache,
backends.kv_cache).
It reproduces `generate(do_sample=False)`: positions `cumsum(attention_mask) - 1`, the
whole prompt (every frame's vision tokens in one bidirectional block) in one prefill
call, then one token per decode step, stopping at EOS or `max_new_tokens`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from molmo2_ros.core.backend import Generation, NonFiniteLogitsError, TextPiece, staged_generation
from molmo2_ros.core.grounding import Frame


class GraphRunner(Protocol):
    capacity: int   # KV-cache slots: prompt tokens + new tokens one generation may hold

    def vision(self, pixel_values: np.ndarray, pooling: np.ndarray, valid_tokens: np.ndarray) -> Any:
        """Features of the valid pooled tokens ([valid, hidden], in the runner's device memory)."""

    def prefill(self, input_ids: np.ndarray, image_features: Any, attention_mask: np.ndarray,
                position_ids: np.ndarray, mm_token_type_ids: np.ndarray) -> np.ndarray:
        """Last-position logits [1, vocab] (float32 numpy); fills the runner's KV cache."""

    def decode(self, token: int, position: int) -> np.ndarray:
        """One step of `token` at RoPE `position`: logits [1, vocab]; the cache grows by one slot."""


@dataclass(frozen=True)
class GraphConfig:
    """What the loop needs from the exported folder's config.json / generation_config.json."""

    image_patch_id: int
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_folder(cls, folder: str | Path, tokenizer) -> "GraphConfig":
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        eos = None
        generation = folder / "generation_config.json"
        if generation.is_file():
            eos = json.loads(generation.read_text()).get("eos_token_id")
        if eos is None:
            eos = tokenizer.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        return cls(image_patch_id=int(config["image_patch_id"]), eos_token_ids=tuple(int(e) for e in eos))


def vision_arrays(tensors: dict) -> tuple[np.ndarray, np.ndarray]:
    """(pixel values, int64 pooling indices) of an image or a video processor output."""
    if "pixel_values_videos" in tensors:
        pixels, pooling = tensors["pixel_values_videos"], tensors["video_token_pooling"]
    elif "pixel_values" in tensors:
        pixels, pooling = tensors["pixel_values"], tensors["image_token_pooling"]
    else:
        raise ValueError("processor output holds no image or video")
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 4:  # [batch, crops, patches, dim] -> [crops, patches, dim]
        pixels = pixels.reshape(-1, *pixels.shape[-2:])
    # ONNX Runtime rejects int32 gather indices; the processor emits int32 for images
    return pixels, np.asarray(pooling).astype(np.int64)


def _check_finite(logits: np.ndarray, step: int) -> None:
    if np.isnan(logits).any() or np.isposinf(logits).any() or np.isneginf(logits).all():
        raise NonFiniteLogitsError(
            f"the engine produced non-finite logits (NaN/inf) at decode step {step}: the graph overflows in "
            "this precision or the engine is corrupt; rebuild it, or export in fp32/bf16.")


def greedy_generate(runner: GraphRunner, tensors: dict, config: GraphConfig, *, max_new_tokens: int,
                    min_new_tokens: int = 0,
                    should_stop: Callable[[], bool] | None = None,
                    on_token: Callable[[int], None] | None = None) -> list[int]:
    """Greedy-decode one prompt (batch 1); return the new token ids (EOS included if produced).

    `min_new_tokens` suppresses EOS for the first steps, like transformers' MinNewTokens
    logits processor. `on_token` gets each new id as soon as it is chosen (streaming).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids = np.asarray(tensors["input_ids"], dtype=np.int64)
    if input_ids.shape[0] != 1:
        raise ValueError(f"one prompt at a time, got a batch of {input_ids.shape[0]}")
    attention_mask = np.asarray(tensors.get("attention_mask", np.ones_like(input_ids)), dtype=np.int64)
    mm_token_type_ids = np.asarray(tensors["mm_token_type_ids"], dtype=np.int64)

    pixels, pooling = vision_arrays(tensors)
    valid = (pooling >= 0).any(-1)
    patch_tokens = int((input_ids == config.image_patch_id).sum())
    if patch_tokens != int(valid.sum()):
        raise ValueError(f"prompt has {patch_tokens} <im_patch> tokens but the pooling yields "
                         f"{int(valid.sum())} vision features")
    needed = input_ids.shape[1] + max_new_tokens - 1
    if needed > runner.capacity:
        raise ValueError(f"a prompt of {input_ids.shape[1]} tokens and max_new_tokens {max_new_tokens} need "
                         f"{needed} KV-cache slots; these engines hold {runner.capacity} (export --max-prompt + "
                         "--max-new-tokens). Ask for fewer frames/tokens or re-export with larger limits.")
    features = runner.vision(pixels, pooling, valid)

    position_ids = np.clip(attention_mask.cumsum(-1) - 1, 0, None)
    logits = runner.prefill(input_ids, features, attention_mask, position_ids, mm_token_type_ids)
    next_position = int(position_ids[0, -1]) + 1
    eos = np.asarray(config.eos_token_ids, dtype=np.int64)
    tokens: list[int] = []
    while True:
        _check_finite(logits, len(tokens))
        scores = logits[0].astype(np.float32, copy=True)
        if len(tokens) < min_new_tokens and eos.size:
            scores[eos] = -np.inf
        token = int(np.argmax(scores))
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token in config.eos_token_ids or len(tokens) >= max_new_tokens:
            break
        if should_stop is not None and should_stop():
            break
        logits = runner.decode(token, next_position)
        next_position += 1
    return tokens


class GraphBackend:
    """Backend protocol over an exported engine folder; subclasses supply the runner."""

    name = ""
    compiles_on_first_use = False   # engines are built ahead (molmo2-engines)

    def __init__(self, folder: str | Path, runner: GraphRunner, manifest: dict, *, preprocess_device: str = "cpu"):
        from transformers import AutoProcessor

        from molmo2_ros.backends.fast_preprocess import FastPreprocessor

        self.folder = Path(folder)
        self.runner: GraphRunner | None = runner
        self.processor = AutoProcessor.from_pretrained(str(self.folder))
        # the torch backend's preprocessing (same inputs as inputs.build_inputs, cached per frame)
        self.preprocessor = FastPreprocessor(self.processor, device=preprocess_device)
        self.config = GraphConfig.from_folder(self.folder, self.processor.tokenizer)
        export = manifest["export"]
        self.model_id = f"{export.get('source', '?')} [{self.name} {self.folder}]"

    def generate(self, frames: Sequence[Frame], prompt: str, *, max_new_tokens: int,
                 progress: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, min_new_tokens: int = 0,
                 on_text: Callable[[TextPiece], None] | None = None) -> Generation:
        if self.runner is None:
            raise RuntimeError("backend is closed")
        return staged_generation(
            lambda: self.preprocessor.build(frames, prompt, return_tensors="np"),
            lambda inputs, on_token: greedy_generate(
                self.runner, inputs.tensors, self.config, max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens, should_stop=should_stop, on_token=on_token),
            lambda tokens: self.processor.tokenizer.decode(tokens, skip_special_tokens=True),
            progress=progress, should_stop=should_stop, on_text=on_text)

    def close(self) -> None:
        self.runner = None
