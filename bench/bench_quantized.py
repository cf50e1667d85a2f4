"""Weight-only INT8 / INT4 engines against fp32 engines of the same checkpoint, in one run.

Exports the model three times (fp32, --quantize int8, --quantize int4) through the real
CLI, runs the same held-out shapes-world examples through each with the ONNX Runtime
backend (molmo2-eval's scoring: the node's parser and pixel mapping), and prints JSON:
per variant the point F1 per group, its difference to fp32, the LM weight bytes (manifest)
and the LM graph files on disk as fractions of fp32; plus the decode step ms at cache
fills 64 and 4096 of fp32 engines exported with room for 4096 and their ratio (flat-cost
decode).

    .venv/bin/python bench/bench_quantized.py [--model molmo2_ros/assets/shapes-tiny] \
        [--shapes image_point=100,video_point=60] [--threads 1] [--past 64,4096]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"fp32": [], "int8": ["--quantize", "int8"], "int4": ["--quantize", "int4"]}
LM_GRAPHS = ("lm.onnx",)


def export(model: str, out: Path, flags: list[str], max_prompt: int) -> Path:
    from molmo2_ros.engines.cli import main

    if main(["export", "--model", model, "--out", str(out), "--max-prompt", str(max_prompt),
             "--max-new-tokens", "256", *flags]) != 0:
        raise RuntimeError(f"export {flags} failed")
    return out


def lm_sizes(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())["export"]
    files = sum(entry["bytes"] for name, entry in manifest["files"].items() if name.split(".onnx")[0] + ".onnx"
                in LM_GRAPHS)
    quantized = manifest.get("quantization", {})
    weights = {g: q["weight_bytes_after"] for g, q in quantized.items()}
    return {"lm_file_bytes": files, "lm_weight_bytes": weights.get("lm.onnx"),
            "lm_weight_bytes_fp32": next(iter(quantized.values()), {}).get("weight_bytes_before")}


def evaluate(model: str, folder: Path, shapes: str, threads: int) -> dict:
    from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    from molmo2_ros.training.evaluate import evaluate as run_eval
    from molmo2_ros.training.shapes_tasks import HELDOUT_SEED, heldout_examples

    plan = {kind: int(n) for kind, _, n in (part.partition("=") for part in shapes.split(","))}
    examples = heldout_examples(plan, HELDOUT_SEED, None)
    backend = OnnxRuntimeBackend(folder, device="cpu", threads=threads)
    try:
        started = time.perf_counter()
        report = run_eval(backend, examples, max_new_tokens=256)
    finally:
        backend.close()
    return {"f1": {group: round(v["points"]["f1"], 4) for group, v in report["groups"].items() if "points" in v},
            "eval_s": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="molmo2_ros/assets/shapes-tiny")
    parser.add_argument("--shapes", default="image_point=100,video_point=60")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--past", default="64,4096")
    args = parser.parse_args()
    pasts = [int(p) for p in args.past.split(",")]
    result = {"model": args.model, "shapes": args.shapes, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in VARIANTS.items():
            folder = export(args.model, Path(tmp) / name, flags, 1024)
            result["variants"][name] = {**lm_sizes(folder), **evaluate(args.model, folder, args.shapes, args.threads)}
            print(json.dumps({name: result["variants"][name]}), file=sys.stderr, flush=True)
        from molmo2_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
        from molmo2_ros.engines.bench import decode_scaling

        # a KV capacity that holds the largest fill (the eval engines above hold 1024 + 256)
        backend = OnnxRuntimeBackend(export(args.model, Path(tmp) / "long", [], max(pasts) + 64), device="cpu",
                                     threads=args.threads)
        result["decode_scaling"] = decode_scaling(backend, pasts)
        backend.close()
    base = result["variants"]["fp32"]
    for name, v in result["variants"].items():
        v["f1_minus_fp32"] = {g: round(f - base["f1"][g], 4) for g, f in v["f1"].items()}
        v["lm_files_vs_fp32"] = round(v["lm_file_bytes"] / base["lm_file_bytes"], 3)
        if v["lm_weight_bytes"]:
            v["lm_weights_vs_fp32"] = round(v["lm_weight_bytes"] / v["lm_weight_bytes_fp32"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
