"""`molmo2-engines export|build|inspect|plan|bench`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _export(args) -> int:
    from molmo2_ros.engines.export import ExportSettings, export_checkpoint

    settings = ExportSettings(precision=args.precision, max_frames=args.max_frames, max_crops=args.max_crops,
                              max_prompt=args.max_prompt, max_new_tokens=args.max_new_tokens,
                              max_batch=args.max_batch, quantize=args.quantize, block_size=args.block_size)
    out = export_checkpoint(args.model, args.out, settings, device=args.device,
                            progress=lambda m: print(m, file=sys.stderr))
    print(out)
    return 0


def _profiles(text: str | None) -> dict | None:
    if not text:
        return None
    path = Path(text)
    return json.loads(path.read_text() if path.is_file() else text)


def _build(args) -> int:
    from molmo2_ros.backends.tensorrt_build import build_engines

    data = build_engines(args.dir, args.precision, profiles=_profiles(args.profiles), workspace_gb=args.workspace_gb,
                         progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(data["tensorrt"]["build_seconds"]))
    return 0


def _inspect(args) -> int:
    from molmo2_ros.backends import engine_folder as manifest

    try:
        data = manifest.read_manifest(args.dir)
    except manifest.EngineMismatch as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 2
    print(manifest.format_manifest(data))
    print(_summary(data["export"]), file=sys.stderr)
    source_hash = manifest.checkpoint_hash(args.model) if args.model else None
    runtimes = [args.runtime] if args.runtime else ["onnxruntime"] + (["tensorrt"] if "tensorrt" in data else [])
    status = 0
    machine = manifest.probe_machine()
    print(f"this machine: {json.dumps(machine.__dict__)}", file=sys.stderr)
    for runtime in runtimes:
        try:
            manifest.check_folder(args.dir, runtime=runtime, machine=machine, source_hash=source_hash)
            print(f"{runtime}: OK on this machine", file=sys.stderr)
        except manifest.EngineMismatch as exc:
            print(f"{runtime}: REFUSED: {exc}", file=sys.stderr)
            status = 2
    return status


def _summary(export: dict) -> str:
    from molmo2_ros.backends.engine_folder import LM_FILE

    settings = export["settings"]
    line = f"graphs: {settings['precision']}, KV capacity {settings['max_prompt'] + settings['max_new_tokens']}"
    scheme = settings.get("quantize")
    if not scheme:
        return line + ", weights not quantized"
    record = export.get("quantization", {}).get(LM_FILE, {})
    before, after = record.get("weight_bytes_before"), record.get("weight_bytes_after")
    ratio = f" = {after / before:.3f}x" if before and after else ""
    return (line + f", weights {scheme} (block {record.get('block_size')}, {record.get('weights_quantized')} LM "
            f"weights): {after} of {before} bytes{ratio}")


def _plan(args) -> int:
    from molmo2_ros.backends import memory_plan

    if args.measure:
        from molmo2_ros.engines.bench import measure_memory
        from molmo2_ros.backends.engine_folder import check_folder

        check_folder(args.measure, runtime="onnxruntime")
        result = measure_memory(args.measure, runtime=args.runtime, device=args.device, threads=args.threads,
                                prepack=args.prepack)
        print(json.dumps(result))
        print(f"{result['runtime']}: {result['memory']} memory after load and a warm-up query "
              f"{result['measured_gb']:.3f} GB, plan "
              f"{result['planned_at_load_gb']:.3f} GB (weights + KV cache) = {result['measured_vs_planned']:.2f}x",
              file=sys.stderr)
        return 0

    window = memory_plan.Window(frames=args.frames, max_new_tokens=args.max_new_tokens)
    plans = []
    for model in args.model:
        config = (memory_plan.PUBLISHED[model] if model in memory_plan.PUBLISHED
                  else json.loads(Path(model, "config.json").read_text()))
        plans += [memory_plan.describe(model, config, weights, window) for weights in args.weights.split(",")]
    if args.json:
        print(json.dumps(plans))
        return 0
    devices = [name for name, _, _ in memory_plan.DEVICES]
    print(f"{args.frames} frames, {args.max_new_tokens} new tokens (GB; vision tower fp16; KV cache fp16)")
    print(f"{'model':<12}{'weights':>8}{'LM':>7}{'vision':>7}{'KV':>6}{'act':>6}{'total':>7}  " + "  ".join(devices))
    for p in plans:
        act = max(p["activations_prefill"], p["activations_vision"])
        print(f"{p['model']:<12}{p['weights']:>8}{p['weights_lm']:>7.2f}{p['weights_vision']:>7.2f}{p['kv_cache']:>6.2f}"
              f"{act:>6.2f}{p['total_gb']:>7.2f}  " + "  ".join(f"{p['devices'][d]:^{len(d)}}" for d in devices))
    return 0


def _bench(args) -> int:
    from molmo2_ros.engines.bench import bench_backend
    from molmo2_ros.backends.factory import make_backend

    from molmo2_ros.backends import engine_folder as manifest

    source = manifest.read_manifest(args.dir)["export"]["source"] if args.baseline else None
    if source is not None and not Path(source, "config.json").is_file():
        raise FileNotFoundError(f"--baseline needs the source checkpoint {source} (from the manifest) on this machine")
    kw = {"device": args.device} if args.runtime == "onnxruntime" else {}
    backend = make_backend(args.runtime, None, engine_dir=args.dir, **kw)
    try:
        result = bench_backend(backend, frames=args.frames, decode_steps=args.decode_steps, repeats=args.repeats,
                               baseline_model=source, pasts=args.past)
    finally:
        backend.close()
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molmo2-engines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a checkpoint folder to ONNX graphs + processor + manifest")
    p.add_argument("--model", required=True, help="local checkpoint folder (save_pretrained layout)")
    p.add_argument("--out", required=True, help="engine folder to create")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--max-frames", type=int, default=16)
    p.add_argument("--max-crops", type=int, default=9)
    p.add_argument("--max-prompt", type=int, default=4096)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-batch", type=int, default=1)
    p.add_argument("--quantize", choices=["int8", "int4"],
                   help="weight-only block-wise Q/DQ of the LM graphs (layers, lm_head, embeddings); vision stays")
    p.add_argument("--block-size", type=int,
                   help="quantization block along the input channels (default: 128 for int8, 32 for int4)")
    p.add_argument("--device", default="cpu", help="device to trace on (cuda for fp16/bf16 exports)")
    p.set_defaults(func=_export)

    p = sub.add_parser("build", help="build TensorRT engines in an export folder")
    p.add_argument("dir")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8", "fp8"],
                   help="default: the export precision (engines are built strongly typed from the graphs)")
    p.add_argument("--profiles", help="JSON (or a JSON file): {graph.onnx: {input: [min, opt, max]}} overrides")
    p.add_argument("--workspace-gb", type=float, default=8.0)
    p.set_defaults(func=_build)

    p = sub.add_parser("inspect", help="print the manifest and check it against this machine")
    p.add_argument("dir")
    p.add_argument("--runtime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--model", help="checkpoint folder the engines must come from (its hash is compared)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("plan", help="memory per model, weight format and device for a query window")
    p.add_argument("--model", nargs="+", default=["Molmo2-4B", "Molmo2-8B"],
                   help="published model names (Molmo2-4B, Molmo2-8B) or checkpoint/engine folders")
    p.add_argument("--weights", default="fp16,int8,int4", help="comma-separated: fp32, fp16, bf16, int8, int4")
    p.add_argument("--frames", type=int, default=16, help="frames in the window (the node's max_frames)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--json", action="store_true")
    p.add_argument("--measure", metavar="DIR",
                   help="load the engine folder DIR and print its measured memory next to the plan's figure for it")
    p.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "tensorrt"], help="with --measure")
    p.add_argument("--device", default="cpu", help="with --measure, onnxruntime: cpu, cuda or auto")
    p.add_argument("--threads", type=int, help="with --measure, onnxruntime: intra-op threads")
    p.add_argument("--prepack", action="store_true",
                   help="with --measure, onnxruntime CPU: let it pre-pack weights (faster GEMMs, a second copy)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("bench", help="vision ms/frame, prefill ms, decode tokens/s as JSON")
    p.add_argument("dir")
    p.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default=None, help="onnxruntime: cpu, cuda or auto")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--past", type=lambda text: [int(v) for v in text.split(",")],
                   help="comma-separated cache fills, e.g. 64,4096: decode step ms at each and their ratio")
    p.add_argument("--baseline", action="store_true",
                   help="also time transformers on the source checkpoint (same inputs, same process) and print ratios")
    p.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not dump a traceback
        from molmo2_ros.backends.engine_folder import EngineMismatch

        if isinstance(exc, (EngineMismatch, ValueError, FileNotFoundError, ImportError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
