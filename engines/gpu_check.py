"""GPU check: a real-shaped Molmo2-4B with random weights, HF baseline, export, parity.

    python -m molmo2_ros.engines.gpu_check [--budget-s 330] [--frames 8] [--decode-steps 32]
    python -m molmo2_ros.engines.gpu_check --tiny          # the same code path on the tiny model (CPU ok)

Sections, each timed and guarded (an exception or a missing package is recorded as
the section's reason, and the script goes on):
  environment   versions, GPU, which runtimes import
  model         Molmo2-4B-shaped config (Qwen3-4B LLM, SigLIP ViT 27x27 patches at 378 px), random
                weights initialised on the GPU in bf16
  hf_baseline   transformers eager generate (bf16, default attention): vision ms/frame,
                prefill ms, time to first token, decode tokens/s
  decode_roofline  measured memory bandwidth, LM weight bytes, and the baseline's decode
                speed as a fraction of the bandwidth roofline
  torch_static_cache  the torch backend's GPU decode path (static KV cache, compiled by
                transformers into CUDA graphs) vs the baseline: decode tokens/s, roofline
                fraction, greedy-token agreement
  reference     the same weights in the export precision (fp16, eager attention): vision
                features, prefill logits, greedy tokens (the parity reference)
  export        the three ONNX graphs in fp16 (molmo2_ros.engines.export), sizes and seconds
  onnxruntime   ONNX Runtime CUDA EP (needs onnxruntime-gpu): parity + timings
  tensorrt      TensorRT engines (needs tensorrt): build seconds, parity + timings
A time budget is checked before every section so the whole run stays inside --budget-s.
Prints one JSON object; also writes $OUT/gpu_check.json when OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from molmo2_ros.engines.model_shapes import build_model, keep_rotary_fp32, synthetic_video

STARTED = time.monotonic()



class Report:
    def __init__(self, budget_s: float, only: set[str] | None = None):
        self.budget_s = budget_s
        self.only = only
        self.data: dict = {"budget_s": budget_s, "sections": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - STARTED)

    def run(self, name: str, fn, *, needs_s: float = 0.0):
        """Run one section unless the budget cannot cover `needs_s`; record result or reason."""
        if self.only is not None and name not in self.only | {"environment", "model"}:
            self.data["sections"][name] = {"status": "skipped", "reason": "not in --only"}
            return None
        if self.left() < needs_s:
            self.data["sections"][name] = {"status": "skipped",
                                           "reason": f"{self.left():.0f} s left, section needs ~{needs_s:.0f} s"}
            return None
        start = time.monotonic()
        try:
            result = fn()
            entry = {"status": "ok", **(result or {})}
        except _Skip as exc:
            entry, result = {"status": "skipped", "reason": str(exc)}, None
        except Exception as exc:  # noqa: BLE001 - a check records every failure and goes on
            entry, result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                             "traceback": traceback.format_exc()[-3000:]}, None
        entry["seconds"] = round(time.monotonic() - start, 2)
        self.data["sections"][name] = entry
        self.save()  # a run killed later still leaves what it measured
        print(f"[gpu_check] {name}: {entry['status']} ({entry['seconds']} s, {self.left():.0f} s left)",
              file=sys.stderr, flush=True)
        return result


    def save(self) -> None:
        self.data["total_seconds"] = round(time.monotonic() - STARTED, 2)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
            Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))


class _Skip(Exception):
    pass


def environment() -> dict:
    import torch
    import transformers

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": transformers.__version__, "gpu": None}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        env["gpu"] = f"{torch.cuda.get_device_name(0)} (sm_{major}{minor})"
    for package in ("onnx", "onnxruntime", "tensorrt"):
        try:
            module = __import__(package)
            env[package] = module.__version__
        except Exception as exc:  # noqa: BLE001
            env[package] = f"not importable: {type(exc).__name__}: {exc}"[:300]
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        pass
    return env


def decode_roofline(model, sections: dict) -> dict:
    """Batch-1 decode reads every language-model weight once per token, so its ceiling is
    memory bandwidth / weight bytes. Bandwidth is measured here (a device-to-device copy,
    bytes read + written), not taken from a data sheet."""
    import torch

    baseline = sections.get("hf_baseline", {})
    if baseline.get("status") != "ok" or not torch.cuda.is_available():
        raise _Skip("needs the hf_baseline section on a CUDA GPU")
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    bandwidth = 2 * 10 * src.numel() / (time.perf_counter() - start)
    del src, dst
    # Per token: every layer's weights and the LM head; of the input embedding one row only.
    head = model.get_output_embeddings().weight
    weight_bytes = head.numel() * head.element_size() + sum(
        p.numel() * p.element_size() for n, p in model.named_parameters()
        if "language_model" in n and "embed_tokens" not in n)
    ceiling = bandwidth / weight_bytes
    measured = baseline["decode_tokens_per_s"]
    return {"bandwidth_gb_s": round(bandwidth / 1e9, 1), "lm_weight_gb": round(weight_bytes / 1e9, 3),
            "roofline_tokens_per_s": round(ceiling, 1), "hf_decode_tokens_per_s": measured,
            "hf_fraction_of_roofline": round(measured / ceiling, 3)}


def static_cache_decode(model, tensors: dict, device, decode_steps: int, sections: dict) -> dict:
    """The torch backend's GPU decode path (a bucketed static KV cache, which transformers
    compiles into CUDA graphs) on the baseline's inputs: first-call (compile) seconds, time
    to first token, decode tokens/s, and how its greedy tokens compare with the baseline's."""
    import torch

    from molmo2_ros.engines.bench import StepClock, median_ms, torch_inputs
    from molmo2_ros.backends.torch_backend import cache_kwargs

    sync = torch.cuda.synchronize if str(device).startswith("cuda") else None
    inputs = torch_inputs(tensors, device, model.dtype)
    n = decode_steps + 1
    static = cache_kwargs(True, int(inputs["input_ids"].shape[1]), n)

    def generate(tokens, **cache):
        return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **cache)

    with torch.inference_mode():
        start = time.perf_counter()
        ours = generate(n, **static)
        if sync:
            sync()
        first_call_s = time.perf_counter() - start
        ttft_ms = median_ms(lambda: generate(1, **static), 3, sync)
        clock = StepClock(sync)
        generate(n, **static, logits_processor=[clock])
        baseline_tokens = generate(n)
    prompt = inputs["input_ids"].shape[1]
    agree = int((ours[0, prompt:] == baseline_tokens[0, prompt:]).cumprod(0).sum())
    result = {"max_cache_len": static["max_cache_len"], "first_call_s": round(first_call_s, 2),
              "time_to_first_token_ms": round(ttft_ms, 3),
              "decode_tokens_per_s": round(clock.tokens_per_s(), 2),
              "greedy_tokens_equal_to_baseline": f"{agree}/{n}"}
    base = sections.get("hf_baseline", {})
    if base.get("status") == "ok":
        result["decode_speedup_vs_baseline"] = round(result["decode_tokens_per_s"] / base["decode_tokens_per_s"], 2)
    roof = sections.get("decode_roofline", {})
    if roof.get("status") == "ok":
        result["fraction_of_roofline"] = round(result["decode_tokens_per_s"] / roof["roofline_tokens_per_s"], 3)
    return result


def reference(model, tensors: dict, device, steps: int) -> dict:
    """Vision features, last prefill logits and greedy tokens from transformers (parity reference)."""
    import torch

    from molmo2_ros.engines.bench import torch_inputs

    inputs = torch_inputs(tensors, device, model.dtype)
    with torch.inference_mode():
        features = torch.cat(model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_token_pooling"], inputs["video_grids"]).pooler_output)
        logits = model(**inputs, logits_to_keep=1).logits[0, -1]
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    return {"features": features.float().cpu().numpy(), "logits": logits.float().cpu().numpy(),
            "tokens": out[0, tensors["input_ids"].shape[1]:].tolist()}


def parity(runner, tensors: dict, ref: dict, steps: int) -> dict:
    """Compare a GraphRunner with the reference: features, prefill logits, greedy tokens."""
    from molmo2_ros.backends.kv_greedy import GraphConfig, greedy_generate, vision_arrays

    pixels, pooling = vision_arrays(tensors)
    valid = (pooling >= 0).any(-1)
    features = runner.vision(pixels, pooling, valid)
    features_np = features.float().cpu().numpy() if hasattr(features, "cpu") else np.asarray(features, np.float32)
    ids, mask, mm = tensors["input_ids"], tensors["attention_mask"], tensors["mm_token_type_ids"]
    logits = runner.prefill(ids, features, mask, mask.cumsum(-1) - 1, mm)
    config = GraphConfig(image_patch_id=ref["image_patch_id"], eos_token_ids=())
    tokens = greedy_generate(runner, tensors, config, max_new_tokens=steps)
    same = next((i for i, (a, b) in enumerate(zip(tokens, ref["tokens"])) if a != b), min(len(tokens), steps))
    vision_diff = float(np.abs(features_np - ref["features"]).max())
    return {"vision_max_abs_diff": vision_diff, "vision_ref_max_abs": float(np.abs(ref["features"]).max()),
            "vision_max_rel_diff": vision_diff / max(float(np.abs(ref["features"]).max()), 1e-30),
            "prefill_logits_max_abs_diff": float(np.abs(logits[0] - ref["logits"]).max()),
            "prefill_argmax_equal": bool(np.argmax(logits[0]) == np.argmax(ref["logits"])),
            "greedy_tokens_equal": tokens == ref["tokens"], "greedy_tokens_matching_prefix": same,
            "greedy_steps": steps}


def vision_parity_on_cpu(graphs: Path, tensors: dict, ref: dict) -> dict:
    """Without onnxruntime-gpu: the real-shaped vision graph on ONNX Runtime's CPU provider
    for the first frame (frames are encoded independently), against the reference."""
    import onnxruntime as ort

    from molmo2_ros.backends.engine_folder import VISION_FILE

    grid = tensors["video_grids"][0]
    tokens = int(grid[1] * grid[2])
    pooling = tensors["video_token_pooling"][:tokens]
    session = ort.InferenceSession(str(graphs / VISION_FILE), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"pixel_values": tensors["pixel_values_videos"][:1],
                                             "pooling": pooling})
    expected = ref["features"][:tokens]
    diff = float(np.abs(features.astype(np.float32) - expected).max())
    return {"providers": ["CPUExecutionProvider"], "scope": "vision graph, first frame only (no onnxruntime-gpu: "
            f"providers {ort.get_available_providers()})", "vision_max_abs_diff": diff,
            "vision_ref_max_abs": float(np.abs(expected).max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the project's tiny model (CPU ok) instead of 4B")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting sections past this")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--work", default=None, help="folder for the exported graphs (default: a temp dir)")
    parser.add_argument("--only", default=None,
                        help="comma-separated sections to run (environment and model always run)")
    args = parser.parse_args(argv)

    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        print("[gpu_check] no CUDA GPU: the 4B-shaped check needs one (use --tiny on CPU)", file=sys.stderr)
    work = Path(args.work or tempfile.mkdtemp(prefix="molmo2_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report(args.budget_s, set(args.only.split(",")) if args.only else None)
    report.data.update({"mode": "tiny" if args.tiny else "molmo2-4b-shaped", "device": device, "work": str(work)})
    report.run("environment", environment)
    base_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    export_precision = "fp16" if device == "cuda" else "fp32"
    state: dict = {}

    def model_section():
        if device == "cpu" and not args.tiny:
            raise _Skip("no CUDA GPU")
        model, kind = build_model(args.tiny, device, base_dtype, work)
        state["model"] = model
        state["tensors"] = synthetic_video(model.config, args.frames)
        return {"kind": kind, "parameters": sum(p.numel() for p in model.parameters()),
                "prompt_tokens": int(state["tensors"]["input_ids"].shape[1])}

    report.run("model", model_section, needs_s=30)
    if "model" not in state:
        return _finish(report)
    from molmo2_ros.engines.bench import hf_baseline

    report.run("hf_baseline", lambda: hf_baseline(state["model"], state["tensors"], device, args.decode_steps),
               needs_s=30)
    report.run("decode_roofline", lambda: decode_roofline(state["model"], report.data["sections"]), needs_s=10)
    report.run("torch_static_cache", lambda: static_cache_decode(
        state["model"], state["tensors"], device, args.decode_steps, report.data["sections"]), needs_s=60)

    def reference_section():
        from molmo2_ros.engines.export import PRECISIONS

        model = keep_rotary_fp32(state["model"], PRECISIONS[export_precision])
        model.set_attn_implementation("eager")
        ref = reference(model, state["tensors"], device, args.decode_steps)
        ref["image_patch_id"] = model.config.image_patch_id
        state["reference"] = ref
        return {"dtype": export_precision, "attention": "eager", "tokens": ref["tokens"][:8]}

    report.run("reference", reference_section, needs_s=30)

    def export_section():
        from molmo2_ros.engines import export

        model, out = state["model"], work / "engines"
        out.mkdir(exist_ok=True)
        seconds, sizes = {}, {}
        vision_params = sum(p.numel() for n, p in model.named_parameters() if "language_model" not in n
                            and not n.startswith("lm_head"))
        lm_ratio = (sum(p.numel() for p in model.parameters()) - vision_params) / vision_params
        for name, fn in ((export.VISION_FILE, export.export_vision), (export.LM_FILE, export.export_language_model)):
            # a language-model graph takes about (its weights / the vision weights) x the vision export
            estimate = 10.0 if name == export.VISION_FILE else seconds[export.VISION_FILE] * lm_ratio
            if report.left() < estimate + 15:
                raise _Skip(f"{report.left():.0f} s left, {name} needs ~{estimate:.0f} s (exported: {seconds})")
            start = time.monotonic()
            fn(model, out / name)
            seconds[name] = round(time.monotonic() - start, 2)
            sizes[name] = sum(p.stat().st_size for p in out.glob(name + "*"))
        state["graphs"] = out
        return {"precision": export_precision, "seconds": seconds, "bytes": sizes}

    report.run("export", export_section, needs_s=60)

    def onnxruntime_section():
        if "graphs" not in state:
            raise _Skip("no exported graphs")
        import onnxruntime as ort

        from molmo2_ros.engines.bench import bench_runner
        from molmo2_ros.backends.onnxruntime_backend import CPU, CUDA, OrtRunner

        if CUDA in ort.get_available_providers():
            providers = [CUDA, CPU]
        elif device == "cpu":
            providers = [CPU]
        else:
            return vision_parity_on_cpu(state["graphs"], state["tensors"], state["reference"])
        runner = OrtRunner(state["graphs"], providers, None,
                           int(state["tensors"]["input_ids"].shape[1]) + 2 * args.decode_steps + 2)
        result = parity(runner, state["tensors"], state["reference"], args.decode_steps)
        result["timings"] = bench_runner(runner, state["tensors"], decode_steps=args.decode_steps)
        result["providers"] = providers
        return result

    report.run("onnxruntime", onnxruntime_section, needs_s=45)

    def tensorrt_section():
        if "graphs" not in state:
            raise _Skip("no exported graphs")
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise _Skip(f"tensorrt not importable: {exc}") from exc
        if device != "cuda":
            raise _Skip("TensorRT needs a CUDA GPU")
        from molmo2_ros.engines.bench import bench_runner
        from molmo2_ros.backends.engine_folder import probe_machine
        from molmo2_ros.backends.tensorrt_build import ENGINE_FILES, build_engine, default_profiles, timing_cache_name
        from molmo2_ros.engines.export import ExportSettings
        from molmo2_ros.backends.tensorrt_backend import TrtRunner

        settings = ExportSettings(precision=export_precision, max_frames=max(args.frames, 8),
                                  max_prompt=max(2048, int(state["tensors"]["input_ids"].shape[1]) + 64),
                                  max_new_tokens=args.decode_steps + 16).__dict__
        shapes = default_profiles(state["model"].config.to_dict(), settings)
        seconds = {}
        for onnx_name, engine_name in ENGINE_FILES.items():
            if report.left() < 30:
                raise _Skip(f"budget ran out before building {engine_name} (built: {seconds})")
            seconds[engine_name] = round(build_engine(
                trt, state["graphs"] / onnx_name, state["graphs"] / engine_name, shapes[onnx_name], workspace_gb=16,
                timing_cache=state["graphs"] / timing_cache_name(probe_machine()),
                progress=lambda m: print(m, file=sys.stderr)), 2)
        runner = TrtRunner(state["graphs"], settings["max_prompt"] + settings["max_new_tokens"])
        result = parity(runner, state["tensors"], state["reference"], args.decode_steps)
        result["timings"] = bench_runner(runner, state["tensors"], decode_steps=args.decode_steps)
        result["build_seconds"] = seconds
        return result

    report.run("tensorrt", tensorrt_section, needs_s=90)
    return _finish(report)


def _finish(report: Report) -> int:
    report.save()
    print(json.dumps(report.data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
