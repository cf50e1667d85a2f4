"""Preprocessing per query: our cached fast path vs transformers' Molmo2 processor.

The baseline is `build_inputs` (molmo2_ros.backends.inputs: Molmo2Processor with the
frames' own timestamps), run in the same process on the same frames. Ours is
`FastPreprocessor.build`, whose output is checked identical to the baseline's first.
Processor geometry is the released checkpoints' (378 px, 14 px patches, 3x3 video /
2x2 image pooling, up to 8 crops); the tokenizer is the tiny model's (no hub access),
so text costs are those of a small vocabulary.

Reported, in ms per query (median):
- video window of `--frames` frames at `--size`:
  `steady_ms`: the window gained one frame since the previous query (the node's case);
  `cold_ms`: every frame is new (first query, or a window that jumped);
  `baseline_ms`: the HF processor, which always recomputes every frame;
  `speedup_steady` / `speedup_cold` = baseline / ours;
- image (one frame, overlapping crops): `cold_ms` vs `baseline_ms`;
- where our time goes: one frame's pixels (resize + normalise + patchify), the
  template + tokenisation, stacking the window; and the baseline's time shares (profiled).
With `--device cuda` (or auto on a GPU machine) ours also runs on the GPU (synchronised).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_preprocess.py [--frames 16 --size 1920x1080]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

NS = 1_000_000_000
PROMPT = "Point to the red ball."


def full_size_processor(workdir: str):
    from transformers import AutoProcessor, Molmo2ImageProcessor, Molmo2Processor, Molmo2VideoProcessor

    from molmo2_ros.tiny_model import build_tiny_molmo2

    tiny = AutoProcessor.from_pretrained(build_tiny_molmo2(workdir))
    norm = dict(do_resize=True, do_rescale=True, do_normalize=True)
    return Molmo2Processor(image_processor=Molmo2ImageProcessor(**norm), video_processor=Molmo2VideoProcessor(**norm),
                           tokenizer=tiny.tokenizer, chat_template=tiny.chat_template)


def camera_stream(n: int, width: int, height: int, seed: int = 0):
    """Textured frames (noise over gradients), 0.5 s apart."""
    from molmo2_ros.core.grounding import Frame

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.dstack([xs * 255 // width, ys * 255 // height, (xs + ys) % 256]).astype(np.int16)
    frames = []
    for i in range(n):
        image = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        frames.append(Frame(image, 1_700_000_000 * NS + i * NS // 2, (width, height), "camera"))
    return frames


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - start) * 1e3


def profile_shares(fn) -> dict[str, float]:
    """Fractions of `fn`'s time in its main costs (cProfile; the costs are single C calls)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler).stats
    total = sum(row[2] for row in stats.values())          # own time of every function
    groups = {"bilinear resize (torch upsample)": ("upsample_bilinear2d",),
              "uint8->float / contiguous copies": ("'float' of", "'contiguous' of", "'to' of"),
              "stacking frames (numpy)": ("stack",), "tokenizer": ("encode_batch", "decode")}
    shares = {}
    for group, needles in groups.items():
        own = sum(row[2] for (_, _, name), row in stats.items() if any(n in name for n in needles))
        shares[group] = round(own / total, 3)
    shares["other"] = round(1 - sum(shares.values()), 3)
    return shares


def same(reference, ours) -> bool:
    if reference.frame_times != ours.frame_times or list(reference.tensors) != list(ours.tensors):
        return False
    return all(torch.equal(reference.tensors[k], ours.tensors[k].cpu()) for k in reference.tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="frames in the video window")
    parser.add_argument("--size", default="1920x1080", help="camera frame size WxH")
    parser.add_argument("--queries", type=int, default=5, help="timed queries per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both paths)")
    parser.add_argument("--device", default="cpu", help="where ours runs: cpu, cuda or auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    from molmo2_ros.backends.fast_preprocess import FastPreprocessor
    from molmo2_ros.backends.inputs import build_inputs

    with tempfile.TemporaryDirectory() as workdir:
        processor = full_size_processor(workdir)
    n, q = args.frames, args.queries
    stream = camera_stream(n + 2 * q + 1, width, height)
    fast = FastPreprocessor(processor, device)

    # Equality first (and warm-up of both paths).
    window = stream[:n]
    identical_video = same(build_inputs(processor, window, PROMPT), fast.build(window, PROMPT))
    identical_image = same(build_inputs(processor, window[:1], PROMPT), fast.build(window[:1], PROMPT))

    baseline, steady, cold, image_base, image_cold = [], [], [], [], []
    for i in range(1, q + 1):          # interleaved, so machine load hits every variant alike
        window = stream[i:i + n]
        baseline.append(timed(lambda: build_inputs(processor, window, PROMPT), sync))
        fast.build(stream[q + i:q + i + n - 1], PROMPT)           # the previous query's window...
        steady.append(timed(lambda: fast.build(stream[q + i:q + i + n], PROMPT), sync))   # ...plus one frame
        fast = FastPreprocessor(processor, device)
        cold.append(timed(lambda: fast.build(window, PROMPT), sync))
        image_base.append(timed(lambda: build_inputs(processor, window[:1], PROMPT), sync))
        fresh = FastPreprocessor(processor, device)
        image_cold.append(timed(lambda: fresh.build(window[:1], PROMPT), sync))

    # Where our steady-state time goes.
    cfg = fast.video
    frame = [stream[-1].image]
    pixels = statistics.median(timed(lambda: cfg.patchify(fast.resize_normalised(frame, cfg, cfg.crop_size,
                                                                                    cfg.crop_size)), sync)
                               for _ in range(q))
    inputs = fast.build(stream[:n], PROMPT)
    stack = statistics.median(timed(lambda: torch.stack(list(inputs.tensors["pixel_values_videos"])), sync)
                              for _ in range(q))
    video_string = processor.get_video_string(inputs.tensors["video_grids"][0].cpu(), inputs.frame_times)

    def text_only():
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}],
            add_generation_prompt=True, tokenize=False)
        fast.text_inputs(text, processor.video_token, video_string)

    text_ms = statistics.median(timed(text_only, sync) for _ in range(q))
    baseline_shares = profile_shares(lambda: build_inputs(processor, stream[:n], PROMPT))

    med = statistics.median
    report = {
        "benchmark": "preprocess",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": args.threads,
                    "device": device, "torch": torch.__version__},
        "video": {
            "frames": n, "size": f"{width}x{height}", "identical_to_processor": identical_video,
            "baseline_ms": round(med(baseline), 1), "steady_ms": round(med(steady), 1), "cold_ms": round(med(cold), 1),
            "speedup_steady": round(med(baseline) / med(steady), 1),
            "speedup_cold": round(med(baseline) / med(cold), 1),
        },
        "image": {
            "size": f"{width}x{height}", "identical_to_processor": identical_image,
            "baseline_ms": round(med(image_base), 1), "cold_ms": round(med(image_cold), 1),
            "speedup": round(med(image_base) / med(image_cold), 1),
        },
        "ours_breakdown_ms": {"one_frame_pixels": round(pixels, 2), "template_and_tokens": round(text_ms, 2),
                              "stack_window": round(stack, 2)},
        "baseline_time_shares": baseline_shares,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
