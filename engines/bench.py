"""`molmo2-engines bench DIR`: vision ms/frame, prefill ms, decode tokens/s as JSON.

Runs the folder's graphs (ONNX Runtime, or TensorRT engines) on synthetic frames
through the real processor, the same path the backends take; `--baseline` adds
transformers' own generate on the source checkpoint, in the same process, with ratios;
`--past 64,4096` adds the decode step time at those cache fills and their ratio.
`measure_memory` (`molmo2-engines plan --measure DIR`) loads a folder and puts the memory it
takes next to the memory plan's figure for it.
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


def median_ms(fn, repeats: int = 3, sync=None) -> float:
    """Median wall time of `fn` in ms after one warm-up call; `sync` waits for the device."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def torch_inputs(tensors: dict, device, dtype) -> dict:
    """numpy processor outputs -> torch tensors on `device` (floats in `dtype`)."""
    import torch

    return {k: torch.from_numpy(np.asarray(v)).to(device, dtype=dtype if np.asarray(v).dtype == np.float32 else None)
            for k, v in tensors.items()}


class StepClock:
    """A logits processor that notes the time of every generation step, so that decode speed
    comes from one generate call: steps after the first / the time between them."""

    def __init__(self, sync=None):
        self.sync, self.times = sync, []

    def __call__(self, input_ids, scores):
        if self.sync:
            self.sync()
        self.times.append(time.perf_counter())
        return scores

    def tokens_per_s(self) -> float:
        if len(self.times) < 2:
            raise ValueError("decode speed needs at least two generation steps")
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def hf_baseline(model, tensors: dict, device, decode_steps: int, repeats: int = 3) -> dict:
    """transformers' own path on the same inputs: vision encoder, prefill with the vision
    features precomputed, time to first token and decode speed of `generate`."""
    import torch

    sync = torch.cuda.synchronize if str(device).startswith("cuda") else None
    inputs = torch_inputs(tensors, device, model.dtype)
    if "pixel_values_videos" in inputs:
        kind, encode = "video", lambda: model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_token_pooling"], inputs["video_grids"])
        frames = inputs["pixel_values_videos"].shape[0]
    else:
        kind, encode = "image", lambda: model.model.get_image_features(
            inputs["pixel_values"], inputs["image_token_pooling"], inputs["image_grids"])
        frames = inputs["pixel_values"].reshape(-1, *inputs["pixel_values"].shape[-2:]).shape[0]
    with torch.inference_mode():
        vision_ms = median_ms(encode, repeats, sync)
        encoded = {kind: encode()}
        text = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        prefill_ms = median_ms(lambda: model(**text, mm_encoder_outputs=encoded, use_cache=True, logits_to_keep=1),
                                repeats, sync)

        def generate(n):
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        ttft_ms = median_ms(lambda: generate(1), repeats, sync)
        clock = StepClock(sync)
        model.generate(**inputs, max_new_tokens=decode_steps + 1, min_new_tokens=decode_steps + 1, do_sample=False,
                       logits_processor=[clock])
    return {"attention": model.config._attn_implementation, "dtype": str(model.dtype).replace("torch.", ""),
            "frames": int(frames), "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "vision_ms_per_frame": round(vision_ms / frames, 3), "prefill_ms": round(prefill_ms, 3),
            "time_to_first_token_ms": round(ttft_ms, 3),
            "decode_tokens_per_s": round(clock.tokens_per_s(), 2)}


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
    vision_ms = median_ms(lambda: runner.vision(pixels, pooling, valid), repeats)
    prefill_ms = median_ms(lambda: runner.prefill(ids, features, mask, positions, mm), repeats)

    logits = runner.prefill(ids, features, mask, positions, mm)
    position = int(positions[0, -1]) + 1
    start = time.perf_counter()
    for _ in range(decode_steps):
        logits = runner.decode(int(np.argmax(logits[0])), position)
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


def decode_step_ms(runner, image_feature, image_patch_id: int, pasts: list[int], steps: int = 32) -> dict[int, float]:
    """Median ms of one decode step at each cache fill in `pasts`, measured interleaved: a prompt
    of one image token and `max(pasts) - 1` text tokens is prefilled once, then each round sets
    the cache to each fill in turn (mask and length: the state a prompt of that many tokens
    leaves) and times one step there, so load changes on the machine hit every fill alike."""
    top = max(pasts)
    if top + 1 > runner.capacity:
        raise ValueError(f"past {top} + 1 step exceeds the engines' KV capacity {runner.capacity}; "
                         "export with a larger --max-prompt")
    rng = np.random.default_rng(0)
    ids = np.concatenate([[image_patch_id], rng.integers(3, 200, top - 1)])[None].astype(np.int64)
    mask = np.ones_like(ids)
    mm = np.zeros_like(ids)
    mm[0, 0] = 1
    logits = runner.prefill(ids, image_feature, mask, np.arange(top, dtype=np.int64)[None], mm)
    token = int(np.argmax(logits[0]))
    cache = runner.cache
    times = {p: [] for p in pasts}
    for _ in range(steps + 1):          # the first round warms up
        for past in pasts:
            cache.mask.zero_()
            cache.mask[:, :past] = 1
            cache.length = past
            start = time.perf_counter()
            runner.decode(token, past)
            times[past].append((time.perf_counter() - start) * 1000)
    return {p: statistics.median(t[1:]) for p, t in times.items()}


def decode_scaling(backend, pasts: list[int], steps: int = 32) -> dict:
    """Decode step ms at each cache fill in `pasts`, in this process, and the ratio of the
    largest fill's step to the smallest's (a flat-cost decode keeps it near 1)."""
    from molmo2_ros.backends.kv_greedy import vision_arrays

    tensors = backend.preprocessor.build(synthetic_frames(1), "Point to the person.", return_tensors="np").tensors
    pixels, pooling = vision_arrays(tensors)
    feature = backend.runner.vision(pixels, pooling, (pooling >= 0).any(-1))[:1]
    pasts = sorted(pasts)
    ms = {str(p): round(v, 4) for p, v in
          decode_step_ms(backend.runner, feature, backend.config.image_patch_id, pasts, steps).items()}
    return {"decode_step_ms": ms, "decode_step_ratio": round(ms[str(pasts[-1])] / ms[str(pasts[0])], 3)}


def bench_backend(backend, *, frames: int = 8, decode_steps: int = 32, repeats: int = 3,
                  prompt: str = "Point to the person.", baseline_model=None, pasts: list[int] | None = None) -> dict:
    """bench_runner over a GraphBackend, on synthetic frames through its preprocessing;
    with `baseline_model` (the source checkpoint folder) also transformers on the same
    inputs in this process, and the speed-up ratios."""
    inputs = backend.preprocessor.build(synthetic_frames(frames), prompt, return_tensors="np")
    result = {"backend": backend.name,
              **bench_runner(backend.runner, inputs.tensors, decode_steps=decode_steps, repeats=repeats)}
    if pasts:
        result.update(decode_scaling(backend, pasts))
    if baseline_model is not None:
        import torch
        from transformers import Molmo2ForConditionalGeneration

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = Molmo2ForConditionalGeneration.from_pretrained(str(baseline_model)).to(device).eval()
        base = hf_baseline(model, inputs.tensors, device, decode_steps, repeats)
        result["baseline"] = base
        result["speedup_vs_baseline"] = {
            "vision": round(base["vision_ms_per_frame"] / result["vision_ms_per_frame"], 3),
            "prefill": round(base["prefill_ms"] / result["prefill_ms"], 3),
            "decode": round(result["decode_tokens_per_s"] / base["decode_tokens_per_s"], 3)}
    return result


def resident_bytes() -> int:
    """This process's resident set (VmRSS of /proc/self/status, Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status (resident memory is measured on Linux)")


def measure_memory(folder, *, runtime: str = "onnxruntime", device: str | None = "cpu",
                   threads: int | None = None, prepack: bool = False) -> dict:
    """Load the folder's engines in this process, answer one warm-up query (1 frame, 4 tokens,
    as the node's `warmup` does) and put the memory that took next to the plan's figure for the
    folder (memory_plan.folder_estimate): resident memory for ONNX Runtime on CPU, device
    memory (free memory before - after, which sees every allocator) on CUDA. The warm-up
    counts because ONNX Runtime maps the weights file and its pages become resident as the
    first query reads them; the reading right after load is reported too. The libraries (and
    the modules the processor pulls in, ~0.2 GB of code here) are loaded before the first
    reading, so only the engines, the KV cache and a processor instance count."""
    import onnxruntime  # noqa: F401 - imported before the baseline reading
    import torch
    from transformers import AutoProcessor

    from molmo2_ros.backends import memory_plan
    from molmo2_ros.backends.factory import make_backend

    AutoProcessor.from_pretrained(str(folder))   # its imports, not a measured part of the engines

    plan = memory_plan.folder_estimate(folder, runtime)
    on_gpu = runtime == "tensorrt" or str(device).startswith("cuda")
    if on_gpu:
        torch.cuda.init()

    def reading() -> int:
        return -torch.cuda.mem_get_info()[0] if on_gpu else resident_bytes()

    before = reading()
    kw = {"device": device, "threads": threads, "prepack": prepack} if runtime == "onnxruntime" else {}
    backend = make_backend(runtime, None, engine_dir=folder, **kw)
    try:
        loaded = reading() - before
        backend.generate(synthetic_frames(1), "Point to the person.", max_new_tokens=4)
        held = reading() - before
        measured = held if on_gpu else _return_freed_heap(reading) - before
    finally:
        backend.close()
    gb = memory_plan.GB
    return {"folder": str(folder), "runtime": runtime, "memory": "device" if on_gpu else "resident",
            "prepack": prepack if runtime == "onnxruntime" else None,
            "planned_at_load_gb": round(plan["at_load"] / gb, 4), "measured_gb": round(measured / gb, 4),
            "measured_vs_planned": round(measured / plan["at_load"], 3),
            "measured_before_warmup_gb": round(loaded / gb, 4), "measured_with_freed_heap_gb": round(held / gb, 4),
            "plan_gb": {k: round(v / gb, 4) for k, v in plan.items()}}


def _return_freed_heap(reading) -> int:
    """The reading after glibc returns freed heap to the OS (malloc_trim): what the warm-up
    query allocated and freed (dequantized weights in flight, activations) is the plan's
    activation share, not memory the loaded engines hold. Without glibc: the plain reading."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return reading()
