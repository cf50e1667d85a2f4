"""RGB arrays -> sensor_msgs Image / CompressedImage (the publisher, the debug image, tests),
depth arrays -> depth Images and a camera model -> CameraInfo (the publisher, tests).
Decoding the other way needs no ROS: molmo2_ros.core.image_conversion, core.depth."""
from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image


def rgb_to_image(rgb: np.ndarray, stamp, frame_id: str, encoding: str = "rgb8"):
    """A sensor_msgs/Image of an RGB uint8 array (rgb8 or bgr8)."""
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"rgb_to_image writes rgb8 or bgr8, not {encoding!r}")
    pixels = rgb if encoding == "rgb8" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def rgb_to_compressed(rgb: np.ndarray, stamp, frame_id: str, fmt: str = "jpeg",
                      quality: int = 90):
    """A sensor_msgs/CompressedImage (jpeg or png) of an RGB uint8 array."""
    ext = {"jpeg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ValueError(f"compressed format must be jpeg or png, not {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cv2 could not encode a {rgb.shape} image as {fmt}")
    msg = CompressedImage()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.format = fmt
    msg.data = encoded.tobytes()
    return msg


def depth_to_image(metres: np.ndarray, stamp, frame_id: str, encoding: str = "16UC1"):
    """A depth sensor_msgs/Image of float metres: 16UC1 (millimetres, 0 = no depth, as
    NaN is written) or 32FC1 (metres)."""
    if encoding == "16UC1":
        pixels = np.round(np.nan_to_num(metres, nan=0.0) * 1000).clip(0, 65535).astype(np.uint16)
    elif encoding == "32FC1":
        pixels = metres.astype(np.float32)
    else:
        raise ValueError(f"depth_to_image writes 16UC1 or 32FC1, not {encoding!r}")
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = pixels.shape
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * pixels.itemsize
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def camera_info(camera, stamp, frame_id: str | None = None) -> CameraInfo:
    """A sensor_msgs/CameraInfo of a molmo2_ros.core.depth.CameraModel (unrectified:
    R identity, P = K)."""
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = camera.frame_id if frame_id is None else frame_id
    msg.width, msg.height = camera.width, camera.height
    msg.distortion_model = camera.distortion_model or "plumb_bob"
    msg.d = [float(v) for v in camera.d]
    msg.k = [camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [camera.fx, 0.0, camera.cx, 0.0, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg
