"""Parameters of the molmo2_grounding node: the declaration table (name, default,
meaning; the README's table and config/molmo2_grounding.yaml mirror it, a test checks),
and their validation at configure into `Settings`, naming every bad value at once."""
from __future__ import annotations

from dataclasses import dataclass

from molmo2_ros.backends.factory import BACKEND_KINDS
from molmo2_ros.core.grounding import Task
from molmo2_ros.core.optical_flow import WINDOW as FLOW_WINDOW
from molmo2_ros.ros.messages import TASK_FROM_MSG

# name: (default, meaning). Types follow the defaults (an int is accepted for a double).
PARAMETERS = {
    "autostart": (True, "configure and activate on start"),
    "image_topic": ("/camera/image_raw", "camera topic (with compressed: the base topic, "
                                         "'/compressed' is appended unless present)"),
    "compressed": (False, "subscribe to sensor_msgs/CompressedImage instead of Image"),
    "image_reliability": ("best_effort", "camera QoS reliability: best_effort or reliable"),
    "image_depth": (5, "camera QoS history depth"),
    "model": ("", "checkpoint folder or hub id; empty: the packaged model, else the tiny random one"),
    "backend": ("torch", "torch, onnxruntime or tensorrt"),
    "engine_dir": ("", "folder of exported engines (onnxruntime/tensorrt)"),
    "force_engine_update": (False, "tensorrt: rebuild engines that do not match this machine "
                                   "from the folder's ONNX graphs (else they are refused)"),
    "device": ("", "torch device, e.g. cuda or cpu; empty: cuda when available"),
    "dtype": ("auto", "torch dtype: auto, float32, float16 or bfloat16"),
    "fps": (2.0, "frames per second kept in the window (the model's sampling rate)"),
    "window_seconds": (8.0, "seconds of frames a query sees by default (and the window keeps)"),
    "max_frames": (16, "frames a query sees at most by default (and the window keeps)"),
    "max_side": (640, "frames are shrunk on ingest so their longer side is at most this (px)"),
    "jump_back_s": (1.0, "a stamp this much older than the newest resets the window (bag replay)"),
    "max_new_tokens": (256, "token budget of one answer"),
    "warmup": ("auto", "at configure, answer one query on blank frames (a full window) so the first "
                       "real one does not pay for compilation: auto (only backends that compile on "
                       "first use: torch on CUDA), always or never"),
    "queue_size": (2, "action goals that may wait while one runs (more: ERROR_BUSY)"),
    "query": ("", "initial continuous query (as if published on ~/query)"),
    "query_task": ("point", "task of ~/query text without a 'task:' prefix: point, count, track, ask"),
    "query_period": (1.0, "seconds between re-runs of the continuous query"),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
    "tracking_enable": (True, "propagate answers' points to every camera frame on ~/tracked_objects"),
    "tracking_max_points": (50, "most objects propagated at once (highest model score first)"),
    "tracking_max_age": (10.0, "seconds after its anchor frame a propagated object is dropped"),
    "tracking_window": (5.0, "seconds of camera frames buffered for latency compensation"),
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
READ_ONLY = {"queue_size"}  # sizes the executor's thread pool at start


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
    fps: float
    window_seconds: float
    max_frames: int
    max_side: int
    jump_back_s: float
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
    check(out["image_depth"] >= 1, f"image_depth must be >= 1, got {out['image_depth']}")
    check(out["backend"] in BACKEND_KINDS,
          f"backend must be one of {', '.join(BACKEND_KINDS)}, got {out['backend']!r}")
    check(out["dtype"] in ("auto", "float32", "float16", "bfloat16"),
          f"dtype must be auto, float32, float16 or bfloat16, got {out['dtype']!r}")
    check(out["fps"] > 0, f"fps must be > 0, got {out['fps']}")
    check(out["window_seconds"] > 0, f"window_seconds must be > 0, got {out['window_seconds']}")
    check(out["max_frames"] >= 1, f"max_frames must be >= 1, got {out['max_frames']}")
    check(out["max_side"] >= 0, f"max_side must be >= 0 (0 = keep the source size), got {out['max_side']}")
    check(out["jump_back_s"] >= 0, f"jump_back_s must be >= 0, got {out['jump_back_s']}")
    check(out["max_new_tokens"] >= 1, f"max_new_tokens must be >= 1, got {out['max_new_tokens']}")
    check(out["warmup"] in ("auto", "always", "never"),
          f"warmup must be auto, always or never, got {out['warmup']!r}")
    check(1 <= out["queue_size"] <= 16, f"queue_size must be 1..16, got {out['queue_size']}")
    check(out["query_period"] > 0, f"query_period must be > 0, got {out['query_period']}")
    check(out["diagnostics_period"] > 0, f"diagnostics_period must be > 0, got {out['diagnostics_period']}")
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
