"""Camera-rate positions of grounded objects between model answers.

A model answer describes frames that are seconds old when it arrives, and answers come
perhaps once a second; a robot needs where the object is *now*, on every camera frame.
`TrackPropagator` keeps a short buffer of recent frames (grayscale, downscaled for
flow). When an answer arrives it takes each object's newest point, finds the buffered
frame it was given for and carries it through every frame since then up to the newest
one (latency compensation); after that it carries it on each new frame until the next
answer re-anchors it.

The flow itself (pyramidal Lucas-Kanade with forward-backward and correlation checks,
each point on the finest pyramid level with texture): molmo2_ros.core.optical_flow. A
point that fails a check is marked lost and keeps its last good position; nothing is
extrapolated.

Re-anchoring keeps object ids stable: the answer's objects are matched to the objects
being propagated by label and by position at the newest frame (Hungarian assignment).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from molmo2_ros.core.grounding import NS, GroundedPoint, Grounding
from molmo2_ros.core.optical_flow import (MIN_TEXTURE, WINDOW, flow_pyramid, flow_step, inside, ncc_score,
                                          patch_at, texture)



@dataclass(frozen=True)
class TrackedObject:
    """One object's propagated position; fields map 1:1 onto msg/TrackedObject.msg."""

    object_id: int
    label: str
    x: float                # source-image pixels, in the frame of `TrackedObjects.stamp_ns`
    y: float
    anchor_stamp_ns: int    # stamp of the frame the model's answer placed it in
    age_s: float            # time from the anchor to the current frame
    confidence: float       # in [0, 1]; 0 when lost
    lost: bool              # x/y are the last good position, not the current one
    position: tuple[float, float, float] | None = None   # metres, optical frame (depth input)
    target_position: tuple[float, float, float] | None = None   # in TrackedObjects.target_frame


@dataclass(frozen=True)
class TrackedObjects:
    """Positions of the latest answer's objects in one camera frame (msg/TrackedObjectArray)."""

    stamp_ns: int           # the camera frame these positions are for (0: no frame yet)
    query: str              # the query whose answer is propagated
    answer_id: str          # the caller's id of the answer the objects come from ("" = none)
    objects: tuple[TrackedObject, ...]
    target_frame: str = ""  # the frame of the objects' target_position ("" = none)


@dataclass
class _Frame:
    stamp_ns: int
    levels: list[np.ndarray]   # grayscale pyramid; levels[0] is the (downscaled) flow image

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self.levels)


@dataclass
class _Object:
    object_id: int
    label: str
    anchor_stamp_ns: int
    score: float            # the model's confidence in the anchor, 1 when it gives none
    pos: np.ndarray         # (2,) float32, flow-image (level 0) pixels
    level: int              # pyramid level it is tracked on
    template: np.ndarray | None   # float32 WINDOW x WINDOW patch around the anchor
    ncc: float = 1.0
    lost: bool = False


class TrackPropagator:
    """Propagate the newest model answer's points to every camera frame.

    Thread-safe: `add_frame` (camera callback) and `anchor` (inference worker) may be
    called from different threads. Both return a list of warnings for the caller to log.

    Parameters (seconds for times):
      enable: off -> every call is a no-op and nothing is buffered.
      max_points: most objects propagated at once (highest model score kept).
      max_age: an object is dropped this long after its anchor frame.
      window: seconds of frames kept; answers older than this cannot be compensated.
      flow_max_side: frames are downscaled so their longer side is at most this before
        flow (0 = full resolution); positions are mapped back to source pixels.
      buffer_mb: memory bound of the frame buffer, which may shorten the window.
      fb_max_px: largest forward-backward error of a good step (pixels of the pyramid
        level the point is tracked on).
      min_ncc: lowest correlation with the anchor patch of a good step.
      association_radius: farthest match between an answer's object and a propagated
        one, as a fraction of the image diagonal.
    """

    def __init__(
        self,
        enable: bool = True,
        max_points: int = 50,
        max_age: float = 10.0,
        window: float = 5.0,
        flow_max_side: int = 640,
        buffer_mb: float = 128.0,
        fb_max_px: float = 2.0,
        min_ncc: float = 0.5,
        association_radius: float = 0.1,
    ):
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not max_age > 0:
            raise ValueError(f"max_age must be > 0 s, got {max_age}")
        if not window > 0:
            raise ValueError(f"window must be > 0 s, got {window}")
        if flow_max_side != 0 and flow_max_side < 2 * WINDOW:
            raise ValueError(
                f"flow_max_side must be 0 (full resolution) or >= {2 * WINDOW}, "
                f"got {flow_max_side}")
        if not buffer_mb > 0:
            raise ValueError(f"buffer_mb must be > 0, got {buffer_mb}")
        if not fb_max_px > 0:
            raise ValueError(f"fb_max_px must be > 0, got {fb_max_px}")
        if not -1.0 <= min_ncc <= 1.0:
            raise ValueError(f"min_ncc must be in [-1, 1], got {min_ncc}")
        if not association_radius > 0:
            raise ValueError(f"association_radius must be > 0, got {association_radius}")
        self.enable = bool(enable)
        self.max_points = int(max_points)
        self.max_age_ns = int(max_age * NS)
        self.window_ns = int(window * NS)
        self.flow_max_side = int(flow_max_side)
        self.buffer_bytes = int(buffer_mb * 2**20)
        self.fb_max_px = float(fb_max_px)
        self.min_ncc = float(min_ncc)
        self.association_radius = float(association_radius)
        self._lock = threading.Lock()
        self._frames: deque[_Frame] = deque()
        self._source_size: tuple[int, int] | None = None   # (width, height)
        self._scale = (1.0, 1.0)     # flow-image pixels per source pixel
        self._epoch = 0              # counts resets, so a late answer can tell
        self._objects: list[_Object] = []
        self._query = ""
        self._answer_id = ""
        self._next_id = 1

    # ------------------------------------------------------------------ public API

    def add_frame(self, image: np.ndarray, stamp_ns: int,
                  source_size: tuple[int, int] | None = None) -> list[str]:
        """Buffer a camera frame (HxW gray or HxWx3/4 RGB(A), uint8) and carry every
        propagated object onto it.

        `source_size` is the camera image's (width, height) when `image` was already
        shrunk by the caller (answers and outputs stay in the camera's pixels); by
        default the image is the camera image itself.
        """
        if not self.enable:
            return []
        levels = flow_pyramid(image, self.flow_max_side)
        stamp_ns = _check_stamp(stamp_ns)
        source_size = _check_size(source_size, image)
        warnings: list[str] = []
        with self._lock:
            if self._frames and stamp_ns == self._frames[-1].stamp_ns:
                return [f"duplicate frame stamp {stamp_ns}: frame ignored"]
            if self._frames and stamp_ns < self._frames[-1].stamp_ns:
                warnings.append(
                    f"time jumped back from {self._frames[-1].stamp_ns} to {stamp_ns} ns: "
                    "propagation buffer and tracks reset")
                self._reset_locked()
            elif self._frames and (source_size != self._source_size
                                   or levels[0].shape != self._frames[-1].levels[0].shape):
                warnings.append(
                    f"image size changed from {self._source_size} to {source_size}: "
                    "propagation buffer and tracks reset")
                self._reset_locked()
            self._source_size = source_size
            h, w = levels[0].shape
            self._scale = (w / source_size[0], h / source_size[1])
            frame = _Frame(stamp_ns, levels)
            if self._frames:
                self._step(self._frames[-1], frame, [o for o in self._objects if not o.lost])
            self._frames.append(frame)
            self._evict_locked()
        return warnings

    def anchor(self, grounding: Grounding, answer_id: str = "") -> list[str]:
        """Re-anchor on a model answer: each object's newest point, propagated from its
        frame to the newest buffered frame. A new query replaces the old one's objects.
        `answer_id` is reported with the objects (`TrackedObjects.answer_id`) from the
        same update on, so no frame pairs one answer's objects with another's id."""
        if not self.enable:
            return []
        if not isinstance(grounding, Grounding):
            raise TypeError(f"anchor() needs a Grounding, got {type(grounding).__name__}")
        points = _newest_point_per_object(grounding)[: self.max_points]
        with self._lock:
            frames, scale, epoch = list(self._frames), self._scale, self._epoch
        warnings: list[str] = []
        new: list[_Object] = []
        if points and not frames:
            warnings.append(f"no frames buffered: {len(points)} answer points not propagated")
        elif points:
            # Compensation over the buffered frames runs unlocked (frames are never
            # modified), so the camera thread is not held up by it.
            new = self._compensate(points, frames, scale, warnings)
        with self._lock:
            if grounding.query != self._query:
                self._objects = []
                self._query = grounding.query
                self._answer_id = answer_id
            if not new:
                return warnings
            if epoch != self._epoch:
                return warnings + ["propagation buffer was reset while the answer was "
                                   "being compensated: answer not used"]
            prev = frames[-1]
            for frame in [f for f in self._frames if f.stamp_ns > prev.stamp_ns]:
                self._step(prev, frame, [o for o in new if not o.lost])
                prev = frame
            self._merge_locked(new)
            self._answer_id = answer_id
        return warnings

    def current(self) -> TrackedObjects:
        """Positions of the current objects in the newest buffered frame."""
        with self._lock:
            if not self._frames:
                return TrackedObjects(0, self._query, self._answer_id, ())
            stamp = self._frames[-1].stamp_ns
            sx, sy = self._scale
            out = []
            for o in self._objects:
                age_ns = stamp - o.anchor_stamp_ns
                confidence = 0.0 if o.lost else (
                    o.score * max(0.0, o.ncc) * max(0.0, 1.0 - age_ns / self.max_age_ns))
                out.append(TrackedObject(
                    object_id=o.object_id, label=o.label,
                    x=float((o.pos[0] + 0.5) / sx - 0.5),
                    y=float((o.pos[1] + 0.5) / sy - 0.5),
                    anchor_stamp_ns=o.anchor_stamp_ns, age_s=age_ns / NS,
                    confidence=float(confidence), lost=o.lost))
            return TrackedObjects(stamp, self._query, self._answer_id, tuple(out))

    def buffered(self) -> tuple[int, int]:
        """(frames, bytes) held in the frame buffer, e.g. for diagnostics."""
        with self._lock:
            return len(self._frames), sum(f.nbytes for f in self._frames)

    def reset(self) -> None:
        """Forget all frames and objects (object ids keep counting up)."""
        with self._lock:
            self._reset_locked()

    # ------------------------------------------------------------------ internals

    def _compensate(self, points: list[GroundedPoint], frames: list[_Frame],
                    scale: tuple[float, float], warnings: list[str]) -> list[_Object]:
        """New objects for `points`, each carried from its own frame to frames[-1]."""
        new: list[tuple[int, _Object]] = []   # (index of the anchor frame, object)
        for p in points:
            index = _frame_index(frames, p.stamp_ns)
            obj = _new_object(p, frames[index] if index is not None else None, scale)
            if index is None:
                warnings.append(
                    f"object {p.label!r} at stamp {p.stamp_ns} is outside the "
                    f"propagation buffer [{frames[0].stamp_ns}, {frames[-1].stamp_ns}] "
                    "(raise the window?): marked lost")
                index = len(frames) - 1
            elif obj.lost:
                warnings.append(
                    f"object {p.label!r} at ({p.x:.0f}, {p.y:.0f}) has no image texture "
                    "to follow: marked lost")
            new.append((index, obj))
        for i in range(min(index for index, _ in new), len(frames) - 1):
            moving = [o for index, o in new if index <= i and not o.lost]
            if moving:
                self._step(frames[i], frames[i + 1], moving)
        return [o for _, o in new]

    def _step(self, prev: _Frame, nxt: _Frame, objects: list[_Object]) -> None:
        """Carry `objects` from frame `prev` to frame `nxt` (flow + checks), each on
        its own pyramid level."""
        for k in {o.level for o in objects}:
            group = [o for o in objects if o.level == k]
            a, b = prev.levels[k], nxt.levels[k]
            p0 = (np.array([o.pos for o in group], np.float32) / 2**k).reshape(-1, 1, 2)
            p1, ok = flow_step(a, b, p0, k, self.fb_max_px)
            for o, good, pos in zip(group, ok, p1):
                if good and inside(pos, b.shape):
                    ncc = ncc_score(o.template, patch_at(b, pos, WINDOW))
                    if ncc >= self.min_ncc:
                        o.pos, o.ncc = (pos * 2**k).astype(np.float32), ncc
                        continue
                o.lost = True

    def _merge_locked(self, new: list[_Object]) -> None:
        """Give the answer's objects the ids of the propagated objects they match (same
        label, nearest at the newest frame, within the association radius; lost objects
        match only objects left over); keep unmatched old objects until they age out;
        cap the total at max_points."""
        old = self._objects
        matched_old: set[int] = set()
        if old and new:
            w, h = self._source_size
            sx, sy = self._scale
            gate = self.association_radius * float(np.hypot(w, h))
            scale = np.array([1 / sx, 1 / sy], np.float32)
            d = np.linalg.norm(
                (np.array([o.pos for o in new])[:, None] - np.array([o.pos for o in old])[None])
                * scale, axis=2)
            same_label = np.array([[n.label == o.label for o in old] for n in new])
            # A lost object's last good position says little about where it is now: it
            # may take any same-label object that no propagated object is near.
            was_lost = np.array([o.lost for o in old])[None]
            cost = np.where(was_lost, gate + d / gate, d)
            cost = np.where(same_label & (was_lost | (d <= gate)), cost, 1e9)
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < 1e9:
                    new[i].object_id = old[j].object_id
                    matched_old.add(j)
        for o in new:
            if o.object_id == 0:
                o.object_id = self._next_id
                self._next_id += 1
        kept = [o for j, o in enumerate(old) if j not in matched_old]
        kept.sort(key=lambda o: o.anchor_stamp_ns, reverse=True)
        self._objects = (new + kept)[: self.max_points]
        self._drop_aged_locked()

    def _evict_locked(self) -> None:
        newest = self._frames[-1].stamp_ns
        size = sum(f.nbytes for f in self._frames)
        while len(self._frames) > 1 and (
                self._frames[0].stamp_ns < newest - self.window_ns or size > self.buffer_bytes):
            size -= self._frames.popleft().nbytes
        self._drop_aged_locked()

    def _drop_aged_locked(self) -> None:
        newest = self._frames[-1].stamp_ns
        self._objects = [o for o in self._objects if newest - o.anchor_stamp_ns <= self.max_age_ns]

    def _reset_locked(self) -> None:
        self._frames.clear()
        self._objects = []
        self._answer_id = ""
        self._source_size = None
        self._epoch += 1


def _new_object(p: GroundedPoint, frame: _Frame | None, scale: tuple[float, float]) -> _Object:
    """The object for an answer point, on the finest pyramid level where its window has
    texture (lost when no level has, or when its frame is not buffered)."""
    sx, sy = scale
    pos = np.array([(p.x + 0.5) * sx - 0.5, (p.y + 0.5) * sy - 0.5], np.float32)
    score = float(np.clip(p.score, 0.0, 1.0)) if np.isfinite(p.score) else 1.0
    obj = _Object(0, p.label, int(p.stamp_ns), score, pos, 0, None)
    if frame is None or not inside(pos, frame.levels[0].shape):
        obj.lost = True
        return obj
    for k, level in enumerate(frame.levels):
        patch = patch_at(level, pos / 2**k, WINDOW)
        if texture(patch) >= MIN_TEXTURE:
            obj.level, obj.template = k, patch
            return obj
    obj.lost = True
    return obj


def _newest_point_per_object(g: Grounding) -> list[GroundedPoint]:
    """Each object's newest point: from the tracks if any, else from the points grouped
    by (label, object_id); highest model score first."""
    newest: dict[tuple[str, int], GroundedPoint] = {}
    if g.tracks:
        for t in g.tracks:
            if t.points:
                p = max(t.points, key=lambda q: q.stamp_ns)
                newest[(t.label, t.id)] = GroundedPoint(p.stamp_ns, p.x, p.y, t.id, t.label, p.score)
    else:
        for p in g.points:
            key = (p.label, p.object_id)
            if key not in newest or p.stamp_ns > newest[key].stamp_ns:
                newest[key] = p
    return sorted(newest.values(), key=lambda p: -p.score if np.isfinite(p.score) else -1.0)


def _frame_index(frames: list[_Frame], stamp_ns: int) -> int | None:
    """Index of the buffered frame with this stamp (nearest within half a frame period)."""
    stamps = np.array([f.stamp_ns for f in frames], np.int64)
    i = int(np.argmin(np.abs(stamps - stamp_ns)))
    period = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.0
    return i if abs(int(stamps[i]) - stamp_ns) <= period / 2 else None


def _check_stamp(stamp_ns: int) -> int:
    if isinstance(stamp_ns, (bool, float)) or not isinstance(stamp_ns, (int, np.integer)):
        raise ValueError(f"stamp_ns must be integer nanoseconds, got {stamp_ns!r}")
    if stamp_ns < 0:
        raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
    return int(stamp_ns)


def _check_size(source_size, image: np.ndarray) -> tuple[int, int]:
    if source_size is None:
        return image.shape[1], image.shape[0]
    try:
        w, h = (int(v) for v in source_size)
    except (TypeError, ValueError):
        raise ValueError(f"source_size must be (width, height), got {source_size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"source_size must be positive, got {source_size!r}")
    return w, h
