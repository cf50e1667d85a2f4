"""The optical-flow primitives behind camera-rate propagation (molmo2_ros.core.propagation).

Method (established, all OpenCV): pyramidal Lucas-Kanade optical flow with a
forward-backward consistency check (Kalal et al., "Forward-Backward Error", 2010) and a
normalised cross-correlation check against the patch the model pointed at. Model
points often sit in the middle of a uniform region (an object's centre), where a small
flow window sees no gradient (the aperture problem); each point is therefore tracked on
the finest level of an image pyramid where its window's gradient structure constrains
motion in both directions (the Shi-Tomasi criterion) - a coarser level means a window
that covers more of the object at the same cost.
"""
from __future__ import annotations

import cv2
import numpy as np

# Square LK/template window (pixels of the pyramid level a point is tracked on).
WINDOW = 21
# Pyramid levels a point may be tracked on (0 = the flow image; level k covers 2**k
# times the area per window), and LK's own pyramid reach above level 0: points follow
# up to ~10 * 2**PYRAMID_LEVELS flow-image pixels of motion per frame on any level.
TRACK_LEVELS = 4
PYRAMID_LEVELS = 3
LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
# Minimum RMS intensity gradient (grey levels per pixel) along the window's weakest
# direction for flow to be trusted; well above sensor noise, well below real texture.
MIN_TEXTURE = 3.0


def flow_pyramid(image: np.ndarray, max_side: int) -> list[np.ndarray]:
    """Grey levels of an RGB/RGBA/grey uint8 image, shrunk to `max_side` (0 = keep), as
    an image pyramid of up to TRACK_LEVELS levels."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(
            "add_frame() needs a uint8 numpy image, got "
            f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        gray = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY)
    elif image.ndim == 2:
        gray = image
    else:
        raise ValueError(
            f"add_frame() needs an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    h, w = gray.shape
    if min(h, w) < 2 * WINDOW:
        raise ValueError(f"image {w}x{h} too small to track in (min side {2 * WINDOW})")
    side = max(h, w)
    if max_side and side > max_side:
        f = max_side / side
        gray = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))),
                          interpolation=cv2.INTER_AREA)
    levels = [np.ascontiguousarray(gray)]
    while len(levels) < TRACK_LEVELS and min(levels[-1].shape) >= 4 * WINDOW:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


def flow_step(a: np.ndarray, b: np.ndarray, p0: np.ndarray, level: int, fb_max_px: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Points `p0` (N x 1 x 2, pixels of pyramid level `level`) carried from image `a` to
    `b`: (N x 2 new positions, N bools: both directions found and back within fb_max_px)."""
    lk = dict(winSize=(WINDOW, WINDOW), maxLevel=max(0, PYRAMID_LEVELS - level), criteria=LK_CRITERIA)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, **lk)
    p0r, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, None, **lk)
    fb = np.linalg.norm((p0 - p0r).reshape(-1, 2), axis=1)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb <= fb_max_px)
    return p1.reshape(-1, 2), ok


def inside(pos: np.ndarray, shape: tuple[int, ...]) -> bool:
    return bool(0 <= pos[0] <= shape[1] - 1 and 0 <= pos[1] <= shape[0] - 1)


def patch_at(gray: np.ndarray, pos: np.ndarray, win: int) -> np.ndarray:
    return cv2.getRectSubPix(gray, (win, win), (float(pos[0]), float(pos[1])),
                             patchType=cv2.CV_32F)


def texture(patch: np.ndarray) -> float:
    """RMS gradient along the patch's weakest direction (smallest structure-tensor
    eigenvalue): how well the patch pins down motion in every direction."""
    gx = cv2.Sobel(patch, cv2.CV_32F, 1, 0, ksize=3)[1:-1, 1:-1] / 8
    gy = cv2.Sobel(patch, cv2.CV_32F, 0, 1, ksize=3)[1:-1, 1:-1] / 8
    a, b, c = float(np.mean(gx * gx)), float(np.mean(gx * gy)), float(np.mean(gy * gy))
    return float(np.sqrt(max(0.0, (a + c) / 2 - np.hypot((a - c) / 2, b))))


def ncc_score(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else 0.0
