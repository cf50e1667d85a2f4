"""The project's shared language: frames in, grounded points/tracks/counts out.

Every layer speaks these types: the node converts them to and from messages, the CLI
prints them, the engines' parity checks and the training metrics compare them.
Stamps are absolute nanoseconds (ROS time of the source frame); pixels are in the
original source image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

NS = 1_000_000_000  # nanoseconds per second: ROS stamps, and every stamp here, are integer ns


class Task(str, Enum):
    POINT = "point"
    COUNT = "count"
    TRACK = "track"
    ASK = "ask"


# The task codes of the Grounding message and the Ground action (TASK_POINT = 0, ...), in
# order: the node and the recording converter (which reads bags without rclpy) share them.
TASK_CODES = (Task.POINT, Task.COUNT, Task.TRACK, Task.ASK)

@dataclass(frozen=True)
class Frame:
    """One buffered camera frame.

    `image` is what the model will see (RGB uint8, HxWx3, possibly resized on ingest);
    `source_size` is the (width, height) of the original camera image, so answers can
    be mapped back to the camera's pixels.
    """

    image: np.ndarray
    stamp_ns: int
    source_size: tuple[int, int]
    frame_id: str = ""


@dataclass(frozen=True)
class GroundedPoint:
    stamp_ns: int
    x: float
    y: float
    object_id: int
    label: str
    score: float = math.nan
    # (x, y, z) in metres in the camera's optical frame, from a registered depth image
    # (molmo2_ros.core.depth); None when unknown.
    position: tuple[float, float, float] | None = None
    # The same place in the answer's `target_frame` (tf2 at this point's stamp,
    # molmo2_ros.core.rigid_transform); None without one or without its transform.
    target_position: tuple[float, float, float] | None = None


@dataclass
class Track:
    id: int
    label: str
    points: list[GroundedPoint] = field(default_factory=list)


@dataclass
class Timings:
    """Seconds spent per stage of one query."""

    queue_wait: float = 0.0
    preprocess: float = 0.0
    generation: float = 0.0
    parse: float = 0.0


@dataclass
class Grounding:
    """The answer to one query over a window of frames."""

    task: Task
    query: str
    points: list[GroundedPoint] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)
    count: int | None = None
    answer: str = ""
    warnings: list[str] = field(default_factory=list)
    frame_stamps_ns: list[int] = field(default_factory=list)
    frame_id: str = ""
    camera: str = ""            # the camera's name in the node's `cameras` ("" = its only camera)
    target_frame: str = ""      # the frame of the points' target_position ("" = none)
    model: str = ""
    backend: str = ""
    timings: Timings = field(default_factory=Timings)

    @property
    def stamp_ns(self) -> int:
        """Stamp of the newest frame the model saw (0 when it saw none)."""
        return max(self.frame_stamps_ns, default=0)
