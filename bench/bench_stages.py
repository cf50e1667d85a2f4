"""Time each stage of one offline query (decode video, preprocess, generate, parse).

Runs on the tiny random Molmo2 by default (or --model), prints JSON with the median
seconds per stage and ratios against baselines run in the same process:
- decode: our sampled read_video vs decoding every frame with PyAV;
- preprocess: our build_inputs (validation, timestamp read-back) vs a bare
  Molmo2Processor call on the same frames and metadata.

    python bench/bench_stages.py [--model DIR_OR_ID] [--frames 8] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_video(path: Path, seconds: float, fps: int, size: tuple[int, int]) -> Path:
    import av

    width, height = size
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def paired_times(ours, baseline, repeats: int) -> tuple[float, float, object]:
    """Median seconds of `ours` and `baseline`, run alternately (shared-CPU noise hits both)."""
    mine, theirs, result = [], [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = ours()
        mine.append(time.perf_counter() - t)
        t = time.perf_counter()
        baseline()
        theirs.append(time.perf_counter() - t)
    return statistics.median(mine), statistics.median(theirs), result


def decode_everything(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="hub id or folder (default: a freshly built tiny model)")
    parser.add_argument("--frames", type=int, default=8, help="frames sent to the model (2 fps)")
    parser.add_argument("--size", default="640x480", help="video frame size WxH")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from molmo2_ros.backends.inputs import build_inputs
    from molmo2_ros.backends.torch_backend import TorchBackend
    from molmo2_ros.core.grounder import ground
    from molmo2_ros.tiny_model import build_tiny_molmo2
    from molmo2_ros.video_io import read_video

    width, height = map(int, args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or str(build_tiny_molmo2(tmp / "tiny"))
        video = write_video(tmp / "clip.mp4", seconds=args.frames / 2, fps=30, size=(width, height))
        backend = TorchBackend(model, device=args.device)

        decode_s, decode_all_s, frames = paired_times(
            lambda: read_video(video, fps=2.0), lambda: decode_everything(video), args.repeats)

        prompt = "Point to the cup."
        inputs = build_inputs(backend.processor, frames, prompt)
        metadata = [{"total_num_frames": len(frames), "fps": 1.0, "frames_indices": inputs.frame_times}]
        text = inputs.text
        preprocess_s, bare_s, _ = paired_times(
            lambda: build_inputs(backend.processor, frames, prompt),
            lambda: backend.processor(text=text, videos=[np.stack([f.image for f in frames])],
                                      video_metadata=metadata, videos_kwargs={"do_sample_frames": False},
                                      return_tensors="pt"),
            args.repeats)

        ground(backend, frames, "cup", "point", max_new_tokens=args.max_new_tokens)  # warm-up
        runs = [ground(backend, frames, "cup", "point", max_new_tokens=args.max_new_tokens)
                for _ in range(args.repeats)]
        backend.close()

    report = {
        "model": "tiny-random" if not args.model else args.model,
        "device": backend.device, "dtype": str(backend.dtype).replace("torch.", ""),
        "torch_threads": args.threads, "frames": len(frames), "frame_size": [width, height],
        "video_tokens": int(inputs.tensors["input_ids"].shape[1]), "max_new_tokens": args.max_new_tokens,
        "stages_s": {
            "decode": decode_s,
            "preprocess": statistics.median(r.timings.preprocess for r in runs),
            "generate": statistics.median(r.timings.generation for r in runs),
            "parse": statistics.median(r.timings.parse for r in runs),
        },
        "baselines_s": {"decode_every_frame_pyav": decode_all_s, "bare_processor_call": bare_s},
        "ratios": {
            "decode_vs_every_frame": decode_s / decode_all_s,
            "build_inputs_vs_bare_processor": preprocess_s / bare_s,
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
