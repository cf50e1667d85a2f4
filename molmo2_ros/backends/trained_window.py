"""The frame window a model folder says it was trained for.

`molmo2-train` writes `molmo2_ros_window.json` into every checkpoint it saves (and
`molmo2-engines export` copies it into the engine folder): the sampling rate and the most
frames per video the model saw. The node and `molmo2-ros infer` use it where the user set
no window of their own, so a model is asked over windows like the ones it learned;
real Molmo2 checkpoints state nothing and get the built-in defaults.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

WINDOW_FILE = "molmo2_ros_window.json"


@dataclass(frozen=True)
class TrainedWindow:
    fps: float          # frames per second of the training clips (by stamp)
    max_frames: int     # most frames in one training video

    @property
    def window_seconds(self) -> float:
        return self.max_frames / self.fps

    def describe(self) -> str:
        return f"{self.max_frames} frames at {self.fps:g} fps ({self.window_seconds:g} s)"


def read_trained_window(folder: str | Path) -> TrainedWindow | None:
    """The window stated in `folder` (a checkpoint or engine folder), or None when the
    folder states none (a hub id, a real Molmo2 checkpoint). A malformed file is an error."""
    path = Path(folder) / WINDOW_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        fps, max_frames = float(data["fps"]), data["max_frames"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable trained window ({type(exc).__name__}: {exc}); "
                         f"expected {{\"fps\": 2.0, \"max_frames\": 16}}") from exc
    if not (math.isfinite(fps) and fps > 0) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"{path}: fps must be a positive number and max_frames an integer >= 1, got {data}")
    return TrainedWindow(fps, max_frames)


def write_trained_window(folder: str | Path, window: TrainedWindow) -> None:
    path = Path(folder) / WINDOW_FILE
    path.write_text(json.dumps({"fps": window.fps, "max_frames": window.max_frames}, indent=2) + "\n")
