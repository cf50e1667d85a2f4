"""Read video files and images into core Frames (RGB uint8, stamps in nanoseconds).

Video frames are sampled by presentation time at `fps` (Molmo2's default is 2 fps);
when that yields more than `max_frames`, frames are spread evenly over the whole clip
(as Molmo2's own sampler lowers the rate for long videos). Stamps are the frames' own
presentation times (plus `t0_ns`), never re-spaced.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from molmo2_ros.core.frame_window import fit_to_max_side
from molmo2_ros.core.grounding import NS, Frame

DEFAULT_FPS = 2.0


def _thin(items: list, max_frames: int | None) -> list:
    if max_frames is None or len(items) <= max_frames:
        return items
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    picks = np.linspace(0, len(items) - 1, max_frames).round().astype(int)
    return [items[i] for i in picks]


def read_video(path, *, fps: float = DEFAULT_FPS, max_frames: int | None = None, max_side: int = 0,
               t0_ns: int = 0, frame_id: str = "") -> list[Frame]:
    """Decode `path` and return frames sampled at `fps` (at most `max_frames`).

    `max_side` > 0 shrinks the images the model will see (source_size keeps the original);
    `t0_ns` is added to every stamp (e.g. the wall time the clip started).
    """
    import av

    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    sampled: list[tuple[int, np.ndarray]] = []
    period_ns = NS / fps
    next_ns = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                pts_ns = int(round(float(frame.pts * frame.time_base) * NS))
                if next_ns is None:
                    next_ns = pts_ns
                if pts_ns + 1_000 < next_ns:  # 1 us slack for rounded timestamps
                    continue
                sampled.append((pts_ns, frame.to_ndarray(format="rgb24")))
                # next sample time strictly after this frame (skips gaps longer than a period)
                next_ns += period_ns * max(1, int((pts_ns - next_ns) // period_ns) + 1)
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode video {path}: {exc}") from exc
    if not sampled:
        raise ValueError(f"no decodable frames in {path}")
    return [
        Frame(image=fit_to_max_side(image, max_side), stamp_ns=t0_ns + pts_ns,
              source_size=(image.shape[1], image.shape[0]), frame_id=frame_id)
        for pts_ns, image in _thin(sampled, max_frames)
    ]


def read_image(path) -> np.ndarray:
    """An image file as RGB uint8 HxWx3."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_images(paths: Sequence, *, fps: float = DEFAULT_FPS, max_side: int = 0, t0_ns: int = 0,
                frame_id: str = "") -> list[Frame]:
    """Images as consecutive frames `1/fps` seconds apart (one image: an image query)."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not paths:
        raise ValueError("no image paths given")
    frames = []
    for i, p in enumerate(paths):
        image = read_image(p)
        frames.append(Frame(image=fit_to_max_side(image, max_side), stamp_ns=t0_ns + round(i * NS / fps),
                            source_size=(image.shape[1], image.shape[0]), frame_id=frame_id))
    return frames
