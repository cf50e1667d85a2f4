"""Console entry points: `molmo2-train` (with `convert`, `review`, `plot`) and `molmo2-eval`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


SUBCOMMANDS = {"convert": "molmo2_ros.training.convert", "review": "molmo2_ros.training.review",
               "plot": "molmo2_ros.training.plot"}


def train_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="molmo2-train",
        description="Fine-tune Molmo2 (full or LoRA) from a config file; resumes from the newest "
                    "checkpoint in output_dir. Also: `molmo2-train convert` (recording -> manifest), "
                    "`molmo2-train review DATASET` (correct it in the browser), `molmo2-train plot RUN` "
                    "(loss and validation F1 as a PNG).")
    parser.add_argument("--config", required=True, help="YAML or JSON training config")
    parser.add_argument("--steps", type=int, help="override the config's steps")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    args = parser.parse_args(argv)
    from molmo2_ros.training.config import load_config, validate
    from molmo2_ros.training.trainer import TrainingInterrupted, train

    try:
        config = load_config(args.config)
        if args.steps is not None:
            config.steps = args.steps
        if args.output_dir is not None:
            config.output_dir = args.output_dir
        validate(config, args.config)
    except (OSError, ValueError) as exc:
        print(f"molmo2-train: {exc}", file=sys.stderr)
        return 2
    try:
        final = train(config)
    except ValueError as exc:   # bad data or settings: the message says which
        print(f"molmo2-train: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        resume = " ".join(["molmo2-train", *argv])
        print(f"molmo2-train: interrupted: {exc}. Resume with: {resume}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("molmo2-train: interrupted before training started; nothing saved", file=sys.stderr)
        return 130
    print(f"final checkpoint: {final}")
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="molmo2-eval",
        description="Score a model through the real inference path (ground(): processor, generate, "
                    "parser, mapping) on a manifest or on held-out shapes-world examples.")
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--backend", default="torch", help="torch | onnxruntime | tensorrt")
    parser.add_argument("--engine-dir", help="exported engines (onnxruntime/tensorrt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSONL manifest (see molmo2_ros.training.dataset)")
    source.add_argument("--shapes", help="held-out shapes examples, e.g. image_point=100,video_point=50")
    parser.add_argument("--seed", type=int, default=0, help="held-out shapes seed offset")
    parser.add_argument("--frames", help="shapes video kinds: evaluate each at these window lengths "
                                         "(frames at 2 fps), e.g. 4,8,16; groups are named KIND@Nf")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--details", action="store_true", help="add per-example answers to the report")
    parser.add_argument("--out", help="write the JSON report here and print a short summary "
                                      "(default: the report on stdout)")
    args = parser.parse_args(argv)

    from molmo2_ros.backends.factory import make_backend
    from molmo2_ros.training.evaluate import evaluate

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        examples = _examples(args)
        kwargs = {"engine_dir": args.engine_dir} if args.engine_dir else {}
        backend = make_backend(args.backend, args.model, **kwargs)
    except (OSError, ValueError) as exc:
        print(f"molmo2-eval: {exc}", file=sys.stderr)
        return 2
    try:
        report = evaluate(backend, examples, max_new_tokens=args.max_new_tokens, details=args.details,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        backend.close()
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(summary(report) + f"\nreport: {args.out}")
    else:
        print(text)
    return 0


def summary(report: dict) -> str:
    """One line per group: n, point P/R/F1, count accuracy."""
    lines = []
    for name, g in report["groups"].items():
        p = g["points"]
        line = f"{name}: n {p['n']}"
        if p["n"]:
            line += f", points P {p['precision']:.3f} R {p['recall']:.3f} F1 {p['f1']:.3f}"
        if "count" in g and g["count"]["n"]:
            line += f", count exact {g['count']['exact']:.3f} close {g['count']['close']:.3f}"
        lines.append(line)
    return "\n".join(lines)


def _examples(args):
    if args.manifest:
        from molmo2_ros.training.dataset import load_all

        return load_all(args.manifest)
    from molmo2_ros.training.shapes_tasks import HELDOUT_SEED, KINDS, heldout_examples

    plan = {}
    for part in args.shapes.split(","):
        kind, _, n = part.partition("=")
        if kind not in KINDS or not n.isdigit():
            raise ValueError(f"--shapes: expected KIND=N with KIND in {KINDS}, got {part!r}")
        plan[kind] = int(n)
    lengths = None
    if args.frames:
        parts = args.frames.split(",")
        if not all(p.isdigit() and int(p) >= 2 for p in parts):
            raise ValueError(f"--frames: expected window lengths >= 2 like 4,8,16, got {args.frames!r}")
        lengths = [int(p) for p in parts]
    return heldout_examples(plan, HELDOUT_SEED + args.seed, lengths)


# `torchrun ... -m molmo2_ros.training.cli --config FILE` / `accelerate launch -m molmo2_ros.training.cli`
if __name__ == "__main__":
    sys.exit(train_main())
