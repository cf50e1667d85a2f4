"""The openai backend against the local torch backend, in one run, on the shipped model.

Prints JSON with:
- bytes: what one query sends for a 16-frame window at 640x480 (the shapes scene, and the
  same with a camera's sensor noise), per encoding: the MP4 (what `transformers serve` reads
  from a file) and the request body with the video inline (what vLLM gets); and their ratio;
- latency: per-query seconds of the local torch backend (preprocess, generate, parse) and
  of a real `transformers serve` process on this machine (encode, upload, server, parse),
  lossless and compact, medians over --queries, and the ratio server / local;
- f1 (with --f1 N): held-out shapes video examples (N per task) answered by the local
  backend on the original frames and on the frames the compact encoding delivers (encoded
  and decoded again, exactly what a server decodes): what the compact default costs.

    python bench/bench_server.py [--queries 3] [--f1 40]

The server needs `transformers[serving]`, torchcodec and FFmpeg (scripts/bootstrap.sh);
tests/inference_server.py starts it.
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import inference_server  # noqa: E402  (the tests' launcher of a real `transformers serve`)

from molmo2_ros.backends.factory import make_backend  # noqa: E402
from molmo2_ros.backends.server_video import ENCODINGS, decode_video, encode_video, video_rate  # noqa: E402
from molmo2_ros.core.grounder import ground, sampling_fps  # noqa: E402
from molmo2_ros.core.grounding import Frame  # noqa: E402
from molmo2_ros.sim.shapes_world import make_clip  # noqa: E402

MODEL = str(inference_server.SHIPPED_MODEL)


def window(size=(640, 480), n=16, noise: float = 0.0) -> tuple[list[Frame], str]:
    """The shapes scene; with `noise`, plus a camera's sensor noise (Gaussian, that sigma in
    grey levels), which is what makes lossless video of a real camera large."""
    import numpy as np

    clip = make_clip(7, n_frames=n, fps=2.0, size=size, n_objects=3)
    rng = np.random.default_rng(0)
    images = [np.clip(f + rng.normal(0, noise, f.shape), 0, 255).astype(np.uint8) if noise else f
              for f in clip.frames]
    frames = [Frame(image=f, stamp_ns=t, source_size=clip.size) for f, t in zip(images, clip.stamps_ns)]
    return frames, clip.labels[0]


def bytes_per_query(frames: list[Frame]) -> dict:
    out = {}
    for encoding in ENCODINGS:
        video = encode_video(frames, video_rate(2.0), encoding)
        out[encoding] = {"mp4_bytes": len(video), "inline_request_bytes": len(base64.b64encode(video)) + 400}
    out["lossless_over_compact"] = round(out["lossless"]["mp4_bytes"] / out["compact"]["mp4_bytes"], 1)
    return out


def median_split(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def latency(frames: list[Frame], label: str, queries: int, log_dir: Path) -> dict:
    local = make_backend("torch", MODEL, device="cpu")
    server = inference_server.TransformersServe(log_dir / "server.log").start()
    try:
        backends = {"local": local, **{f"server_{e}": make_backend("openai", MODEL, url=server.url,
                                                                    server_kind="transformers", encoding=e)
                                        for e in ENCODINGS}}
        runs: dict[str, list[dict]] = {name: [] for name in backends}
        answers = {}
        for name, backend in backends.items():   # one unmeasured query each (the server loads lazily)
            answers[name] = ground(backend, frames, label, "track").answer
        for _ in range(queries):                  # alternated: shared-CPU noise hits all alike
            for name, backend in backends.items():
                started = time.perf_counter()
                g = ground(backend, frames, label, "track")
                total = time.perf_counter() - started
                if name == "local":
                    runs[name].append({"preprocess_s": g.timings.preprocess, "generate_s": g.timings.generation,
                                       "parse_s": g.timings.parse, "total_s": total})
                else:
                    t = backend.last_timings
                    runs[name].append({"encode_s": t.encode_s, "upload_s": t.upload_s, "server_s": t.server_s,
                                       "parse_s": t.parse_s + g.timings.parse, "total_s": total})
        out = {name: median_split(r) for name, r in runs.items()}
        for name in backends:
            if name != "local":
                out[name]["ratio_to_local"] = round(out[name]["total_s"] / out["local"]["total_s"], 2)
        out["lossless_answer_equals_local"] = answers["server_lossless"] == answers["local"]
        return out
    finally:
        server.kill()
        local.close()


class CompactFrames:
    """A backend that answers on the frames a server decodes from the compact video."""

    def __init__(self, backend):
        self.backend, self.name, self.model_id = backend, "compact-roundtrip", backend.model_id
        self.compiles_on_first_use = False

    def generate(self, frames, prompt, **kw):
        if len(frames) > 1:
            rate = video_rate(sampling_fps(frames))
            decoded = decode_video(encode_video(frames, rate, "compact"))
            frames = [Frame(image=d, stamp_ns=f.stamp_ns, source_size=f.source_size, frame_id=f.frame_id)
                      for d, f in zip(decoded, frames)]
        return self.backend.generate(frames, prompt, **kw)

    def close(self):
        pass


def f1_cost(per_task: int) -> dict:
    from molmo2_ros.training.evaluate import evaluate
    from molmo2_ros.training.shapes_tasks import heldout_examples

    examples = heldout_examples({"video_point": per_task, "video_track": per_task, "video_count": per_task},
                                lengths=[16])
    local = make_backend("torch", MODEL, device="cpu")
    try:
        original = evaluate(local, examples)["groups"]
        compact = evaluate(CompactFrames(local), examples)["groups"]
    finally:
        local.close()
    out = {}
    for group in original:
        a, b = original[group]["points"], compact[group]["points"]
        out[group] = {"n": a["n"], "f1_original": round(a["f1"], 3), "f1_compact": round(b["f1"], 3),
                      "delta": round(b["f1"] - a["f1"], 3)}
        if "count" in original[group]:
            out[group]["count_exact_original"] = round(original[group]["count"]["exact"], 3)
            out[group]["count_exact_compact"] = round(compact[group]["count"]["exact"], 3)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=3, help="measured queries per backend")
    parser.add_argument("--f1", type=int, default=0, metavar="N", help="held-out examples per video task")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    frames, label = window()
    report = {"machine": "see docs/backends.md", "window": "16 frames, 640x480, 2 fps (shapes scene)",
              "bytes": {"shapes_scene": bytes_per_query(frames),
                        "with_sensor_noise_sigma_3": bytes_per_query(window(noise=3.0)[0])}}
    absent = inference_server.missing()
    if absent:
        report["latency"] = f"skipped: {'; '.join(absent)}"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report["latency"] = latency(frames, label, args.queries, Path(tmp))
    if args.f1:
        report["f1"] = f1_cost(args.f1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
