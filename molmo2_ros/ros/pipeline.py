"""What the node's parts share: the validated settings, the loaded backend and the
camera's buffers (frame window, track propagator, depth input) and tf2 (robot frames).

Only the node writes it, as it configures, applies live parameter changes, deactivates
and cleans up; the parts (ingest, serving, outputs) read it when they need it and are
given everything else they use through their constructors. A part therefore never holds
the node or another part: its signature says what it reads and calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from molmo2_ros.core.frame_window import FrameWindow
from molmo2_ros.core.propagation import TrackPropagator
from molmo2_ros.ros.settings import Settings

if TYPE_CHECKING:  # the depth input is an rclpy part, and the backends load torch
    from molmo2_ros.core.backend import Backend
    from molmo2_ros.ros.depth_input import DepthInput
    from molmo2_ros.ros.robot_frames import RobotFrames


@dataclass
class Pipeline:
    settings: Settings | None = None          # configured: with the window resolved against the model's
    window_source: str = ""                   # where fps, window_seconds and max_frames came from
    backend: Backend | None = None            # loaded at configure and activate, freed at deactivate
    window: FrameWindow | None = None         # rebuilt when a window parameter changes
    propagator: TrackPropagator | None = None  # rebuilt when a tracking parameter changes
    depth: DepthInput | None = None           # with depth_topic
    robot_frames: RobotFrames | None = None   # with target_frame (and depth_topic)
    active: bool = False

    @property
    def state(self) -> str:
        """The lifecycle state as far as parameters care: unconfigured, inactive or active."""
        return "active" if self.active else "inactive" if self.window is not None else "unconfigured"
