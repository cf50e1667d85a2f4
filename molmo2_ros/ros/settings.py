"""Parameters of the molmo2_grounding node: the declaration table (name, default,
meaning; the README's table and config/molmo2_grounding.yaml mirror it, a test checks),
and their validation at configure into `Settings`, naming every bad value at once."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from molmo2_ros.backends.factory import BACKEND_KINDS
from molmo2_ros.backends.openai_backend import SERVER_KINDS
from molmo2_ros.backends.server_video import ENCODINGS
from molmo2_ros.backends.trained_window import TrainedWindow
from molmo2_ros.core.grounding import Task
from molmo2_ros.core.optical_flow import WINDOW as FLOW_WINDOW
from molmo2_ros.ros.messages import TASK_FROM_MSG
from molmo2_ros.video_io import DEFAULT_FPS

# The window when neither the parameters nor the model say (Molmo2 samples video at 2 fps).
DEFAULT_WINDOW = {"fps": DEFAULT_FPS, "window_seconds": 8.0, "max_frames": 16}

# name: (default, meaning). Types follow the defaults (an int is accepted for a double).
PARAMETERS = {
    "autostart": (True, "configure and activate on start"),
    "image_topic": ("/camera/image_raw", "camera topic (with compressed: the base topic, "
                                         "'/compressed' is appended unless present)"),
    "compressed": (False, "subscribe to sensor_msgs/CompressedImage instead of Image"),
    "image_reliability": ("best_effort", "camera QoS reliability: best_effort or reliable"),
    "image_depth": (5, "camera QoS history depth"),
    "model": ("", "checkpoint folder or hub id; empty: the packaged model, else the tiny random one"),
    "backend": ("torch", "torch, onnxruntime, tensorrt or openai (an inference server: see server_*)"),
    "engine_dir": ("", "folder of exported engines (onnxruntime/tensorrt)"),
    "force_engine_update": (False, "tensorrt: rebuild engines that do not match this machine "
                                   "from the folder's ONNX graphs (else they are refused)"),
    "device": ("", "torch device, e.g. cuda or cpu; empty: cuda when available"),
    "dtype": ("auto", "torch dtype: auto, float32, float16 or bfloat16"),
    # openai backend (docs/backends.md): `model` is the served model's name
    "server_url": ("", "openai: the inference server's URL, e.g. http://gpu-host:8000 (/v1 is added)"),
    "server_kind": ("vllm", "openai: vllm (video sent inline: any server) or transformers (`transformers "
                            "serve` on this machine: video sent as a file path)"),
    "server_encoding": ("compact", "openai: video encoding, compact (H.264) or lossless (answers equal a "
                                   "local backend's; 3-13x the bytes)"),
    "server_timeout": (60.0, "openai: seconds an answer may take; later, the goal fails ERROR_BACKEND"),
    "server_api_key_env": ("", "openai: name of the environment variable holding the API key (never the key)"),
    "server_api_key_file": ("", "openai: file holding the API key (never the key itself)"),
    "fps": (0.0, "frames per second kept in the window (0: the model's trained window, else "
                 f"{DEFAULT_WINDOW['fps']})"),
    "window_seconds": (0.0, "seconds of frames a query sees by default and the window keeps (0: the "
                            f"model's trained window, else {DEFAULT_WINDOW['window_seconds']})"),
    "max_frames": (0, "frames a query sees at most by default and the window keeps (0: the model's "
                      f"trained window, else {DEFAULT_WINDOW['max_frames']})"),
    "max_side": (640, "frames are shrunk on ingest so their longer side is at most this (px)"),
    "jump_back_s": (1.0, "a stamp this much older than the newest resets the window (bag replay)"),
    "jump_ahead_s": (10.0, "a stamp this much newer than the newest is rejected, unless the next "
                           "frame confirms the jump (one bad stamp must not wipe the window)"),
    "max_image_pixels": (7680 * 4320, "camera images with more pixels (width x height, read from a "
                                      "compressed image's header) are refused before decoding"),
    "max_new_tokens": (512, "token budget of one answer (a 16-frame track of two objects needs ~400)"),
    "warmup": ("auto", "at configure, answer one query on blank frames (a full window) so the first "
                       "real one does not pay for compilation: auto (only backends that compile on "
                       "first use: torch on CUDA), always or never"),
    "queue_size": (2, "action goals that may wait while one runs (more: ERROR_BUSY); set at start"),
    "query": ("", "initial continuous query (as if published on ~/query)"),
    "query_task": ("point", "task of ~/query text without a 'task:' prefix: point, count, track, ask"),
    "query_period": (1.0, "seconds between re-runs of the continuous query"),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
    "tracking_enable": (True, "propagate answers' points to every camera frame on ~/tracked_objects"),
    "tracking_max_points": (50, "most objects propagated at once (highest model score first)"),
    "tracking_max_age": (15.0, "seconds after its anchor frame a propagated object is dropped"),
    "tracking_window": (12.0, "seconds of camera frames buffered for latency compensation"),
    "tracking_max_side": (640, "longer side of the image optical flow runs on (px; 0 = full size)"),
    "tracking_buffer_mb": (128.0, "memory bound of the tracking frame buffer (MiB)"),
    "depth_topic": ("", "depth image registered to the camera (16UC1 mm or 32FC1 m); empty: no depth, "
                        "no 3D positions"),
    "depth_compressed": (False, "subscribe to <depth_topic>/compressedDepth (sensor_msgs/CompressedImage)"),
    "camera_info_topic": ("", "sensor_msgs/CameraInfo of the camera; empty: camera_info beside image_topic"),
    "depth_tolerance": (0.05, "seconds a depth image's stamp may be from a point's frame's stamp"),
    "depth_patch": (5, "side of the window of depth pixels whose valid median is a point's depth (odd)"),
    "depth_min": (0.1, "depths below this (m) are invalid"),
    "depth_max": (20.0, "depths above this (m) are invalid"),
    "depth_buffer_mb": (128.0, "memory bound of the depth image buffer (MiB)"),
}
MAX_PERIOD_S = 3600.0
# A goal's float32 window_seconds may exceed the node's float64 one by rounding.
GOAL_WINDOW_SLACK_S = 1e-3


@dataclass
class Settings:
    """Validated parameters (see PARAMETERS)."""

    image_topic: str
    compressed: bool
    image_reliability: str
    image_depth: int
    model: str
    backend: str
    engine_dir: str
    force_engine_update: bool
    device: str
    dtype: str
    server_url: str
    server_kind: str
    server_encoding: str
    server_timeout: float
    server_api_key_env: str
    server_api_key_file: str
    fps: float
    window_seconds: float
    max_frames: int
    max_side: int
    jump_back_s: float
    jump_ahead_s: float
    max_image_pixels: int
    max_new_tokens: int
    warmup: str
    queue_size: int
    query: str
    query_task: str
    query_period: float
    diagnostics_period: float
    tracking_enable: bool
    tracking_max_points: int
    tracking_max_age: float
    tracking_window: float
    tracking_max_side: int
    tracking_buffer_mb: float
    depth_topic: str
    depth_compressed: bool
    camera_info_topic: str
    depth_tolerance: float
    depth_patch: int
    depth_min: float
    depth_max: float
    depth_buffer_mb: float


def parse_task(value) -> Task:
    """A Task from its name ("point") or Grounding.TASK_* number; ValueError otherwise."""
    if isinstance(value, int):
        if value not in TASK_FROM_MSG:
            raise ValueError(f"unknown task {value} (expected 0..3: point, count, track, ask)")
        return TASK_FROM_MSG[value]
    try:
        return Task(str(value).strip().lower())
    except ValueError:
        raise ValueError(f"unknown task {value!r} (expected point, count, track or ask)") from None


def check_goal_window(window_seconds: float, max_frames: int, settings: Settings) -> None:
    """ValueError unless a goal's window is one the node can serve: window_seconds a
    finite number of seconds up to the node's window_seconds (0 = all of it), max_frames
    up to the node's max_frames (0 = all of them)."""
    if not math.isfinite(window_seconds) or window_seconds < 0 \
            or window_seconds > settings.window_seconds + GOAL_WINDOW_SLACK_S:
        raise ValueError(f"window_seconds must be 0 (the whole window) or a number of seconds up to "
                         f"the node's window_seconds {settings.window_seconds:g}, got {window_seconds}")
    if max_frames > settings.max_frames:
        raise ValueError(f"max_frames must be 0 (the node's) or up to the node's max_frames "
                         f"{settings.max_frames}, got {max_frames}")


def validate(values: dict) -> Settings:
    """Settings from raw parameter values, or ValueError naming every bad parameter."""
    errors = []
    out = {}
    for name, (default, _) in PARAMETERS.items():
        if name == "autostart":
            continue
        value = values[name]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
            if ok and not math.isfinite(value):
                errors.append(f"{name} must be a finite number, got {value}")
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            errors.append(f"{name} must be a {type(default).__name__}, got {value!r}")
        out[name] = value
    if errors:
        raise ValueError("; ".join(errors))

    def check(cond, message):
        if not cond:
            errors.append(message)

    check(out["image_topic"].strip() != "", "image_topic must not be empty")
    check(out["image_reliability"] in ("best_effort", "reliable"),
          f"image_reliability must be best_effort or reliable, got {out['image_reliability']!r}")
    check(1 <= out["image_depth"] <= 1000, f"image_depth must be 1..1000, got {out['image_depth']}")
    check(out["backend"] in BACKEND_KINDS,
          f"backend must be one of {', '.join(BACKEND_KINDS)}, got {out['backend']!r}")
    check(out["server_kind"] in SERVER_KINDS,
          f"server_kind must be one of {', '.join(SERVER_KINDS)}, got {out['server_kind']!r}")
    check(out["server_encoding"] in ENCODINGS,
          f"server_encoding must be one of {', '.join(ENCODINGS)}, got {out['server_encoding']!r}")
    check(out["server_timeout"] > 0, f"server_timeout must be > 0 s, got {out['server_timeout']}")
    check(out["dtype"] in ("auto", "float32", "float16", "bfloat16"),
          f"dtype must be auto, float32, float16 or bfloat16, got {out['dtype']!r}")
    check(out["fps"] >= 0, f"fps must be > 0, or 0 for the model's window, got {out['fps']}")
    check(out["window_seconds"] >= 0,
          f"window_seconds must be > 0, or 0 for the model's window, got {out['window_seconds']}")
    check(out["max_frames"] >= 0, f"max_frames must be >= 1, or 0 for the model's window, got {out['max_frames']}")
    check(out["max_side"] >= 0, f"max_side must be >= 0 (0 = keep the source size), got {out['max_side']}")
    check(out["jump_back_s"] >= 0, f"jump_back_s must be >= 0, got {out['jump_back_s']}")
    check(out["jump_ahead_s"] > 0, f"jump_ahead_s must be > 0, got {out['jump_ahead_s']}")
    check(out["max_image_pixels"] >= 1, f"max_image_pixels must be >= 1, got {out['max_image_pixels']}")
    check(out["max_new_tokens"] >= 1, f"max_new_tokens must be >= 1, got {out['max_new_tokens']}")
    check(out["warmup"] in ("auto", "always", "never"),
          f"warmup must be auto, always or never, got {out['warmup']!r}")
    check(1 <= out["queue_size"] <= 16, f"queue_size must be 1..16, got {out['queue_size']}")
    for period in ("query_period", "diagnostics_period"):  # timers hold int64 nanoseconds
        check(0 < out[period] <= MAX_PERIOD_S, f"{period} must be in (0, {MAX_PERIOD_S:g}] s, got {out[period]}")
    check(out["tracking_max_points"] >= 1, f"tracking_max_points must be >= 1, got {out['tracking_max_points']}")
    check(out["tracking_max_age"] > 0, f"tracking_max_age must be > 0, got {out['tracking_max_age']}")
    check(out["tracking_window"] > 0, f"tracking_window must be > 0, got {out['tracking_window']}")
    check(out["tracking_max_side"] == 0 or out["tracking_max_side"] >= 2 * FLOW_WINDOW,
          f"tracking_max_side must be 0 (full size) or >= {2 * FLOW_WINDOW}, got {out['tracking_max_side']}")
    check(out["tracking_buffer_mb"] > 0, f"tracking_buffer_mb must be > 0, got {out['tracking_buffer_mb']}")
    check(out["depth_tolerance"] > 0, f"depth_tolerance must be > 0, got {out['depth_tolerance']}")
    check(out["depth_patch"] >= 1 and out["depth_patch"] % 2 == 1,
          f"depth_patch must be odd and >= 1, got {out['depth_patch']}")
    check(0 <= out["depth_min"] < out["depth_max"],
          f"need 0 <= depth_min < depth_max, got {out['depth_min']} and {out['depth_max']}")
    check(out["depth_buffer_mb"] > 0, f"depth_buffer_mb must be > 0, got {out['depth_buffer_mb']}")
    try:
        parse_task(out["query_task"])
    except ValueError as exc:
        errors.append(f"query_task: {exc}")
    if errors:
        raise ValueError("; ".join(errors))
    return Settings(**out)


def resolve_window(s: Settings, trained: TrainedWindow | None) -> tuple[Settings, str]:
    """`s` with fps, window_seconds and max_frames left at 0 taken from the model's trained
    window (when it states one), else DEFAULT_WINDOW; and where they came from."""
    auto = [name for name in DEFAULT_WINDOW if not getattr(s, name)]
    if not auto:
        return s, "parameters"
    base = DEFAULT_WINDOW if trained is None else {
        "fps": trained.fps, "window_seconds": trained.window_seconds, "max_frames": trained.max_frames}
    source = "built-in defaults" if trained is None else f"the model's trained window ({trained.describe()})"
    if len(auto) < len(DEFAULT_WINDOW):
        source = f"{', '.join(auto)} from {source}, the rest from parameters"
    return dataclasses.replace(s, **{name: base[name] for name in auto}), source
