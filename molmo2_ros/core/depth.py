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
- Distortion: `plumb_bob` and `rational_polynomial` (cv2.undistortPoints, iterated to
  convergence); other models are refused unless their coefficients are all zero.

Lookup of one point (`locate`): the buffered depth image nearest in time to the point's
own frame, within `tolerance_s`; the median of the valid depths in a `patch` x `patch`
window of depth pixels around it; back-projected through the camera model scaled to
the colour image's size. Every failure is a reason string, never an exception.
"""
from __future__ import annotations

import math
import sys
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

from molmo2_ros.core.grounding import NS, Grounding, Track

Position = tuple[float, float, float]
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")
_CV_COEFFS = (4, 5, 8, 12, 14)  # coefficient counts cv2's model accepts
ASPECT_TOLERANCE = 0.01          # relative difference of width/height ratios still "the same"


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
            raise ValueError(f"camera info is not calibrated (fx={self.fx}, fy={self.fy}; K is zero?)")
        if self.distorted:
            if self.distortion_model not in DISTORTION_MODELS:
                raise ValueError(f"distortion model {self.distortion_model!r} is not supported "
                                 f"(supported: {', '.join(DISTORTION_MODELS)}, or all-zero coefficients)")
            if len(self.d) not in _CV_COEFFS:
                raise ValueError(f"{self.distortion_model} with {len(self.d)} coefficients "
                                 f"(expected one of {_CV_COEFFS})")

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


def depth_from_image(msg, stamp_ns: int) -> DepthImage:
    """A zero-copy DepthImage of a sensor_msgs/Image (16UC1 mm or 32FC1 m)."""
    encoding = msg.encoding.lower()
    if encoding not in _DEPTH_ENCODINGS:
        raise ValueError(f"depth encoding {msg.encoding!r} is not supported (16UC1 in mm or 32FC1 in m)")
    dtype, scale = _DEPTH_ENCODINGS[encoding]
    size = np.dtype(dtype).itemsize
    width, height, step = msg.width, msg.height, msg.step
    if width == 0 or height == 0:
        raise ValueError(f"zero-size depth image {width}x{height}")
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


def depth_from_compressed(msg, stamp_ns: int) -> DepthImage:
    """A DepthImage of a sensor_msgs/CompressedImage: image_transport's `compressedDepth`
    (PNG of 16UC1 mm, or of 32FC1 as quantised inverse depth) or a plain 16-bit PNG/TIFF
    in mm. RVL is not decodable by cv2 and is refused."""
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
    `max_wanted` are remembered). Over `max_bytes` the oldest go first.
    Thread-safe; every call is short."""

    def __init__(self, tolerance_s: float, max_bytes: int, recent_s: float, max_wanted: int):
        self.tolerance_ns = round(tolerance_s * NS)
        self.max_bytes = int(max_bytes)
        self.recent_ns = round(recent_s * NS)
        self._lock = threading.Lock()
        self._images: deque[DepthImage] = deque()
        self._wanted: deque[int] = deque(maxlen=max_wanted)
        self.received = 0

    def add(self, image: DepthImage) -> str:
        """Buffer a depth image; returns a warning ("" when none)."""
        with self._lock:
            self.received += 1
            warning = ""
            if self._images and image.stamp_ns <= self._images[-1].stamp_ns:
                if image.stamp_ns == self._images[-1].stamp_ns:
                    return f"depth image with a duplicate stamp {image.stamp_ns} ignored"
                warning = "depth stamps jumped back: depth buffer reset"
                self._images.clear()
            self._images.append(image)
            self._evict_locked()
            return warning

    def want(self, stamp_ns: int) -> None:
        """A colour frame that later answers may refer to: keep the depth nearest to it."""
        with self._lock:
            if self._wanted and stamp_ns <= self._wanted[-1]:
                self._wanted.clear()  # time jumped back with the window
            self._wanted.append(int(stamp_ns))

    def nearest(self, stamp_ns: int) -> tuple[DepthImage | None, str]:
        """The buffered image nearest in time to `stamp_ns` within the tolerance, or
        None and why not."""
        with self._lock:
            images = list(self._images)
        if not images:
            return None, "no depth image received"
        best = min(images, key=lambda im: abs(im.stamp_ns - stamp_ns))
        gap = abs(best.stamp_ns - stamp_ns)
        if gap > self.tolerance_ns:
            return None, (f"no depth image within {self.tolerance_ns / NS:g} s of the frame "
                          f"(nearest {gap / NS:.3f} s away: depth stale or not synchronised)")
        return best, ""

    def stats(self) -> tuple[int, int]:
        """(images, bytes) held."""
        with self._lock:
            return len(self._images), sum(im.nbytes for im in self._images)

    def reset(self) -> None:
        with self._lock:
            self._images.clear()
            self._wanted.clear()

    def _evict_locked(self) -> None:
        images = self._images
        newest = images[-1].stamp_ns
        stamps = np.array([im.stamp_ns for im in images], np.int64)
        keep = set()
        for s in self._wanted:  # the image nearest each wanted stamp, if within the tolerance
            i = int(np.argmin(np.abs(stamps - s)))
            if abs(int(stamps[i]) - s) <= self.tolerance_ns:
                keep.add(i)
        self._images = deque(im for i, im in enumerate(images)
                             if i in keep or im.stamp_ns >= newest - self.recent_ns)
        size = sum(im.nbytes for im in self._images)
        while len(self._images) > 1 and size > self.max_bytes:
            size -= self._images.popleft().nbytes


@dataclass(frozen=True)
class DepthLookup:
    """How a pixel's depth is read (the node's depth_* parameters)."""

    patch: int = 5          # side of the median window, depth pixels (odd)
    min_m: float = 0.1
    max_m: float = 20.0


def locate(x: float, y: float, stamp_ns: int, frame_id: str, source_size: tuple[int, int],
           camera: CameraModel | None, buffer: DepthBuffer, lookup: DepthLookup) -> tuple[Position | None, str]:
    """3D position (optical frame, metres) of colour pixel (x, y) of the frame at
    `stamp_ns` (size `source_size`, `frame_id`), or None and the reason."""
    if camera is None:
        return None, "no camera info received"
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
    rx, ry = camera.scaled(*source_size).rays(np.array([[x, y]]))[0]
    return (float(rx * z), float(ry * z), z), ""


def with_positions(grounding: Grounding, find: Callable[[float, float, int], tuple[Position | None, str]]
                   ) -> Grounding:
    """The grounding with a 3D position on every point it can find one for (`find(x, y,
    stamp_ns)`), and one warning per kind of reason for those it cannot (kinds differ
    before the details in parentheses; the warning shows the first point's details)."""
    reasons: dict[str, list] = {}   # kind -> [first reason, count]

    def place(p):
        position, why = find(p.x, p.y, p.stamp_ns)
        if position is None:
            reasons.setdefault(why.split(" (")[0], [why, 0])[1] += 1
        return replace(p, position=position)

    points = [place(p) for p in grounding.points]
    tracks = [Track(id=t.id, label=t.label, points=[place(p) for p in t.points]) for t in grounding.tracks]
    warnings = list(grounding.warnings) + [f"3D: {n} point{'s' if n > 1 else ''} without a position: {why}"
                                           for why, n in reasons.values()]
    return replace(grounding, points=points, tracks=tracks, warnings=warnings)
