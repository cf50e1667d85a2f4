"""RGB arrays -> sensor_msgs Image / CompressedImage (the publisher, the debug image, tests).
Decoding the other way needs no ROS: molmo2_ros.core.image_conversion."""
from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image


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
