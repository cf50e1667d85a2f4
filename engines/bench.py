"""`molmo2-engines bench DIR`: vision ms/frame, prefill ms, decode tokens/s as JSON.

Runs the folder's graphs (ONNX Runtime, or TensorRT engines) on synthetic frames
through the real processor, the same path the backends take.
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def synthetic_frames(count: int, size=(640, 480)):
    from molmo2_ros.core.grounding import Frame

    rng = np.random.default_rng(0)
    width, height = size
    return [Frame(image=rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
                  stamp_ns=i * 500_000_000, source_size=size) for i in range(count)]


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_runner(runner, tensors: dict, *, decode_steps: int = 32, repeats: int = 3) -> dict:
    """Time a kv_greedy.GraphRunner stage by stage on processor-shaped `tensors` (numpy),
    after one warm-up of each stage."""
    from molmo2_ros.backends.kv_greedy import vision_arrays

    pixels, pooling = vision_arrays(tensors)
    frames = pixels.shape[0]
    valid = (pooling >= 0).any(-1)
    ids = np.asarray(tensors["input_ids"], dtype=np.int64)
    mask = np.asarray(tensors["attention_mask"], dtype=np.int64)
    mm = np.asarray(tensors["mm_token_type_ids"], dtype=np.int64)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)

    features = runner.vision(pixels, pooling, valid)
    vision_ms = _median_ms(lambda: runner.vision(pixels, pooling, valid), repeats)
    runner.prefill(ids, features, mask, positions, mm)
    prefill_ms = _median_ms(lambda: runner.prefill(ids, features, mask, positions, mm), repeats)

    logits, kv = runner.prefill(ids, features, mask, positions, mm)
    position = int(positions[0, -1]) + 1
    start = time.perf_counter()
    for _ in range(decode_steps):
        token = np.array([[int(np.argmax(logits[0]))]], dtype=np.int64)
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        logits, kv = runner.decode(token, mask, np.array([[position]], dtype=np.int64), kv)
        position += 1
    decode_s = time.perf_counter() - start
    return {
        "frames": int(frames),
        "prompt_tokens": int(ids.shape[1]),
        "vision_tokens": int(valid.sum()),
        "vision_ms_per_frame": round(vision_ms / frames, 3),
        "prefill_ms": round(prefill_ms, 3),
        "decode_tokens_per_s": round(decode_steps / decode_s, 2),
        "decode_steps": decode_steps,
    }


def bench_backend(backend, *, frames: int = 8, decode_steps: int = 32, repeats: int = 3,
                  prompt: str = "Point to the person.") -> dict:
    """bench_runner over a GraphBackend, on synthetic frames through its real processor."""
    from molmo2_ros.backends.inputs import build_inputs

    inputs = build_inputs(backend.processor, synthetic_frames(frames), prompt, return_tensors="np")
    result = bench_runner(backend.runner, inputs.tensors, decode_steps=decode_steps, repeats=repeats)
    return {"backend": backend.name, **result}
