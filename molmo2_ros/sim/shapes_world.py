"""A synthetic world of moving coloured shapes with exact annotations.

Used to train and evaluate a tiny Molmo2 where the right answer is known, and as a video
with known motion for tests (camera-rate tracking, the node end to end).

    clip = make_clip(seed=3, n_frames=8, fps=2.0, size=(160, 120), n_objects=3)
    clip.frames[i]          # HxWx3 uint8 RGB
    clip.stamps_ns[i]       # absolute int nanoseconds (start_ns + i / fps)
    clip.objects[i]         # list[ObjectState], one per object (visible or not)
    clip.hit(i, object_id, x, y)   # is pixel (x, y) on the object's visible part?

Everything is a pure function of the seed and the arguments. Shapes move in straight
lines at constant speed and bounce off the image borders; objects drawn later (higher
`z`) occlude earlier ones, and optional grey occluder bars cover everything. An object's
centre is the centre of its full (unoccluded) shape and always lies inside that shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
BACKGROUND = (200, 200, 200)
OCCLUDER_COLOR = (90, 90, 90)
# An object counts as visible in a frame when at least this fraction of its area shows.
VISIBLE_FRACTION = 0.3


def plural(label: str) -> str:
    """'red circle' -> 'red circles' (all shape nouns take a plain -s)."""
    return label + "s"


@dataclass(frozen=True)
class ObjectState:
    """One object in one frame. Pixels are in the clip's image coordinates."""

    object_id: int          # 1-based, stable over the clip
    shape: str              # "circle" | "square" | "triangle"
    color: str              # key of COLORS
    cx: float               # centre of the full shape (inside the shape)
    cy: float
    size: float             # circumradius: half the square's side, the circle's radius
    z: int                  # drawing order: higher draws on top
    visible_fraction: float  # visible area / full area, after occlusion and clipping
    bbox: tuple[int, int, int, int] | None  # visible pixels (x0, y0, x1, y1), inclusive

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def visible(self) -> bool:
        return self.visible_fraction >= VISIBLE_FRACTION


@dataclass
class Clip:
    frames: list[np.ndarray]
    stamps_ns: list[int]
    objects: list[list[ObjectState]]
    size: tuple[int, int]   # (width, height)
    fps: float
    occluders: list[tuple[int, int, int, int]] = field(default_factory=list)  # x0,y0,x1,y1

    @property
    def labels(self) -> list[str]:
        """Distinct object labels in the clip, in object-id order."""
        return list(dict.fromkeys(o.label for o in self.objects[0]))

    def state(self, frame_index: int, object_id: int) -> ObjectState:
        for o in self.objects[frame_index]:
            if o.object_id == object_id:
                return o
        raise KeyError(f"no object {object_id} in the clip")

    def mask(self, frame_index: int, object_id: int) -> np.ndarray:
        """Boolean HxW mask of the object's visible pixels in that frame."""
        w, h = self.size
        ys, xs = np.mgrid[0:h, 0:w]
        return self._visible(frame_index, object_id, xs + 0.5, ys + 0.5)

    def hit(self, frame_index: int, object_id: int, x: float, y: float) -> bool:
        """True when pixel (x, y) (continuous coordinates) shows the object."""
        w, h = self.size
        if not (0 <= x < w and 0 <= y < h):
            return False
        px, py = np.floor([x, y]) + 0.5
        return bool(self._visible(frame_index, object_id, np.array(px), np.array(py)))

    def _visible(self, i: int, object_id: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        me = self.state(i, object_id)
        inside = _inside(me.shape, me.cx, me.cy, me.size, xs, ys)
        for o in self.objects[i]:
            if o.z > me.z:
                inside &= ~_inside(o.shape, o.cx, o.cy, o.size, xs, ys)
        for x0, y0, x1, y1 in self.occluders:
            inside &= ~((xs >= x0) & (xs <= x1 + 1) & (ys >= y0) & (ys <= y1 + 1))
        return inside

    def visible_points(self, label: str | None = None) -> list[list[ObjectState]]:
        """Per frame, the visible objects (optionally only those with `label`)."""
        return [[o for o in objs if o.visible and (label is None or o.label == label)]
                for objs in self.objects]


def _inside(shape: str, cx: float, cy: float, r: float, xs: np.ndarray, ys: np.ndarray
            ) -> np.ndarray:
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        # Equilateral, apex up, inscribed in the circle of radius r around the centre.
        half = r * np.sqrt(3) / 2
        base = cy + r / 2
        apex = cy - r
        t = (ys - apex) / (base - apex)  # 0 at the apex, 1 at the base
        return (ys >= apex) & (ys <= base) & (np.abs(dx) <= half * t)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def make_clip(
    seed: int,
    n_frames: int = 8,
    fps: float = 2.0,
    size: tuple[int, int] = (160, 120),
    n_objects: int = 2,
    *,
    objects: list[tuple[str, str]] | None = None,
    size_range: tuple[float, float] = (0.08, 0.16),
    speed_range: tuple[float, float] = (0.0, 0.15),
    n_occluders: int = 0,
    start_ns: int = 0,
    background: tuple[int, int, int] = BACKGROUND,
) -> Clip:
    """Render a clip.

    objects:     explicit (color, shape) pairs; otherwise `n_objects` random ones.
    size_range:  object circumradius as a fraction of min(width, height).
    speed_range: speed in image-diagonals per second (direction uniform at random).
    n_occluders: static grey vertical bars drawn over everything.
    """
    if n_frames < 1 or fps <= 0:
        raise ValueError("need n_frames >= 1 and fps > 0")
    w, h = size
    if w < 16 or h < 16:
        raise ValueError(f"image size {size} too small (min 16x16)")
    rng = np.random.default_rng(seed)
    if objects is None:
        objects = [(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))
                   for _ in range(n_objects)]
    for color, shape in objects:
        if color not in COLORS or shape not in SHAPES:
            raise ValueError(f"unknown object ({color!r}, {shape!r})")
    diag = float(np.hypot(w, h))
    n = len(objects)
    radii = rng.uniform(*size_range, n) * min(w, h)
    pos = np.stack([rng.uniform(radii, w - radii), rng.uniform(radii, h - radii)], axis=1)
    angle = rng.uniform(0, 2 * np.pi, n)
    speed = rng.uniform(*speed_range, n) * diag / fps  # pixels per frame
    vel = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
    z_order = rng.permutation(n)

    occluders = []
    for _ in range(n_occluders):
        bw = int(rng.uniform(0.06, 0.12) * w)
        x0 = int(rng.uniform(0.2, 0.8) * w - bw / 2)
        occluders.append((x0, 0, x0 + bw - 1, h - 1))

    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    frames, stamps, states = [], [], []
    for i in range(n_frames):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = background
        covered = np.zeros((h, w), bool)
        masks = [None] * n
        for k in sorted(range(n), key=lambda k: -z_order[k]):  # top first
            full = _inside(objects[k][1], pos[k, 0], pos[k, 1], radii[k], xs, ys)
            masks[k] = (full, full & ~covered)
            covered |= full
        for k in sorted(range(n), key=lambda k: z_order[k]):  # paint bottom first
            img[masks[k][0]] = COLORS[objects[k][0]]
        occ = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in occluders:
            occ[y0:y1 + 1, x0:x1 + 1] = True
        img[occ] = OCCLUDER_COLOR
        frame_states = []
        for k in range(n):
            full, vis = masks[k]
            vis = vis & ~occ
            area = max(int(full.sum()), 1)
            if vis.any():
                vy, vx = np.nonzero(vis)
                bbox = (int(vx.min()), int(vy.min()), int(vx.max()), int(vy.max()))
            else:
                bbox = None
            frame_states.append(ObjectState(
                object_id=k + 1, shape=objects[k][1], color=objects[k][0],
                cx=float(pos[k, 0]), cy=float(pos[k, 1]), size=float(radii[k]),
                z=int(z_order[k]), visible_fraction=float(vis.sum()) / area, bbox=bbox))
        frames.append(img)
        stamps.append(start_ns + round(i * 1e9 / fps))
        states.append(frame_states)
        # Move, bouncing off the borders so that the whole shape stays in the image.
        pos += vel
        for d, lim in ((0, w), (1, h)):
            low, high = pos[:, d] < radii, pos[:, d] > lim - radii
            vel[low | high, d] *= -1
            pos[:, d] = np.clip(pos[:, d], radii, lim - radii)
    return Clip(frames=frames, stamps_ns=stamps, objects=states, size=(w, h), fps=fps,
                occluders=occluders)


def make_image(seed: int, size: tuple[int, int] = (160, 120), n_objects: int = 2,
               **kwargs) -> Clip:
    """A one-frame clip (image input)."""
    return make_clip(seed, n_frames=1, fps=1.0, size=size, n_objects=n_objects, **kwargs)
