"""Time to the first streamed point against time to the full answer, and what streaming
costs, with the shipped shapes model on CPU (torch and ONNX Runtime).

For each backend and query (point, count and track over 16-frame shapes clips) it runs
ground() alternately without streaming (the baseline) and with streaming (an on_points
listener), `--repeats` times each (which goes first alternates), and prints JSON with the
medians and the ratios:
- first_point_vs_full: seconds from ground()'s start to the first streamed point, over
  the streamed run's full seconds (for a 16-frame track this should be <= 0.25);
- streamed_vs_plain: the streamed run's full seconds over the plain run's (the cost of
  streaming: re-detokenizing and re-parsing as tokens arrive; should be <= 1.05), and
  streamed_vs_plain_cpu: the same with the process's CPU seconds (one compute thread);
- stream_work_vs_plain_best: the streaming work alone (the answer's tokens detokenized and
  parsed as ground() does while streaming, timed without the model, best of 5) over the
  fastest plain run: what streaming adds, free of the noise other jobs on a shared
  machine put into the two wall-clock totals.
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
QUERIES = [("point", "video_point", 3), ("count", "video_count", 0), ("track", "video_track", 4)]
FRAMES = 16


def one_run(backend, example, stream: bool) -> dict:
    from molmo2_ros.core.grounder import ground

    started, cpu_started = time.perf_counter(), time.process_time()
    first = []

    def on_points(new, partial):
        if not first:
            first.append(time.perf_counter() - started)

    g = ground(backend, example.frames, example.query, example.task, max_new_tokens=512,
               on_points=on_points if stream else None)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    points = sum(len(t.points) for t in g.tracks) if g.tracks else len(g.points)
    return {"full_s": total, "cpu_s": cpu, "first_point_s": first[0] if first else None, "points": points,
            "answer": g.answer}


def stream_work_s(backend, example, answer: str, repeats: int = 5) -> float:
    """Seconds of the work streaming adds to one answer, without the model: its tokens
    through IncrementalText (detokenizing) and an AnswerStream (parsing, mapping) and a
    snapshot per change, as ground() runs them (best of `repeats`: immune to other jobs)."""
    from molmo2_ros.core.answer_stream import AnswerStream
    from molmo2_ros.core.backend import IncrementalText

    tokenizer = backend.processor.tokenizer
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    times = [0.5 * i for i in range(len(example.frames))]
    best = float("inf")
    for _ in range(repeats):
        stream = AnswerStream(example.task, example.frames)

        def on_text(piece):
            if stream.feed(piece)[1]:
                stream.snapshot()

        started = time.perf_counter()
        text = IncrementalText(lambda t: tokenizer.decode(t, skip_special_tokens=True), on_text, times, True)
        for token in ids:
            text.add(token)
        text.finish(answer)
        best = min(best, time.perf_counter() - started)
    return best


def measure(backend, example, repeats: int) -> dict:
    one_run(backend, example, stream=True)   # warm-up (caches, allocator)
    plain, streamed = [], []
    for i in range(repeats):   # interleaved, alternating which goes first: load drift hits both alike
        for stream in ((False, True) if i % 2 == 0 else (True, False)):
            (streamed if stream else plain).append(one_run(backend, example, stream))
    assert len({r["answer"] for r in plain + streamed}) == 1, "the answer changed between runs"
    plain_s = statistics.median(r["full_s"] for r in plain)
    full_s = statistics.median(r["full_s"] for r in streamed)
    plain_cpu = statistics.median(r["cpu_s"] for r in plain)
    streamed_cpu = statistics.median(r["cpu_s"] for r in streamed)
    firsts = [r["first_point_s"] / r["full_s"] for r in streamed if r["first_point_s"] is not None]
    work = stream_work_s(backend, example, streamed[0]["answer"])
    plain_best = min(r["full_s"] for r in plain)
    return {
        "points": streamed[0]["points"], "answer_chars": len(streamed[0]["answer"]),
        "plain_full_s": round(plain_s, 4), "streamed_full_s": round(full_s, 4),
        "runs_s": {"plain": [round(r["full_s"], 3) for r in plain],
                   "streamed": [round(r["full_s"], 3) for r in streamed]},
        "first_point_s": round(statistics.median(r["first_point_s"] for r in streamed), 4) if firsts else None,
        "ratios": {"first_point_vs_full": round(statistics.median(firsts), 3) if firsts else None,
                   "streamed_vs_plain": round(full_s / plain_s, 3),
                   "streamed_vs_plain_cpu": round(streamed_cpu / plain_cpu, 3),
                   "stream_work_vs_plain_best": round(work / plain_best, 4)},
        "stream_work_s": round(work, 4),
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
