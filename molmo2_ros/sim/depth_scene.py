"""Depth for the shapes world: every object is a flat plate facing the camera at its own
known distance, in front of a background plane, seen through a pinhole camera
(optionally distorted). Gives the depth image a registered depth camera would publish
and, for any colour pixel, where in 3D it truly is.

    scene = DepthScene(clip, camera)            # camera: molmo2_ros.core.depth.CameraModel
    scene.depth_m(i, size=(80, 60))             # float32 metres, another resolution works
    scene.truth(i, x, y)                        # (X, Y, Z) metres, optical frame

The truth inverts the camera's forward model (cv2.projectPoints) numerically, so it
does not share code with the back-projection it checks.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.optimize import least_squares

from molmo2_ros.core.depth import CameraModel
from molmo2_ros.sim.shapes_world import Clip

BACKGROUND_M = 3.0   # the background plane's distance
NEAREST_M = 1.0      # the top object's distance; each one below it is STEP_M farther
STEP_M = 0.4
OCCLUDER_M = 0.6     # grey occluder bars, in front of everything


def default_camera(size: tuple[int, int], frame_id: str = "camera_optical_frame") -> CameraModel:
    """An undistorted camera of `size` (width, height) with a ~53 degree horizontal view."""
    width, height = size
    return CameraModel(width=width, height=height, fx=float(width), fy=float(width),
                       cx=width / 2 - 0.5, cy=height / 2 - 0.5, distortion_model="plumb_bob",
                       d=(0.0,) * 5, frame_id=frame_id)


class DepthScene:
    def __init__(self, clip: Clip, camera: CameraModel, background_m: float = BACKGROUND_M):
        if (camera.width, camera.height) != clip.size:
            camera = camera.scaled(*clip.size)
        self.clip, self.camera, self.background_m = clip, camera, background_m
        ranks = sorted(clip.objects[0], key=lambda o: -o.z)   # top (nearest) first
        self.object_m = {o.object_id: NEAREST_M + STEP_M * k for k, o in enumerate(ranks)}

    def depth_m(self, frame_index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Float32 HxW depth (z, metres) of frame `frame_index`, at the clip's size or `size`."""
        width, height = self.clip.size
        depth = np.full((height, width), self.background_m, np.float32)
        for o in self.clip.objects[frame_index]:
            depth[self.clip.mask(frame_index, o.object_id)] = self.object_m[o.object_id]
        for x0, y0, x1, y1 in self.clip.occluders:
            depth[y0:y1 + 1, x0:x1 + 1] = OCCLUDER_M
        if size is not None and tuple(size) != (width, height):
            depth = cv2.resize(depth, tuple(size), interpolation=cv2.INTER_NEAREST)
        return depth

    def z_at(self, frame_index: int, x: float, y: float) -> float:
        """Depth of the surface seen at colour pixel (x, y)."""
        col = min(max(int(x), 0), self.clip.size[0] - 1)
        row = min(max(int(y), 0), self.clip.size[1] - 1)
        return float(self.depth_m(frame_index)[row, col])

    def truth(self, frame_index: int, x: float, y: float) -> np.ndarray:
        """(X, Y, Z) in metres of the surface seen at colour pixel (x, y)."""
        return ray_through(self.camera, x, y) * self.z_at(frame_index, x, y)

    def flat(self, frame_index: int, x: float, y: float, radius: float) -> bool:
        """Whether every colour pixel within `radius` of (x, y) sees the same surface."""
        depth = self.depth_m(frame_index)
        r = int(np.ceil(radius))
        col, row = int(x), int(y)
        patch = depth[max(0, row - r): row + r + 1, max(0, col - r): col + r + 1]
        return bool(patch.size and np.all(patch == patch.flat[0]))


def ray_through(camera: CameraModel, x: float, y: float) -> np.ndarray:
    """(X/Z, Y/Z, 1) of the ray that `camera.project` sends to pixel (x, y)."""
    start = np.array([(x - 0.5 - camera.cx) / camera.fx, (y - 0.5 - camera.cy) / camera.fy])

    def residual(xy):
        return camera.project(np.array([[xy[0], xy[1], 1.0]]))[0] - [x, y]

    solved = least_squares(residual, start, xtol=1e-14, ftol=1e-14, gtol=1e-14).x
    return np.array([solved[0], solved[1], 1.0])
