"""Draw groundings (points with ids/labels, tracks) on frames; write PNG or MP4.

Used by `molmo2-ros infer --annotate` and by the node's debug image. Points are in the
source image's pixels (Grounding convention); they are scaled to the frame's image when
that was resized on ingest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from molmo2_ros.core.grounding import Frame, GroundedPoint, Grounding

# Distinct RGB colours, chosen by object id.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_TEXT_PX = 9          # the smallest Hershey text that still reads (cap height, pixels)
HEADER_COLOR = (32, 32, 32)

Box = tuple[int, int, int, int]   # x0, y0, x1, y1 in the image's pixels, x1/y1 exclusive


def color_for(object_id: int) -> tuple[int, int, int]:
    return PALETTE[object_id % len(PALETTE)]


@dataclass(frozen=True)
class Label:
    """Text on a filled box. Labels are laid out before anything is drawn, so that each
    lies inside its image and none covers another (text drawn where it lands is unreadable
    as soon as two points are close, or a header runs past the tile)."""

    text: str
    box: Box
    background: tuple[int, int, int]


@dataclass(frozen=True)
class _Font:
    scale: float
    thickness: int
    pad: int

    @classmethod
    def for_image(cls, size: tuple[int, int]) -> _Font:
        """Text about 1/20 of the image's shorter side high, never under MIN_TEXT_PX."""
        text_px = max(MIN_TEXT_PX, round(min(size) / 20))
        cap_px = cv2.getTextSize("0", FONT, 1.0, 1)[0][1]
        return cls(text_px / cap_px, max(1, round(text_px / 14)), max(2, text_px // 5))

    def box_size(self, text: str) -> tuple[int, int]:
        (w, h), baseline = cv2.getTextSize(text, FONT, self.scale, self.thickness)
        return w + 2 * self.pad, h + baseline + 2 * self.pad


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _fit(text: str, font: _Font, width: int) -> str | None:
    """`text`, or its longest start + "..." whose box fits `width` (None if none does)."""
    if font.box_size(text)[0] <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        cut = text[:end].rstrip() + "..."
        if font.box_size(cut)[0] <= width:
            return cut
    return None


def _point_text(p: GroundedPoint, query: str) -> str:
    """The object id; its label too where it says more than the query (in the header)."""
    label = p.label.strip()
    return f"{p.object_id} {label}" if label and label.lower() != query.strip().lower() else str(p.object_id)


def marker_radius(size: tuple[int, int]) -> int:
    return max(3, round(min(size) / 60))


def layout_labels(size: tuple[int, int], grounding: Grounding, points: Sequence[tuple[GroundedPoint, int, int]],
                  header: bool = True) -> list[Label]:
    """The labels of one image of `size` (width, height): the header (task, query, count)
    at the top left, then each point's label beside its marker (`points`: the point and
    its pixel). Every label lies inside the image and none overlaps another; a point's label
    also avoids the markers where it can, and is left out (the marker stays) where no place
    beside its point is free."""
    width, height = size
    font = _Font.for_image(size)
    radius = marker_radius(size)
    labels: list[Label] = []
    if header:
        text = f"{grounding.camera + ': ' if grounding.camera else ''}{grounding.task.value}: {grounding.query}"
        if grounding.count is not None:
            text += f"  count={grounding.count}"
        text = _fit(text, font, width)
        if text is not None:
            w, h = font.box_size(text)
            if h <= height:
                labels.append(Label(text, (0, 0, w, h), HEADER_COLOR))
    markers = [(x - radius - 1, y - radius - 1, x + radius + 2, y + radius + 2) for _, x, y in points]
    for (p, x, y), own in zip(points, markers):
        text = _fit(_point_text(p, grounding.query), font, width)
        w, h = font.box_size(text or "")
        if text is None or h > height:
            continue
        box = _free_place(x, y, radius + 2, w, h, size, [lb.box for lb in labels], markers, own)
        if box is not None:
            labels.append(Label(text, box, color_for(p.object_id)))
    return labels


def _free_place(x: int, y: int, gap: int, w: int, h: int, size: tuple[int, int], taken: list[Box],
                markers: list[Box], own: Box) -> Box | None:
    """A w x h box beside (x, y) inside the image: right, left, above, below, then the
    diagonals; first one clear of every marker, else one clear of the point's own."""
    candidates = [(x + gap, y - h // 2), (x - gap - w, y - h // 2), (x - w // 2, y - gap - h), (x - w // 2, y + gap),
                  (x + gap, y - gap - h), (x - gap - w, y - gap - h), (x + gap, y + gap), (x - gap - w, y + gap)]
    boxes = []
    for x0, y0 in candidates:
        x0, y0 = min(max(0, x0), size[0] - w), min(max(0, y0), size[1] - h)   # kept inside the image
        boxes.append((x0, y0, x0 + w, y0 + h))
    for avoid in (markers, [own]):
        for box in boxes:
            if not any(_overlaps(box, other) for other in taken + avoid):
                return box
    return None


def _draw_label(image: np.ndarray, label: Label, font: _Font) -> None:
    x0, y0, x1, y1 = label.box
    bg = label.background
    ink = (0, 0, 0) if 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] > 140 else (255, 255, 255)
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), bg, -1)
    (_, text_h), _ = cv2.getTextSize(label.text, FONT, font.scale, font.thickness)
    cv2.putText(image, label.text, (x0 + font.pad, y0 + font.pad + text_h), FONT, font.scale, ink, font.thickness,
                cv2.LINE_AA)


def annotate_frame(frame: Frame, grounding: Grounding, *, header: bool = True) -> np.ndarray:
    """A copy of `frame.image` (RGB) with the grounding's points at this frame's stamp,
    each track's path up to this frame, and their labels (see `layout_labels`)."""
    image = np.ascontiguousarray(frame.image.copy())
    height, width = image.shape[:2]
    size = (width, height)
    sx, sy = width / frame.source_size[0], height / frame.source_size[1]
    radius = marker_radius(size)

    def px(p: GroundedPoint) -> tuple[int, int]:
        return round(p.x * sx), round(p.y * sy)

    for track in grounding.tracks:
        path = [px(p) for p in track.points if p.stamp_ns <= frame.stamp_ns]
        if len(path) > 1:
            cv2.polylines(image, [np.array(path, np.int32)], False, color_for(track.id), max(1, radius // 2),
                          cv2.LINE_AA)
    here = [(p, *px(p)) for p in grounding.points if p.stamp_ns == frame.stamp_ns]
    for p, x, y in here:
        cv2.circle(image, (x, y), radius, color_for(p.object_id), -1, cv2.LINE_AA)
        cv2.circle(image, (x, y), radius, (0, 0, 0), 1, cv2.LINE_AA)
    font = _Font.for_image(size)
    for label in layout_labels(size, grounding, here, header):
        _draw_label(image, label, font)
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
