"""Molmo2 models and inputs of a real model's shape without its weights: the published
Molmo2-4B dimensions, a random-weight model of that shape (or the tiny model), and
processor-shaped synthetic video inputs. For GPU checks and benchmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from molmo2_ros.backends.memory_plan import PUBLISHED

# Molmo2-4B: dimensions of the released config.json (allenai/Molmo2-4B family): Qwen3-4B text
# model, SigLIP so400m ViT at 378 px / 14 px patches, features from ViT layers -3 and -9 of 27,
# which transformers' config turns into layers 24 and 18 of a ViT trimmed to 25 layers.
MOLMO2_4B = PUBLISHED["Molmo2-4B"]
VIDEO_POOL = (3, 3)   # Molmo2VideoProcessor's default pooling of frame patches


def keep_rotary_fp32(model, dtype):
    """Cast `model` to `dtype` but keep the RoPE inverse frequencies in fp32 (as loading does)."""
    rotary = {name: buf.float().clone() for name, buf in model.named_buffers() if name.endswith("inv_freq")}
    model.to(dtype)
    for name, value in rotary.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        setattr(module, name.rsplit(".", 1)[1], value.to(next(model.parameters()).device))
    return model


def build_model(tiny: bool, device: str, dtype, work: Path):
    """(model, kind): Molmo2-4B-shaped random weights, or the project's tiny model."""
    import torch
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    if tiny:
        from molmo2_ros.tiny_model import build_tiny_molmo2

        folder = build_tiny_molmo2(work / "tiny_model", seed=0)
        model = Molmo2ForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
        return model.to(device).eval(), "tiny"
    config = Molmo2Config(**MOLMO2_4B)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Molmo2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return keep_rotary_fp32(model, dtype).eval(), "molmo2-4b-shaped"


def synthetic_video(config, frames: int, text_tokens: int = 32, seed: int = 0) -> dict:
    """Processor-shaped video inputs (numpy) built from the config: per frame a timestamp,
    <frame_start>, rows x cols <im_patch> (3x3 pooled patches), <frame_end>; then text.
    Pooling indices come from transformers' own `arange_for_pooling`."""
    import torch
    from transformers.models.molmo2.video_processing_molmo2 import arange_for_pooling

    rng = np.random.default_rng(seed)
    vision = config.vision_config
    grid = vision.image_size[0] // vision.patch_size
    per_frame = grid * grid
    pooling, rows, cols = arange_for_pooling(torch.arange(per_frame).reshape(grid, grid), *VIDEO_POOL)
    pooling = pooling.numpy()
    text_vocab = min(config.text_config.vocab_size, config.image_start_token_id)
    ids, mm = [], []
    for f in range(frames):
        stamp = list(rng.integers(3, text_vocab, 3))
        frame = [config.frame_start_token_id] + [config.image_patch_id] * (rows * cols) + [config.frame_end_token_id]
        ids += stamp + frame
        mm += [0] * len(stamp) + [1] * len(frame)
    tail = list(rng.integers(3, text_vocab, text_tokens))
    ids += tail
    mm += [0] * len(tail)
    all_pooling = np.concatenate([np.where(pooling >= 0, pooling + f * per_frame, -1) for f in range(frames)])
    patch_dim = vision.patch_size ** 2 * vision.num_channels
    return {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "mm_token_type_ids": np.asarray([mm], dtype=np.int64),
        "pixel_values_videos": rng.standard_normal((frames, per_frame, patch_dim)).astype(np.float32),
        "video_token_pooling": all_pooling.astype(np.int64),
        "video_grids": np.asarray([[frames, rows, cols]], dtype=np.int64),
    }
