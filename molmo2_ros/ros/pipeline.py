"""What the node's parts share: the validated settings, the loaded backend, each camera's
buffers (frame window, track propagator, depth input) and tf2 (robot frames).

Only the node writes it, as it configures, applies live parameter changes, deactivates
and cleans up; the parts (ingest, serving, outputs) read it when they need it and are
given everything else they use through their constructors. A part therefore never holds
the node or another part: its signature says what it reads and calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from molmo2_ros.core.frame_window import FrameWindow
from molmo2_ros.core.propagation import TrackPropagator
from molmo2_ros.ros.settings import Settings

if TYPE_CHECKING:  # the depth input is an rclpy part, and the backends load torch
    from molmo2_ros.core.backend import Backend
    from molmo2_ros.ros.depth_input import DepthInput
    from molmo2_ros.ros.robot_frames import RobotFrames


@dataclass
class Camera:
    """One camera's buffers. Every camera has its own, so one camera's frames, bad or
    many, never touch another's window or tracks."""

    name: str                                 # its name in `cameras`; "" for the node's only camera
    settings: Settings                        # the node's, with this camera's own cameras.<name>.* values
    window: FrameWindow                       # rebuilt when a window parameter changes
    propagator: TrackPropagator               # rebuilt when a tracking parameter changes
    depth: DepthInput | None = None           # with its depth_topic

    @property
    def label(self) -> str:
        """How messages and logs name it: "camera 'front'", or "the camera"."""
        return f"camera {self.name!r}" if self.name else "the camera"

    def topic(self, leaf: str) -> str:
        """Its own output topic under the node: ~/<name>/<leaf>, or ~/<leaf> for the only camera."""
        return f"~/{self.name}/{leaf}" if self.name else f"~/{leaf}"


@dataclass
class Pipeline:
    settings: Settings | None = None          # configured: with the window resolved against the model's
    window_source: str = ""                   # where fps, window_seconds and max_frames came from
    backend: Backend | None = None            # loaded at configure and activate, freed at deactivate
    cameras: dict[str, Camera] = field(default_factory=dict)   # in `cameras` order; made at configure
    robot_frames: RobotFrames | None = None   # with target_frame (and depth_topic)
    active: bool = False

    @property
    def state(self) -> str:
        """The lifecycle state as far as parameters care: unconfigured, inactive or active."""
        return "active" if self.active else "inactive" if self.cameras else "unconfigured"

    @property
    def first(self) -> Camera | None:
        """The camera a query without a camera asks."""
        return next(iter(self.cameras.values()), None)
