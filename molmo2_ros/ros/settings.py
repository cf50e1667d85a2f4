"""Parameters of the molmo2_grounding node, one declaration each (`Param`): default, type
(the default's), range or choices, description, when a change applies and what it
rebuilds. The `Settings` fields, the validation at configure and on `ros2 param set`, the
live-change phases (live_params), the descriptors `ros2 param describe` shows, and the
checks of the README table and config/molmo2_grounding.yaml all follow from it."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Callable

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
MODELS_WINDOW = "the model's window"
# A goal's float32 window_seconds may exceed the node's float64 one by rounding.
GOAL_WINDOW_SLACK_S = 1e-3


class Applies(Enum):
    """When a changed value takes effect (a change after that moment is refused, saying how)."""

    START = "start"            # read once when the node starts
    CONFIGURE = "configure"    # the backend, the depth input
    ACTIVATE = "activate"      # the camera subscription
    LIVE = "live"              # at once, on the running node


class Rebuilds(Enum):
    """What a live change rebuilds in the configured node."""

    WINDOW = "window"                  # the frame window restarts empty
    TRACKING = "tracking"              # tracks restart at the next answer
    DIAGNOSTICS = "diagnostics"        # the diagnostics timer's period
    QUERY_PERIOD = "query_period"      # the continuous query's timer period
    QUERY = "query"                    # the continuous query itself
    DEPTH_BOUNDS = "depth_bounds"      # the depth input's copy of the bounds it shares with the camera


def number(x: float) -> str:
    """A bound as people write it: 3600, 0.001, 2147483647."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string",
              tuple: "a list of names, e.g. [front, wrist]"}


@dataclass(frozen=True)
class Param:
    """One parameter. Numbers must be finite and within lo..hi (closed), or exactly 0 where
    `zero` says what 0 means; strings within `choices` when given. Every bound keeps what
    the value feeds representable: integer nanoseconds, timer periods, buffer sizes."""

    default: bool | int | float | str | tuple
    description: str
    applies: Applies
    rebuilds: tuple[Rebuilds, ...] = ()                   # what a live change rebuilds (else read where used)
    lo: float | None = None
    hi: float | None = None
    unit: str = ""
    zero: str = ""                                      # 0 is allowed and means this
    choices: tuple[str, ...] = ()
    rule: tuple[Callable[[object], bool], str] | None = None   # another condition, and its wording

    @property
    def kind(self) -> type:
        return type(self.default)

    def constraint(self) -> str:
        """The allowed values in words: the README's range column and the refusal's text."""
        parts = [", ".join(self.choices[:-1]) + " or " + self.choices[-1]] if self.choices else []
        if self.lo is not None:
            parts.append(f"{number(self.lo)}..{number(self.hi)}" + (f" {self.unit}" if self.unit else ""))
        if self.rule is not None:
            parts.append(self.rule[1])
        return ", ".join(parts) + (f", or 0 for {self.zero}" if self.zero else "")

    def problem(self, name: str, value) -> str | None:
        """Why `value` is not allowed for this parameter, naming it; None if it is."""
        kind = self.kind
        if kind is tuple:   # a string array: rclpy gives a list, and None for a params file's []
            ok = value is None or isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        else:
            ok = (isinstance(value, (int, float)) if kind is float else isinstance(value, kind)) \
                and (kind is bool or not isinstance(value, bool))
        if not ok:
            return f"{name} must be {TYPE_NAMES[kind]}, got {value!r}"
        if kind is float and not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if self.zero and value == 0:
            return None
        allowed = (not self.choices or value in self.choices) \
            and (self.lo is None or self.lo <= value <= self.hi) \
            and (self.rule is None or self.rule[0](value))
        return None if allowed else f"{name} must be {self.constraint()}, got {value!r}"


START, CONFIGURE, ACTIVATE, LIVE = Applies.START, Applies.CONFIGURE, Applies.ACTIVATE, Applies.LIVE
WINDOW, TRACKING = (Rebuilds.WINDOW,), (Rebuilds.TRACKING,)
JUMPS = (Rebuilds.WINDOW, Rebuilds.DEPTH_BOUNDS)   # the colour window's and the depth buffer's stamp checks
NON_EMPTY = (lambda value: value.strip() != "", "not empty")
ODD = (lambda value: value % 2 == 1, "odd")
MAX_PERIOD_S = 3600.0
MAX_BUFFER_MB = 65536.0

PARAMETERS: dict[str, Param] = {
    "autostart": Param(True, "configure and activate on start", START),
    # Camera input
    "cameras": Param((), "names of the cameras sharing the model, each with its cameras.<name>.* parameters "
                     "(docs/node.md, several cameras); empty: one camera, from image_topic and the parameters "
                     "below", START),
    "image_topic": Param("/camera/image_raw", "camera topic (with compressed: the base topic, '/compressed' is "
                         "appended unless present)", ACTIVATE, rule=NON_EMPTY),
    "compressed": Param(False, "subscribe to sensor_msgs/CompressedImage instead of Image", ACTIVATE),
    "image_reliability": Param("best_effort", "camera QoS reliability", ACTIVATE,
                               choices=("best_effort", "reliable")),
    "image_depth": Param(5, "camera QoS history depth", ACTIVATE, lo=1, hi=1000),
    "camera_timeout": Param(0.0, "seconds without a message after which a camera counts as stopped: its "
                            "queries get ERROR_EMPTY_WINDOW naming it (not answers on its old frames), "
                            "/diagnostics warns", LIVE, lo=0.01, hi=MAX_PERIOD_S, unit="s", zero="never"),
    # Model
    "model": Param("", "checkpoint folder or hub id; empty: the packaged model, else the tiny random one",
                   CONFIGURE),
    "backend": Param("torch", "inference backend (openai: an inference server, see server_*)", CONFIGURE,
                     choices=BACKEND_KINDS),
    "engine_dir": Param("", "folder of exported engines (onnxruntime/tensorrt)", CONFIGURE),
    "force_engine_update": Param(False, "tensorrt: rebuild engines that do not match this machine from the "
                                 "folder's ONNX graphs (else they are refused)", CONFIGURE),
    "device": Param("", "torch device, e.g. cuda or cpu; empty: cuda when available", CONFIGURE),
    "dtype": Param("auto", "torch dtype", CONFIGURE, choices=("auto", "float32", "float16", "bfloat16")),
    # openai backend (docs/backends.md): `model` is the served model's name
    "server_url": Param("", "openai: the inference server's URL, e.g. http://gpu-host:8000 (/v1 is added)",
                        CONFIGURE),
    "server_kind": Param("vllm", "openai: vllm (video sent inline: any server) or transformers (`transformers "
                         "serve` on this machine: video sent as a file path)", CONFIGURE, choices=SERVER_KINDS),
    "server_encoding": Param("compact", "openai: video encoding, compact (H.264) or lossless (answers equal a "
                             "local backend's; 3-13x the bytes)", CONFIGURE, choices=ENCODINGS),
    "server_timeout": Param(60.0, "openai: seconds an answer may take; later, the goal fails ERROR_BACKEND",
                            CONFIGURE, lo=0.1, hi=MAX_PERIOD_S, unit="s"),
    "server_api_key_env": Param("", "openai: name of the environment variable holding the API key (never the "
                                "key)", CONFIGURE),
    "server_api_key_file": Param("", "openai: file holding the API key (never the key itself)", CONFIGURE),
    "warmup": Param("auto", "at configure, answer one query on blank frames (a full window) so the first real "
                    "one does not pay for compilation: auto (only backends that compile on first use: torch "
                    "on CUDA), always or never", CONFIGURE, choices=("auto", "always", "never")),
    # Frame window
    "fps": Param(0.0, f"frames per second kept in the window (0: the model's trained window, else "
                 f"{DEFAULT_WINDOW['fps']})", LIVE, WINDOW, lo=0.01, hi=120.0, zero=MODELS_WINDOW),
    "window_seconds": Param(0.0, "seconds of frames a query sees by default and the window keeps (0: the "
                            f"model's trained window, else {DEFAULT_WINDOW['window_seconds']})", LIVE, WINDOW,
                            lo=0.01, hi=MAX_PERIOD_S, unit="s", zero=MODELS_WINDOW),
    "max_frames": Param(0, "frames a query sees at most by default and the window keeps (0: the model's "
                        f"trained window, else {DEFAULT_WINDOW['max_frames']})", LIVE, WINDOW,
                        lo=1, hi=1024, zero=MODELS_WINDOW),
    "max_side": Param(640, "frames are shrunk on ingest so their longer side is at most this (px)", LIVE, WINDOW,
                      lo=32, hi=16384, zero="the source size"),
    "jump_back_s": Param(1.0, "a stamp this much older than the newest resets the window (bag replay); a depth "
                         "stamp this far back is held until the next confirms it",
                         LIVE, JUMPS, lo=0.0, hi=86400.0, unit="s"),
    "jump_ahead_s": Param(10.0, "a stamp this much newer than the newest is rejected, unless the next frame "
                          "confirms the jump (one bad stamp must not wipe the window); depth likewise", LIVE, JUMPS,
                          lo=0.001, hi=86400.0, unit="s"),
    "max_image_pixels": Param(7680 * 4320, "camera and depth images with more pixels (width x height, read "
                              "from a compressed image's header) are refused before decoding", LIVE,
                              (Rebuilds.DEPTH_BOUNDS,), lo=1, hi=2**31 - 1),
    # Queries
    "max_new_tokens": Param(512, "token budget of one answer (a 16-frame track of two objects needs ~400)",
                            LIVE, lo=1, hi=32768),
    "queue_size": Param(2, "action goals that may wait while one runs (more: ERROR_BUSY); set at start", START,
                        lo=1, hi=16),
    "query": Param("", "initial continuous query (as if published on ~/query)", LIVE, (Rebuilds.QUERY,)),
    "query_task": Param("point", "task of ~/query text without a 'task:' prefix", LIVE,
                        choices=("point", "count", "track", "ask")),
    "query_period": Param(1.0, "seconds between re-runs of the continuous query", LIVE, (Rebuilds.QUERY_PERIOD,),
                          lo=0.01, hi=MAX_PERIOD_S, unit="s"),
    "diagnostics_period": Param(1.0, "seconds between /diagnostics messages", LIVE, (Rebuilds.DIAGNOSTICS,),
                                lo=0.01, hi=MAX_PERIOD_S, unit="s"),
    # Camera-rate tracks between answers
    "tracking_enable": Param(True, "propagate answers' points to every camera frame on ~/tracked_objects",
                             LIVE, TRACKING),
    "tracking_max_points": Param(50, "most objects propagated at once (highest model score first)", LIVE,
                                 TRACKING, lo=1, hi=1000),
    "tracking_max_age": Param(15.0, "seconds after its anchor frame a propagated object is dropped", LIVE,
                              TRACKING, lo=0.01, hi=MAX_PERIOD_S, unit="s"),
    "tracking_window": Param(12.0, "seconds of camera frames buffered for latency compensation", LIVE,
                             TRACKING, lo=0.01, hi=MAX_PERIOD_S, unit="s"),
    "tracking_max_side": Param(640, "longer side of the image optical flow runs on (px)", LIVE, TRACKING,
                               lo=2 * FLOW_WINDOW, hi=16384, zero="full size"),
    "tracking_buffer_mb": Param(128.0, "memory bound of the tracking frame buffer (MiB)", LIVE, TRACKING,
                                lo=0.01, hi=MAX_BUFFER_MB),
    # Depth input
    "depth_topic": Param("", "depth image registered to the camera (16UC1 mm or 32FC1 m); empty: no depth, "
                         "no 3D positions", CONFIGURE),
    "depth_compressed": Param(False, "subscribe to <depth_topic>/compressedDepth (sensor_msgs/CompressedImage)",
                              CONFIGURE),
    "camera_info_topic": Param("", "sensor_msgs/CameraInfo of the camera; empty: camera_info beside image_topic",
                               CONFIGURE),
    "depth_tolerance": Param(0.05, "seconds a depth image's stamp may be from a point's frame's stamp",
                             CONFIGURE, lo=0.0001, hi=1.0, unit="s"),
    "depth_patch": Param(5, "side of the window of depth pixels whose valid median is a point's depth",
                         CONFIGURE, lo=1, hi=101, rule=ODD),
    "depth_min": Param(0.1, "depths below this (m) are invalid", CONFIGURE, lo=0.0, hi=1000.0, unit="m"),
    "depth_max": Param(20.0, "depths above this (m) are invalid", CONFIGURE, lo=0.001, hi=1000.0, unit="m"),
    "depth_buffer_mb": Param(128.0, "memory bound of the depth image buffer (MiB); one depth image larger "
                             "than it is refused before decoding", CONFIGURE,
                             lo=0.01, hi=MAX_BUFFER_MB),
    # The robot's frames (tf2) and TF output
    "target_frame": Param("", "frame every 3D position is also given in (e.g. base_link, odom, map), through "
                          "tf2 at the stamp of the frame the point lies in; empty: the camera's optical frame only",
                          CONFIGURE),
    "transform_tolerance": Param(0.1, "seconds a lookup waits for the transform at a frame's stamp to arrive; "
                                 "then the point keeps only its camera-frame position", CONFIGURE,
                                 lo=0.0, hi=10.0, unit="s"),
    "tracked_tf_frames": Param(False, "broadcast each camera-rate tracked object with a 3D position as the TF "
                               "frame <node>_<label>_<id>, child of the camera frame", CONFIGURE),
}
# The defaults as ROS holds them (a string array as a list).
DEFAULTS = {name: list(p.default) if p.kind is tuple else p.default for name, p in PARAMETERS.items()}
# What each camera of `cameras` sets for itself, as cameras.<name>.<field>: its topics (no
# default: each camera has its own) and its QoS and encodings (default: the node's value).
CAMERA_FIELDS = ("image_topic", "compressed", "image_reliability", "image_depth", "depth_topic",
                 "depth_compressed", "camera_info_topic")
CAMERA_TOPICS = ("image_topic", "depth_topic", "camera_info_topic")
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")   # one token of a ROS name: it names topics
# Conditions between parameters: (names, holds(values), wording).
CROSS_CHECKS = [
    (("depth_min", "depth_max"), lambda v: v["depth_min"] < v["depth_max"], "need depth_min < depth_max"),
]


def camera_key(camera: str, field: str) -> str:
    return f"cameras.{camera}.{field}"


def declaration(name: str) -> Param | None:
    """The Param of a parameter name: a PARAMETERS entry, or a camera's own
    cameras.<name>.<field> (its field's declaration; topics without a default)."""
    if name in PARAMETERS:
        return PARAMETERS[name]
    head, _, field = name.rpartition(".")
    if not head.startswith("cameras.") or field not in CAMERA_FIELDS:
        return None
    base = PARAMETERS[field]
    return dataclasses.replace(base, default="", rule=None) if field in CAMERA_TOPICS else base


def camera_names(cameras) -> list[str]:
    """The valid, distinct names of a `cameras` value, in order (none for a value that is
    not a list of strings): the cameras that get parameters and buffers."""
    if PARAMETERS["cameras"].problem("cameras", cameras):
        return []
    return [c for c in dict.fromkeys(cameras or ()) if CAMERA_NAME.fullmatch(c)]


def camera_defaults(cameras, values: dict) -> dict:
    """cameras.<name>.<field> -> the value it has unless set: "" for a topic, else the
    node's `values[field]`; for each of camera_names(cameras)."""
    return {camera_key(c, f): "" if f in CAMERA_TOPICS else values[f]
            for c in camera_names(cameras) for f in CAMERA_FIELDS}


def subscribed_topic(topic: str, compressed: bool) -> str:
    """The topic a camera subscribes to: with compressed, image_transport's `<topic>/compressed`."""
    if compressed and not topic.endswith("/compressed"):
        return topic.rstrip("/") + "/compressed"
    return topic


def camera_problems(values: dict) -> list[tuple[str, str]]:
    """Why `cameras` and the cameras' own parameters in `values` do not make a set of
    cameras, each with the camera it concerns: a name that is not a ROS name token, a name
    twice, a camera without an image topic, a bad value, two cameras on one image topic."""
    if PARAMETERS["cameras"].problem("cameras", values["cameras"]):
        return []   # said by the parameter's own check
    cameras = list(values["cameras"] or ())
    found = [(c, f"camera name {c!r} is not a valid ROS name (letters, digits and _, starting with a letter)")
             for c in cameras if not CAMERA_NAME.fullmatch(c)]
    found += [(c, f"camera {c!r} is listed {cameras.count(c)} times in cameras") for c in dict.fromkeys(cameras)
              if cameras.count(c) > 1]
    topics: dict[str, str] = {}
    for camera in camera_names(cameras):
        own = {f: values.get(camera_key(camera, f)) for f in CAMERA_FIELDS}
        if not own["image_topic"]:
            found.append((camera, f"camera {camera!r} has no image topic: set {camera_key(camera, 'image_topic')}"))
            continue
        found += [(camera, why) for f, v in own.items()
                  if (why := declaration(camera_key(camera, f)).problem(camera_key(camera, f), v))]
        topic = subscribed_topic(own["image_topic"], own["compressed"] is True)
        if topic in topics:
            found.append((camera, f"cameras {topics[topic]!r} and {camera!r} both subscribe to {topic}"))
        topics.setdefault(topic, camera)
    return found


Settings = dataclasses.make_dataclass(
    "Settings", [(name, p.kind) for name, p in PARAMETERS.items() if name != "autostart"],
    frozen=True)
Settings.__doc__ = "The node's validated parameters: one field per PARAMETERS entry (autostart aside)."


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


def problems(values: dict, changed: set[str] | None = None) -> list[str]:
    """Every reason the raw parameter `values` (name -> value, all of PARAMETERS) are not
    valid, each naming its parameter: each value against its declaration, then the
    conditions between parameters whose values are each valid. With `changed`, only
    what concerns those parameters (a live change is not refused for another's value)."""
    concerned = set(PARAMETERS) if changed is None else changed
    found = {name: why for name, p in PARAMETERS.items()
             if name in concerned and (why := p.problem(name, values[name]))}
    found.update((name, why) for name in concerned - set(PARAMETERS)
                 if (why := declaration(name).problem(name, values[name])))
    cross = [f"{wording}, got " + " and ".join(f"{n} {values[n]!r}" for n in names)
             for names, holds, wording in CROSS_CHECKS
             if concerned & set(names) and all(PARAMETERS[n].problem(n, values[n]) is None for n in names)
             and not holds(values)]
    cameras = [why for camera, why in camera_problems(values)
               if changed is None or any(name.startswith(f"cameras.{camera}.") for name in changed)]
    return [*found.values(), *cross, *(why for why in cameras if why not in found.values())]


def validate(values: dict) -> Settings:
    """Settings from raw parameter values, or ValueError naming every bad parameter.

    The node declares its parameters with dynamic typing: rclpy's static typing would
    refuse an integer for a double (`-p fps:=2`, `ros2 param set ... fps 2`, what users
    type), so the types are checked here, with messages that name the parameter."""
    errors = problems(values)
    if errors:
        raise ValueError("; ".join(errors))
    kinds = {float: float, tuple: lambda v: tuple(v or ())}
    return Settings(**{field.name: kinds.get(field.type, lambda v: v)(values[field.name])
                       for field in dataclasses.fields(Settings)})


def camera_settings(settings: Settings, values: dict) -> dict[str, Settings]:
    """Each camera's settings: the node's, with its own cameras.<name>.* values; without
    `cameras`, the one camera "" with the node's settings."""
    if not settings.cameras:
        return {"": settings}
    return {camera: dataclasses.replace(settings, **{f: values[camera_key(camera, f)] for f in CAMERA_FIELDS})
            for camera in settings.cameras}


def resolve_window(settings: Settings, trained: TrainedWindow | None) -> tuple[Settings, str]:
    """`settings` with fps, window_seconds and max_frames left at 0 taken from the model's trained
    window (when it states one), else DEFAULT_WINDOW; and where they came from."""
    auto = [name for name in DEFAULT_WINDOW if not getattr(settings, name)]
    if not auto:
        return settings, "parameters"
    base = DEFAULT_WINDOW if trained is None else {
        "fps": trained.fps, "window_seconds": trained.window_seconds, "max_frames": trained.max_frames}
    source = "built-in defaults" if trained is None else f"the model's trained window ({trained.describe()})"
    if len(auto) < len(DEFAULT_WINDOW):
        source = f"{', '.join(auto)} from {source}, the rest from parameters"
    return dataclasses.replace(settings, **{name: base[name] for name in auto}), source
