"""`molmo2-ros` console entry point: one subcommand per row of COMMANDS.

Each command lives in a module exposing `add_arguments(parser)` and `run(args) -> int`;
only the chosen command's module is imported (so `molmo2-ros infer` never imports rclpy).
This module itself implements `infer`: ground a query in a video file or images offline.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

# name: (module with add_arguments/run, one-line help). Register a command with one row.
COMMANDS = {
    "infer": ("molmo2_ros.cli", "ground a query in a video file or images (points, counts, tracks, answers)"),
    "tiny-model": ("molmo2_ros.tiny_model", "build a tiny random Molmo2 (for tests and demos) into a folder"),
    "node": ("molmo2_ros.ros.node", "run the molmo2_grounding ROS 2 node (pass --ros-args ...)"),
    "record": ("molmo2_ros.ros.recorder", "record the camera and the node's answers into a rosbag2 (MCAP) folder"),
    "demo": ("molmo2_ros.ros.demo",
             "publish a synthetic camera, run the node, ask one query, write an annotated image"),
}

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from molmo2_ros.backends.factory import BACKEND_KINDS
    from molmo2_ros.backends.openai_backend import SERVER_KINDS
    from molmo2_ros.backends.server_video import ENCODINGS
    from molmo2_ros.core.grounder import DEFAULT_MAX_NEW_TOKENS
    from molmo2_ros.core.grounding import Task
    from molmo2_ros.video_io import DEFAULT_FPS

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", metavar="FILE", help="video file (any format FFmpeg/PyAV decodes)")
    source.add_argument("--images", metavar="FILE", nargs="+",
                        help="image files: one is an image query, several a video 1/fps s apart")
    parser.add_argument("--query", required=True, help='what to find, e.g. "red cup" or a question for --task ask')
    parser.add_argument("--task", choices=[t.value for t in Task], default=Task.POINT.value)
    parser.add_argument("--model", default="",
                        help="hub id (e.g. allenai/Molmo2-4B) or local folder (default: the packaged "
                             "shapes-tiny model, as the node)")
    parser.add_argument("--backend", choices=BACKEND_KINDS, default="torch")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--dtype", help="bfloat16, float16, float32 (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--engine-dir", help="exported engines (onnxruntime / tensorrt backends)")
    server = parser.add_argument_group("openai backend (an inference server; docs/backends.md)")
    server.add_argument("--server-url", help="the server, e.g. http://gpu-host:8000 (--model: the served model)")
    server.add_argument("--server-kind", choices=SERVER_KINDS, default="vllm",
                        help="vllm: video sent inline; transformers: `transformers serve` on this machine")
    server.add_argument("--server-encoding", choices=ENCODINGS, default="compact")
    server.add_argument("--server-timeout", type=float, default=60.0, help="seconds an answer may take")
    server.add_argument("--api-key-env", default="", help="environment variable holding the API key")
    server.add_argument("--api-key-file", default="", help="file holding the API key")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading pickle (.bin) weights; only for checkpoints you trust")
    parser.add_argument("--fps", type=float,
                        help=f"frame sampling rate (default: the model's trained window, else {DEFAULT_FPS})")
    parser.add_argument("--max-frames", type=int,
                        help=f"most frames sent (default: the model's trained window, else {DEFAULT_MAX_FRAMES})")
    parser.add_argument("--max-side", type=int, default=0,
                        help="shrink frames to this longest side before the model (0: keep)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--stream", action="store_true",
                        help="print each point as soon as the answer makes it final, before the result "
                             "(one line each, 'stream:' first; with --json: one JSON object a line)")
    parser.add_argument("--annotate", metavar="OUT",
                        help="write the frames with points/tracks drawn: OUT.png (sheet) or OUT.mp4")


DEFAULT_MAX_FRAMES = 64


def resolve_window(args: argparse.Namespace, model: str) -> None:
    """Fill --fps / --max-frames the user left out from the model's trained window (its
    engine folder's for the graph backends), else the built-in defaults."""
    from molmo2_ros.backends.trained_window import read_trained_window
    from molmo2_ros.video_io import DEFAULT_FPS

    if args.fps is not None and args.max_frames is not None:
        return
    folder = args.engine_dir or model
    window = read_trained_window(folder) if folder and Path(folder).is_dir() else None
    if window is not None:
        print(f"molmo2-ros: the model was trained on {window.describe()}; using that where no "
              f"--fps/--max-frames is given", file=sys.stderr)
    if args.fps is None:
        args.fps = window.fps if window else DEFAULT_FPS
    if args.max_frames is None:
        args.max_frames = window.max_frames if window else DEFAULT_MAX_FRAMES


def run(args: argparse.Namespace) -> int:
    from molmo2_ros.backends.default_model import default_model
    from molmo2_ros.backends.factory import make_backend
    from molmo2_ros.core.grounder import ground, grounding_to_dict
    from molmo2_ros.video_io import read_images, read_video

    # engines run as exported unless a model is named (then they must come from it)
    model = args.model or (default_model()[0] if args.backend == "torch" else None)
    resolve_window(args, model)
    if args.annotate and not args.annotate.lower().endswith((".png", ".mp4")):
        raise ValueError(f"--annotate must end in .png or .mp4, got {args.annotate!r}")
    if args.allow_pickle and args.backend != "torch":
        raise ValueError("--allow-pickle applies to the torch backend's checkpoint loading only")
    started = time.perf_counter()
    if args.video:
        frames = read_video(args.video, fps=args.fps, max_frames=args.max_frames, max_side=args.max_side)
    else:
        if len(args.images) > args.max_frames:
            raise ValueError(f"{len(args.images)} images exceed --max-frames {args.max_frames}")
        frames = read_images(args.images, fps=args.fps, max_side=args.max_side)
    decode_s = time.perf_counter() - started

    extra = {"allow_pickle": True} if args.allow_pickle else {}
    if args.backend == "openai":
        extra = {"url": args.server_url or "", "server_kind": args.server_kind, "encoding": args.server_encoding,
                 "timeout_s": args.server_timeout, "api_key_env": args.api_key_env,
                 "api_key_file": args.api_key_file}
    elif args.server_url:
        raise ValueError("--server-url is for --backend openai")
    backend = make_backend(args.backend, model, device=args.device, dtype=args.dtype,
                           engine_dir=args.engine_dir, **extra)
    try:
        on_points = _stream_printer(frames, args.json) if args.stream else None
        result = ground(backend, frames, args.query, args.task, max_new_tokens=args.max_new_tokens,
                        on_points=on_points)
    finally:
        backend.close()
    if args.annotate:
        from molmo2_ros.annotate import write_annotation

        write_annotation(args.annotate, frames, result)
    if args.json:
        print(json.dumps({**grounding_to_dict(result), "decode_s": decode_s}, indent=2))
    else:
        print(_summary(result, decode_s, args.annotate))
    return 0


def _stream_printer(frames, as_json: bool):
    """`ground(on_points=...)` for --stream: one line per point as it becomes final, with
    the seconds since the query was asked (track queries: object_id is the track id; the
    label is printed once the model has stated it, in the result)."""
    t0 = min(f.stamp_ns for f in frames)
    started = time.perf_counter()

    def on_points(new, partial) -> None:
        for p in new:
            elapsed = time.perf_counter() - started
            if as_json:
                line = json.dumps({"stream": {"elapsed_s": round(elapsed, 3), "stamp_ns": p.stamp_ns,
                                              "x": p.x, "y": p.y, "object_id": p.object_id}})
            else:
                line = (f"stream: {elapsed:7.3f} s  t {(p.stamp_ns - t0) / 1e9:7.3f}  id {p.object_id:3d}  "
                        f"x {p.x:8.1f}  y {p.y:8.1f}")
            print(line, flush=True)
    return on_points


def _summary(g, decode_s: float, annotated: str | None) -> str:
    t0 = min(g.frame_stamps_ns, default=0)
    lines = [f"{g.task.value}: {g.query!r}  ({len(g.frame_stamps_ns)} frames, {g.backend} {g.model})",
             f"answer: {g.answer!r}"]
    if g.count is not None:
        lines.append(f"count: {g.count}")
    if g.points:
        lines.append("points (t [s], id, x [px], y [px], label):")
        lines += [f"  {(p.stamp_ns - t0) / 1e9:7.3f}  {p.object_id:3d}  {p.x:8.1f}  {p.y:8.1f}  {p.label}"
                  for p in g.points]
    for track in g.tracks:
        lines.append(f"track {track.id} ({track.label}): {len(track.points)} points")
    lines += [f"warning: {w}" for w in g.warnings]
    t = g.timings
    lines.append(f"timings: decode {decode_s:.3f} s, preprocess {t.preprocess:.3f} s, "
                 f"generate {t.generation:.3f} s, parse {t.parse:.4f} s")
    if annotated:
        lines.append(f"annotated: {annotated}")
    return "\n".join(lines)


def build_parser(argv) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molmo2-ros", description="Molmo2 grounding for ROS 2 and offline use.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            command = importlib.import_module(module)
            command.add_arguments(sub)
            sub.set_defaults(run=command.run)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"molmo2-ros {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
