"""Draw groundings (points with ids/labels, tracks) on frames; write PNG or MP4.

Used by `molmo2-ros infer --annotate` and by the node's debug image. Points are in the
source image's pixels (Grounding convention); they are scaled to the frame's image when
that was resized on ingest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from molmo2_ros.core.grounding import Frame, GroundedPoint, Grounding

# Distinct RGB colours, chosen by object id.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def color_for(object_id: int) -> tuple[int, int, int]:
    return PALETTE[object_id % len(PALETTE)]


def _label(image: np.ndarray, text: str, org: tuple[int, int], color, scale: float) -> None:
    thickness = max(1, round(scale * 2))
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def annotate_frame(frame: Frame, grounding: Grounding, *, header: bool = True) -> np.ndarray:
    """A copy of `frame.image` (RGB) with the grounding's points at this frame's stamp,
    each track's path up to this frame, and a header line (task, query, count)."""
    image = np.ascontiguousarray(frame.image.copy())
    height, width = image.shape[:2]
    sx, sy = width / frame.source_size[0], height / frame.source_size[1]
    scale = max(0.35, min(width, height) / 600)
    radius = max(3, round(min(width, height) / 80))

    def px(p: GroundedPoint) -> tuple[int, int]:
        return round(p.x * sx), round(p.y * sy)

    for track in grounding.tracks:
        path = [px(p) for p in track.points if p.stamp_ns <= frame.stamp_ns]
        if len(path) > 1:
            cv2.polylines(image, [np.array(path, np.int32)], False, color_for(track.id), max(1, radius // 2),
                          cv2.LINE_AA)
    for p in grounding.points:
        if p.stamp_ns != frame.stamp_ns:
            continue
        x, y = px(p)
        color = color_for(p.object_id)
        cv2.circle(image, (x, y), radius, color, -1, cv2.LINE_AA)
        cv2.circle(image, (x, y), radius, (0, 0, 0), 1, cv2.LINE_AA)
        _label(image, f"{p.object_id} {p.label}".strip(), (x + radius + 2, y - radius), color, scale)
    if header:
        text = f"{grounding.task.value}: {grounding.query}"
        if grounding.count is not None:
            text += f"  count={grounding.count}"
        _label(image, text, (4, round(22 * scale) + 4), (255, 255, 255), scale)
    return image


def contact_sheet(images: Sequence[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tile images (resized to the first one's size) into one RGB image."""
    if not images:
        raise ValueError("no images for a contact sheet")
    height, width = images[0].shape[:2]
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = np.zeros((rows * height, columns * width, 3), np.uint8)
    for i, image in enumerate(images):
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, columns)
        sheet[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
    return sheet


def write_png(path, image: np.ndarray) -> Path:
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return path


def write_mp4(path, images: Sequence[np.ndarray], fps: float) -> Path:
    """H.264 MP4 (even frame size, yuv420p) with PyAV."""
    import av
    from fractions import Fraction

    if not images:
        raise ValueError("no frames to write")
    height, width = images[0].shape[:2]
    height, width = height - height % 2, width - width % 2
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in images:
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_annotation(path, frames: Sequence[Frame], grounding: Grounding) -> Path:
    """Annotate `frames` and write them: `.png` (one frame, or a contact sheet of all) or `.mp4`."""
    path = Path(path)
    images = [annotate_frame(f, grounding) for f in frames]
    suffix = path.suffix.lower()
    if suffix == ".png":
        return write_png(path, images[0] if len(images) == 1 else contact_sheet(images))
    if suffix == ".mp4":
        spacing = np.diff([f.stamp_ns for f in frames])
        fps = 1e9 / float(np.median(spacing)) if len(spacing) else 1.0
        return write_mp4(path, images, fps)
    raise ValueError(f"annotation output must end in .png or .mp4, got {path.name!r}")
