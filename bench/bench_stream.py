"""Time to the first streamed point against time to the full answer, and what streaming
costs, with the shipped shapes model on CPU (torch and ONNX Runtime).

For each backend and query (point, count and track over 16-frame shapes clips) it runs
ground() alternately without streaming (the baseline) and with streaming (an on_points
listener), `--repeats` times each, and prints JSON with the medians and the ratios:
- first_point_vs_full: seconds from ground()'s start to the first streamed point, over
  the streamed run's full seconds (for a 16-frame track this should be <= 0.25);
- streamed_vs_plain: the streamed run's full seconds over the plain run's (the cost of
  streaming: re-detokenizing and re-parsing as tokens arrive; should be <= 1.05).
The ONNX Runtime graphs are exported from the shipped model into a temporary folder
first (molmo2-engines export), unless --engine-dir names an export of it.

    .venv/bin/python bench/bench_stream.py [--repeats 5] [--backends torch onnxruntime]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import molmo2_ros

ASSET = Path(molmo2_ros.__file__).parent / "assets" / "shapes-tiny"
# (query kind, shapes task kind, seed): 16-frame clips whose answers hold several points
QUERIES = [("point", "video_point", 3), ("count", "video_count", 5), ("track", "video_track", 4)]
FRAMES = 16


def one_run(backend, example, stream: bool) -> dict:
    from molmo2_ros.core.grounder import ground

    started = time.perf_counter()
    first = []

    def on_points(new, partial):
        if not first:
            first.append(time.perf_counter() - started)

    g = ground(backend, example.frames, example.query, example.task, max_new_tokens=512,
               on_points=on_points if stream else None)
    total = time.perf_counter() - started
    points = sum(len(t.points) for t in g.tracks) if g.tracks else len(g.points)
    return {"full_s": total, "first_point_s": first[0] if first else None, "points": points,
            "answer": g.answer}


def measure(backend, example, repeats: int) -> dict:
    one_run(backend, example, stream=True)   # warm-up (caches, allocator)
    plain, streamed = [], []
    for _ in range(repeats):                 # interleaved: shared-CPU noise hits both alike
        plain.append(one_run(backend, example, stream=False))
        streamed.append(one_run(backend, example, stream=True))
    assert len({r["answer"] for r in plain + streamed}) == 1, "the answer changed between runs"
    plain_s = statistics.median(r["full_s"] for r in plain)
    full_s = statistics.median(r["full_s"] for r in streamed)
    firsts = [r["first_point_s"] / r["full_s"] for r in streamed if r["first_point_s"] is not None]
    return {
        "points": streamed[0]["points"], "answer_chars": len(streamed[0]["answer"]),
        "plain_full_s": round(plain_s, 4), "streamed_full_s": round(full_s, 4),
        "first_point_s": round(statistics.median(r["first_point_s"] for r in streamed), 4) if firsts else None,
        "ratios": {"first_point_vs_full": round(statistics.median(firsts), 3) if firsts else None,
                   "streamed_vs_plain": round(full_s / plain_s, 3)},
    }


def make_backend(kind: str, engine_dir: str | None, tmp: Path):
    if kind == "torch":
        from molmo2_ros.backends.torch_backend import TorchBackend

        return TorchBackend(str(ASSET), device="cpu")
    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    if engine_dir is None:
        from molmo2_ros.engines.cli import main as engines

        engine_dir = str(tmp / "engines")
        if engines(["export", "--model", str(ASSET), "--out", engine_dir, "--max-frames", str(FRAMES)]) != 0:
            raise RuntimeError("export of the shipped model failed")
    return OnnxRuntimeBackend(engine_dir, device="cpu", threads=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"],
                        choices=["torch", "onnxruntime"])
    parser.add_argument("--engine-dir", help="an ONNX export of the shipped model (default: export one now)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from molmo2_ros.training.shapes_tasks import HELDOUT_SEED, make_example

    examples = {name: make_example(kind, HELDOUT_SEED + seed, frames=(FRAMES, FRAMES))
                for name, kind, seed in QUERIES}
    report = {"model": "shapes-tiny (shipped)", "device": "cpu", "threads": 1, "frames": FRAMES,
              "repeats": args.repeats, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.backends:
            backend = make_backend(kind, args.engine_dir, Path(tmp))
            try:
                report["results"][kind] = {name: measure(backend, ex, args.repeats) for name, ex in examples.items()}
            finally:
                backend.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
