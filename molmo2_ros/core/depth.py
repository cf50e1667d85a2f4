"""Where a grounded pixel is in 3D: a depth image registered to the colour camera, a
short buffer of them by stamp, and back-projection with the camera model. ROS-free
(messages are read duck-typed, like core/image_conversion).

Conventions (REP 103/118, sensor_msgs):
- Depth images hold z, the distance along the optical axis: `16UC1` in millimetres,
  `32FC1` in metres; 0, NaN and values outside [min_m, max_m] mean "no depth".
- Registered: a depth pixel looks at the same ray as the colour pixel at the same
  relative position; the depth image may have another resolution but the same aspect
  ratio and the colour camera's frame_id.
- Positions are in the camera's optical frame: x right, y down, z forward, metres.
- Grounded pixels have their centres at integer + 0.5 (msg/GroundedPoint.msg); a
  CameraInfo's K has them at integers (OpenCV), so u_K = x - 0.5.
- Distortion: `plumb_bob` (5 coefficients) and `rational_polynomial` (8), undone with
  cv2.undistortPoints iterated to convergence; no coefficients (or all zero) is a pinhole.
  Other models are refused, `equidistant` too: its zero coefficients are not a pinhole.
  NaN/inf or zero intrinsics, NaN/inf coefficients and counts that do not fit the model
  are refused per message (CameraModel raises ValueError saying which).

Hostile input (what one message may cost): a depth image with more pixels than
`max_pixels` or more decoded bytes than the buffer's bound is refused before it is
decoded (a compressed one by its PNG header); the buffer never holds more than its
bound, not even for one image larger than it; a single depth stamp far from the others
(a jump back or ahead, as the colour window's jump_back_s/jump_ahead_s) is held back
until the next image confirms it, so it cannot empty the buffer.

Lookup of one point (`locate`): the buffered depth image nearest in time to the point's
own frame, within `tolerance_s`; the median of the valid depths in a `patch` x `patch`
window of depth pixels around it; back-projected through the camera model scaled to
the colour image's size. Every failure is a reason string, never an exception, and
names the true cause (refused camera info, a malformed, too large or jumped depth image of
that frame, one the buffer evicted, stale depth); a non-finite position is never returned.
"""
from __future__ import annotations

import bisect
import math
import sys
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

from molmo2_ros.core.grounding import NS, Grounding, Track
from molmo2_ros.core.image_conversion import MAX_IMAGE_PIXELS, ImageTooLarge, check_pixels, encoded_size

Position = tuple[float, float, float]
DISTORTION_COEFFS = {"plumb_bob": 5, "rational_polynomial": 8}   # model -> its coefficient count (REP 104)
ASPECT_TOLERANCE = 0.01          # relative difference of width/height ratios still "the same"
GONE_REMEMBERED = 256            # depth images refused or evicted whose stamps are kept, to say why


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of an image of `width` x `height` (a CameraInfo's K and D)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = ""
    d: tuple[float, ...] = ()
    frame_id: str = ""

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise ValueError(f"camera info has no image size ({self.width}x{self.height})")
        if not (self.fx > 0 and self.fy > 0 and math.isfinite(self.fx) and math.isfinite(self.fy)):
            raise ValueError(f"camera info is not calibrated (fx={self.fx}, fy={self.fy}; K is zero or not finite)")
        if not (math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise ValueError(f"camera info has a non-finite principal point (cx={self.cx}, cy={self.cy})")
        if not all(math.isfinite(v) for v in self.d):
            raise ValueError(f"camera info has non-finite distortion coefficients D={list(self.d)}")
        model = self.distortion_model
        if model not in DISTORTION_COEFFS and (model or self.d):
            raise ValueError(f"distortion model {model!r} is not supported (supported: "
                             f"{', '.join(DISTORTION_COEFFS)}, or none with no coefficients)")
        if self.d and len(self.d) != DISTORTION_COEFFS[model]:
            raise ValueError(f"{model} has {DISTORTION_COEFFS[model]} coefficients, D has {len(self.d)}")

    @classmethod
    def from_camera_info(cls, msg) -> "CameraModel":
        """From a sensor_msgs/CameraInfo (duck-typed); ValueError when unusable."""
        k = [float(v) for v in msg.k]
        return cls(width=int(msg.width), height=int(msg.height), fx=k[0], fy=k[4], cx=k[2], cy=k[5],
                   distortion_model=str(msg.distortion_model), d=tuple(float(v) for v in msg.d),
                   frame_id=str(msg.header.frame_id))

    @property
    def distorted(self) -> bool:
        return any(v != 0.0 for v in self.d)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    def scaled(self, width: int, height: int) -> "CameraModel":
        """The same camera at another resolution (distortion is resolution-free)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return replace(self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
                       cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5)

    def rays(self, xy: np.ndarray) -> np.ndarray:
        """Nx2 pixels (centres at +0.5) -> Nx2 undistorted normalised coordinates (X/Z, Y/Z)."""
        uv = np.asarray(xy, np.float64).reshape(-1, 2) - 0.5
        if not self.distorted:
            return (uv - [self.cx, self.cy]) / [self.fx, self.fy]
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
        out = cv2.undistortPoints(uv.reshape(-1, 1, 2), self.matrix(), np.array(self.d, np.float64),
                                  criteria=criteria)
        return out.reshape(-1, 2)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Nx3 points in the optical frame -> Nx2 pixels (centres at +0.5), with distortion."""
        pts = np.asarray(points, np.float64).reshape(-1, 1, 3)
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), self.matrix(), np.array(self.d or [0.0] * 5))
        return uv.reshape(-1, 2) + 0.5


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) <= ASPECT_TOLERANCE * (b[0] / b[1])


@dataclass(frozen=True)
class DepthImage:
    """One depth image: `pixels` (HxW uint16 or float32) times `scale` are metres."""

    stamp_ns: int
    frame_id: str
    pixels: np.ndarray
    scale: float

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes


_DEPTH_ENCODINGS = {"16uc1": (np.uint16, 1e-3), "mono16": (np.uint16, 1e-3), "32fc1": (np.float32, 1.0)}
DEFAULT_MAX_BYTES = 128 * 2**20   # the node's depth_buffer_mb default


def check_depth_size(width: int, height: int, itemsize: int, max_pixels: int, max_bytes: int, what: str) -> None:
    """ImageTooLarge when a depth image of width x height samples of `itemsize` bytes has
    more than `max_pixels` pixels or more than `max_bytes` bytes (the buffer's bound)."""
    check_pixels(width, height, max_pixels, what)
    if width * height * itemsize > max_bytes:
        raise ImageTooLarge(f"{what} is {width}x{height} = {width * height * itemsize / 2**20:.1f} MiB, more "
                            f"than depth_buffer_mb {max_bytes / 2**20:g}: refused before decoding")


def depth_from_image(msg, stamp_ns: int, max_pixels: int = MAX_IMAGE_PIXELS,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> DepthImage:
    """A zero-copy DepthImage of a sensor_msgs/Image (16UC1 mm or 32FC1 m); ImageTooLarge
    beyond `max_pixels` or `max_bytes`."""
    encoding = msg.encoding.lower()
    if encoding not in _DEPTH_ENCODINGS:
        raise ValueError(f"depth encoding {msg.encoding!r} is not supported (16UC1 in mm or 32FC1 in m)")
    dtype, scale = _DEPTH_ENCODINGS[encoding]
    size = np.dtype(dtype).itemsize
    width, height, step = msg.width, msg.height, msg.step
    if width == 0 or height == 0:
        raise ValueError(f"zero-size depth image {width}x{height}")
    check_depth_size(width, height, size, max_pixels, max_bytes, "depth Image")
    if step < width * size or step % size:
        raise ValueError(f"depth step {step} does not fit width {width} x {size} bytes")
    if len(msg.data) != step * height:
        raise ValueError(f"depth data has {len(msg.data)} bytes; step {step} x height {height} expected")
    view = np.ndarray((height, width), dtype=dtype, buffer=np.frombuffer(msg.data, np.uint8),
                      strides=(step, size))
    if bool(msg.is_bigendian) != (sys.byteorder == "big"):
        view = view.byteswap()
    return DepthImage(int(stamp_ns), msg.header.frame_id, view, scale)


_COMPRESSED_DEPTH_HEADER = 12  # compressed_depth_image_transport's ConfigHeader: int32 format, float32[2]


def depth_from_compressed(msg, stamp_ns: int, max_pixels: int = MAX_IMAGE_PIXELS,
                          max_bytes: int = DEFAULT_MAX_BYTES) -> DepthImage:
    """A DepthImage of a sensor_msgs/CompressedImage: image_transport's `compressedDepth`
    (PNG of 16UC1 mm, or of 32FC1 as quantised inverse depth) or a plain 16-bit PNG in mm.
    Only a single-channel 16-bit PNG is decoded, and only when its header declares at most
    `max_pixels` and `max_bytes` decoded (a 1.75 MB PNG can declare 30000x30000 = 1.8 GB).
    RVL is not decodable by cv2 and is refused."""
    data = np.frombuffer(msg.data, np.uint8)
    fmt = msg.format.lower()
    if len(data) == 0:
        raise ValueError("empty compressed depth image")
    if "compresseddepth" in fmt:
        if len(data) <= _COMPRESSED_DEPTH_HEADER:
            raise ValueError(f"compressedDepth message of {len(data)} bytes has no image after its header")
        kind = int(np.frombuffer(data[:4].tobytes(), "<i4")[0])
        if kind != 0:
            raise ValueError("compressedDepth in RVL format cannot be decoded here (use png)")
        quant_a, quant_b = (float(v) for v in np.frombuffer(data[4:12].tobytes(), "<f4"))
        payload, inverse = data[_COMPRESSED_DEPTH_HEADER:], fmt.startswith("32fc1")
    else:
        payload, inverse, quant_a, quant_b = data, False, 0.0, 0.0
    head = payload[:26].tobytes()
    size = encoded_size(payload) if head.startswith(b"\x89PNG") else None
    if size is None or head[24:26] != b"\x10\x00":   # IHDR bit depth 16, colour type 0 (grey)
        raise ValueError(f"compressed depth ({msg.format!r}, {len(data)} bytes) is not a single-channel "
                         "16-bit PNG with a complete header")
    check_depth_size(*size, 4 if inverse else 2, max_pixels, max_bytes, "compressed depth image")
    pixels = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise ValueError(f"compressed depth ({msg.format!r}, {len(data)} bytes) did not decode "
                         "to a single-channel 16-bit image")
    if not inverse:
        return DepthImage(int(stamp_ns), msg.header.frame_id, pixels, 1e-3)
    with np.errstate(divide="ignore"):
        depth = quant_a / (pixels.astype(np.float32) - quant_b)
    depth[pixels == 0] = np.nan
    return DepthImage(int(stamp_ns), msg.header.frame_id, depth, 1.0)


METRES_AS_MM_BELOW = 50.0    # a 16UC1 median below 5 cm: metres written as integers
MM_AS_METRES_ABOVE = 100.0   # a 32FC1 median beyond 100 m: millimetres


def units_problem(image: DepthImage) -> str | None:
    """Why the depth image's values do not look like its encoding's units (16UC1:
    millimetres, 32FC1: metres), with the fix; "" when they do; None when it cannot tell
    (no valid pixel). Reads every 4th pixel of every 4th row."""
    pixels = image.pixels[::4, ::4]
    valid = pixels[np.isfinite(pixels) & (pixels > 0)]
    if valid.size == 0:
        return None
    median = float(np.median(valid))
    if pixels.dtype == np.uint16 and median < METRES_AS_MM_BELOW:
        return (f"16UC1 depth values look like metres, not millimetres (median {median:g} of the valid pixels, "
                f"i.e. {median * 1e-3:g} m): publish 16UC1 in millimetres or 32FC1 in metres")
    if pixels.dtype != np.uint16 and median > MM_AS_METRES_ABOVE:
        return (f"32FC1 depth values look like millimetres, not metres (median {median:g} of the valid pixels, "
                f"i.e. {median:g} m): publish 32FC1 in metres or 16UC1 in millimetres")
    return ""


def robust_depth(pixels: np.ndarray, scale: float, col: int, row: int, patch: int,
                 min_m: float, max_m: float) -> float | None:
    """Median of the valid depths (metres) in the patch x patch window around (col, row);
    None when none is valid."""
    r = patch // 2
    window = pixels[max(0, row - r): row + r + 1, max(0, col - r): col + r + 1].astype(np.float64) * scale
    valid = window[np.isfinite(window) & (window >= min_m) & (window <= max_m)]
    return float(np.median(valid)) if valid.size else None


class DepthBuffer:
    """Recent depth images by stamp, memory-bounded.

    Keeps every image of the last `recent_s` (camera-rate lookups) and, older than that,
    only the image nearest to each colour stamp announced with `want()` (the frames the
    query window kept: the only older frames answers can refer to; the newest
    `max_wanted` are remembered). Over `max_bytes` the oldest go first; an image larger
    than `max_bytes` on its own is refused.

    Stamps: a slightly late image is put in its place; a duplicate is ignored; one more
    than `jump_back_s` behind or `jump_ahead_s` ahead of the newest is held back, and
    taken only when the next image confirms the jump (follows it within `jump_ahead_s`):
    then the images stamped after it go (a bag restarted: all of them; one image from
    the future taken earlier: that one). A single wild stamp costs only itself.

    Why an image is not here, when it was received, is remembered (for a short while) by
    its stamp, so a lookup that misses names the cause. Thread-safe; every call is short."""

    def __init__(self, tolerance_s: float, max_bytes: int, recent_s: float, max_wanted: int,
                 jump_back_s: float = 1.0, jump_ahead_s: float = 10.0):
        self.tolerance_ns = round(tolerance_s * NS)
        self.max_bytes = int(max_bytes)
        self.recent_ns = round(recent_s * NS)
        self.jump_back_ns = round(jump_back_s * NS)
        self.jump_ahead_ns = round(jump_ahead_s * NS)
        self._lock = threading.Lock()
        self._images: list[DepthImage] = []            # by stamp
        self._wanted: deque[int] = deque(maxlen=max_wanted)
        self._forgotten: deque[int] = deque(maxlen=max_wanted)   # wanted stamps pushed out since
        self._held: DepthImage | None = None           # the previous image, if held back as a jump
        self._gone: deque[tuple[int, str]] = deque(maxlen=GONE_REMEMBERED)  # (stamp, why not here)
        self._refusing = ""                            # why the newest depth message was refused
        self.received = 0    # images offered to add()
        self.refused = 0     # of those, not kept: duplicate, jumped or larger than the buffer

    def add(self, image: DepthImage) -> str:
        """Buffer a depth image; returns a warning ("" when none)."""
        with self._lock:
            self.received += 1
            stamp = image.stamp_ns
            if image.nbytes > self.max_bytes:
                self.refused += 1
                return self._refuse_locked(stamp, f"refused as too large ({image.nbytes / 2**20:.1f} MiB, more "
                                                  f"than depth_buffer_mb {self.max_bytes / 2**20:g})")
            held, self._held = self._held, None
            warning = ""
            if held is not None and 0 < stamp - held.stamp_ns <= self.jump_ahead_ns:
                warning = self._take_jump_locked(held)
            elif held is not None:
                self._gone.append((held.stamp_ns, "refused as a stamp jump the next image did not confirm"))
            if self._images:
                newest = self._images[-1].stamp_ns
                if newest - stamp > self.jump_back_ns or stamp - newest > self.jump_ahead_ns:
                    self._held = image
                    self.refused += 1
                    self._refusing = "held back as a stamp jump"
                    direction = "back" if stamp < newest else "ahead"
                    return (f"depth stamp {_fmt(stamp)} jumped {direction} {abs(stamp - newest) / NS:.3f} s from "
                            f"the newest {_fmt(newest)}: held back unless the next depth image confirms the jump")
            stamps = [im.stamp_ns for im in self._images]
            at = bisect.bisect_left(stamps, stamp)
            if at < len(stamps) and stamps[at] == stamp:
                self.refused += 1
                return warning or f"depth image with a duplicate stamp {_fmt(stamp)} ignored"
            self._images.insert(at, image)
            self._refusing = ""
            self._evict_locked()
            return warning

    def refuse(self, stamp_ns: int | None, why: str) -> None:
        """A depth message dropped before it got here, `why` completing "the depth image
        was ..." (e.g. "dropped as malformed (...)"): remembered so lookups name it;
        `stamp_ns` None when even its stamp was unreadable."""
        with self._lock:
            self._refuse_locked(stamp_ns, why)

    def _refuse_locked(self, stamp_ns: int | None, why: str) -> str:
        if stamp_ns is not None:
            self._gone.append((stamp_ns, why))
        self._refusing = why
        return f"depth image {why}"

    def _take_jump_locked(self, held: DepthImage) -> str:
        """The jump `held` made is confirmed: drop what is stamped after it, take it."""
        later = [im for im in self._images if im.stamp_ns > held.stamp_ns]
        for im in later:
            self._gone.append((im.stamp_ns, "dropped when the depth stamps jumped back"))
        self._images = [im for im in self._images if im.stamp_ns < held.stamp_ns] + [held]
        self._evict_locked()
        self.refused -= 1   # counted when held back; taken after all
        return (f"depth stamps jumped to {_fmt(held.stamp_ns)} (confirmed by the next image)"
                + (f": {len(later)} later depth images dropped" if later else ""))

    def want(self, stamp_ns: int) -> None:
        """A colour frame that later answers may refer to: keep the depth nearest to it."""
        with self._lock:
            if self._wanted and stamp_ns <= self._wanted[-1]:
                self._wanted.clear()  # time jumped back with the window
            if len(self._wanted) == self._wanted.maxlen:
                self._forgotten.append(self._wanted[0])
            self._wanted.append(int(stamp_ns))

    def newest_stamp(self) -> int | None:
        with self._lock:
            return self._images[-1].stamp_ns if self._images else None

    def nearest(self, stamp_ns: int) -> tuple[DepthImage | None, str]:
        """The buffered image nearest in time to `stamp_ns` within the tolerance, or
        None and why not (the true reason when an image of that time came and went)."""
        with self._lock:
            images, gone, refusing = list(self._images), list(self._gone), self._refusing
        best = min(images, key=lambda im: abs(im.stamp_ns - stamp_ns)) if images else None
        if best is not None and abs(best.stamp_ns - stamp_ns) <= self.tolerance_ns:
            return best, ""
        near = [(abs(s - stamp_ns), why) for s, why in gone if abs(s - stamp_ns) <= self.tolerance_ns]
        if near:
            return None, f"the depth image of the frame was {min(near)[1]}"
        if best is None:
            return None, (f"no usable depth image received (the newest was {refusing})" if refusing
                          else "no depth image received")
        gap = abs(best.stamp_ns - stamp_ns)
        detail = f"the newest depth message was {refusing}" if refusing else "depth stale or not synchronised"
        return None, (f"no depth image within {self.tolerance_ns / NS:g} s of the frame "
                      f"(nearest {gap / NS:.3f} s away: {detail})")

    def stats(self) -> tuple[int, int]:
        """(images, bytes) held."""
        with self._lock:
            return len(self._images), sum(im.nbytes for im in self._images)

    def reset(self) -> None:
        with self._lock:
            self._images.clear()
            self._wanted.clear()
            self._forgotten.clear()
            self._gone.clear()
            self._held, self._refusing = None, ""

    def _evict_locked(self) -> None:
        images = self._images
        newest = images[-1].stamp_ns
        stamps = np.array([im.stamp_ns for im in images], np.int64)

        def nearest_to(wanted) -> set[int]:   # the image nearest each stamp, if within the tolerance
            found = (int(np.argmin(np.abs(stamps - s))) for s in wanted)
            return {i for i, s in zip(found, wanted) if abs(int(stamps[i]) - s) <= self.tolerance_ns}

        keep = nearest_to(list(self._wanted))
        forgotten = nearest_to(list(self._forgotten)) - keep
        kept = []
        for i, im in enumerate(images):
            if i in keep or im.stamp_ns >= newest - self.recent_ns:
                kept.append(im)
            elif i in forgotten:
                self._gone.append((im.stamp_ns, f"evicted by the node before the answer was ready (the buffer "
                                                f"keeps depth for the {self._wanted.maxlen} newest kept frames)"))
        size = sum(im.nbytes for im in kept)
        while size > self.max_bytes:
            im = kept.pop(0)
            size -= im.nbytes
            self._gone.append((im.stamp_ns, f"evicted by the node (depth_buffer_mb {self.max_bytes / 2**20:g} "
                                            "full)"))
        self._images = kept


def _fmt(stamp_ns: int) -> str:
    return f"{stamp_ns // NS}.{stamp_ns % NS:09d}"


@dataclass(frozen=True)
class DepthLookup:
    """How a pixel's depth is read (the node's depth_* parameters)."""

    patch: int = 5          # side of the median window, depth pixels (odd)
    min_m: float = 0.1
    max_m: float = 20.0


def locate(x: float, y: float, stamp_ns: int, frame_id: str, source_size: tuple[int, int],
           camera: CameraModel | None, buffer: DepthBuffer, lookup: DepthLookup,
           no_camera: str = "no camera info received") -> tuple[Position | None, str]:
    """3D position (optical frame, metres) of colour pixel (x, y) of the frame at
    `stamp_ns` (size `source_size`, `frame_id`), or None and the reason (`no_camera`
    when `camera` is None). Never a non-finite position."""
    if camera is None:
        return None, no_camera
    if camera.frame_id and frame_id and camera.frame_id != frame_id:
        return None, (f"camera info frame_id {camera.frame_id!r} is not the camera's {frame_id!r}")
    if not same_aspect((camera.width, camera.height), source_size):
        return None, (f"camera info size {camera.width}x{camera.height} has another aspect ratio "
                      f"than the colour image {source_size[0]}x{source_size[1]}")
    depth, why = buffer.nearest(stamp_ns)
    if depth is None:
        return None, why
    if depth.frame_id != frame_id:
        return None, (f"depth frame_id {depth.frame_id!r} is not the colour camera's {frame_id!r} "
                      "(depth must be registered to the colour camera)")
    pixels = depth.pixels
    height, width = pixels.shape
    if not same_aspect((width, height), source_size):
        return None, (f"depth size {width}x{height} has another aspect ratio than the colour image "
                      f"{source_size[0]}x{source_size[1]} (not registered to it?)")
    col = min(max(int(x * width / source_size[0]), 0), width - 1)
    row = min(max(int(y * height / source_size[1]), 0), height - 1)
    z = robust_depth(pixels, depth.scale, col, row, lookup.patch, lookup.min_m, lookup.max_m)
    if z is None:
        return None, (f"no valid depth in the {lookup.patch}x{lookup.patch} depth pixels around "
                      f"({col}, {row}) (zero, NaN or outside {lookup.min_m:g}..{lookup.max_m:g} m)")
    with np.errstate(over="ignore", invalid="ignore"):   # an extreme camera model: checked below
        rx, ry = camera.scaled(*source_size).rays(np.array([[x, y]]))[0]
        position = (float(rx * z), float(ry * z), z)
    if not all(math.isfinite(v) for v in position):
        return None, f"the camera model gives no finite position for pixel ({x:g}, {y:g}) (camera info extreme?)"
    return position, ""


def with_positions(grounding: Grounding, find: Callable[[float, float, int], tuple[Position | None, str]]
                   ) -> Grounding:
    """The grounding with a 3D position on every point it can find one for (`find(x, y,
    stamp_ns)`), and one warning per kind of reason for those it cannot (kinds differ
    before the details in parentheses; the warning shows the first point's details).
    A point that is also a track's (a track answer lists them twice) is found and
    counted once."""
    reasons: dict[str, list] = {}   # kind -> [first reason, count]
    found: dict[tuple, tuple[Position | None, str]] = {}

    def place(p):
        key = (p.stamp_ns, p.object_id, p.x, p.y)
        if key not in found:
            found[key] = find(p.x, p.y, p.stamp_ns)
            if found[key][0] is None:
                why = found[key][1]
                reasons.setdefault(why.split(" (")[0], [why, 0])[1] += 1
        return replace(p, position=found[key][0])

    points = [place(p) for p in grounding.points]
    tracks = [Track(id=t.id, label=t.label, points=[place(p) for p in t.points]) for t in grounding.tracks]
    warnings = list(grounding.warnings) + [f"3D: {n} point{'s' if n > 1 else ''} without a position: {why}"
                                           for why, n in reasons.values()]
    return replace(grounding, points=points, tracks=tracks, warnings=warnings)
