"""sensor_msgs/Image and CompressedImage -> RGB uint8 numpy arrays, without cv_bridge.

The raw path views the message buffer in place (no copy) with the row stride the
message declares, shrinks it to the window's `max_side` while still in the camera's
layout (cheaper than converting every pixel of a 4K frame first), then converts the
colour order. Errors are ValueErrors that say what is wrong with the message.

Images larger than `max_pixels` (width x height) are refused with ImageTooLarge. A
compressed image's size is read from its header before anything is decoded (a 160 KB
PNG can declare 12000x12000 pixels, ~430 MB decoded), so only JPEG, PNG and simple
WebP, whose headers this module reads, are accepted.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np

from molmo2_ros.core.frame_window import fit_to_max_side

# encoding -> (dtype, channels, cv2 conversion to RGB or None when already RGB)
_RAW = {
    "rgb8": (np.uint8, 3, None),
    "bgr8": (np.uint8, 3, cv2.COLOR_BGR2RGB),
    "rgba8": (np.uint8, 4, cv2.COLOR_RGBA2RGB),
    "bgra8": (np.uint8, 4, cv2.COLOR_BGRA2RGB),
    "mono8": (np.uint8, 1, cv2.COLOR_GRAY2RGB),
    "8uc1": (np.uint8, 1, cv2.COLOR_GRAY2RGB),
    "8uc3": (np.uint8, 3, cv2.COLOR_BGR2RGB),      # OpenCV's default order
    "mono16": (np.uint16, 1, cv2.COLOR_GRAY2RGB),
    "16uc1": (np.uint16, 1, cv2.COLOR_GRAY2RGB),
    # ROS "yuv422" is UYVY (sensor_msgs/image_encodings.hpp); yuyv = YUY2.
    "yuv422": (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": (np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2),
    "yuv422_yuy2": (np.uint8, 2, cv2.COLOR_YUV2RGB_YUY2),
}
SUPPORTED_ENCODINGS = tuple(sorted(_RAW))
MAX_IMAGE_PIXELS = 7680 * 4320  # 8K UHD: the default of the node's max_image_pixels


class ImageTooLarge(ValueError):
    """An image with more pixels than allowed, refused before it is decoded or converted."""


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"{what} is {width}x{height} = {width * height} pixels, more than "
                            f"max_image_pixels {max_pixels}: refused before decoding")


def image_view(msg, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A zero-copy HxWxC view of a sensor_msgs/Image's pixels in its own layout
    (a copy only where the byte order must be swapped)."""
    encoding = msg.encoding.lower()
    if encoding not in _RAW:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} "
                         f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    dtype, channels, _ = _RAW[encoding]
    width, height, step = msg.width, msg.height, msg.step
    if width == 0 or height == 0:
        raise ValueError(f"zero-size image {width}x{height}")
    check_pixels(width, height, max_pixels, "Image")
    pixel_bytes = np.dtype(dtype).itemsize * channels
    if encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2") and width % 2:
        raise ValueError(f"{encoding} needs an even width, got {width}")
    if step < width * pixel_bytes:
        raise ValueError(f"step {step} is smaller than width {width} x {pixel_bytes} bytes "
                         f"per {encoding} pixel = {width * pixel_bytes}")
    if len(msg.data) != step * height:
        raise ValueError(f"data has {len(msg.data)} bytes; step {step} x height {height} "
                         f"= {step * height} expected")
    if np.dtype(dtype).itemsize > 1 and step % np.dtype(dtype).itemsize:
        raise ValueError(f"step {step} is not a multiple of the {encoding} sample size")
    buffer = np.frombuffer(msg.data, np.uint8)
    view = np.ndarray((height, width, channels), dtype=dtype, buffer=buffer,
                      strides=(step, pixel_bytes, np.dtype(dtype).itemsize))
    if view.dtype.itemsize > 1 and bool(msg.is_bigendian) != (sys.byteorder == "big"):
        view = view.byteswap()
    return view


def image_to_rgb(msg, max_side: int = 0, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 HxWx3 of a sensor_msgs/Image, longer side at most `max_side` (0 = full
    size), and the source (width, height)."""
    view = image_view(msg, max_pixels)
    _, _, conversion = _RAW[msg.encoding.lower()]
    source_size = (msg.width, msg.height)
    if view.shape[2] == 2:  # chroma is shared by pixel pairs: convert at full size first
        return fit_to_max_side(cv2.cvtColor(np.ascontiguousarray(view), conversion), max_side), source_size
    small = fit_to_max_side(view, max_side)
    if small.dtype == np.uint16:
        small = (small >> 8).astype(np.uint8)
    if small.ndim == 2:  # cv2.resize drops a single channel axis
        small = small[:, :, None]
    if conversion is None:
        return small, source_size
    return cv2.cvtColor(np.ascontiguousarray(small), conversion), source_size


def compressed_to_rgb(msg, max_side: int = 0, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 of a sensor_msgs/CompressedImage (JPEG, PNG or WebP), refused unless
    its header declares at most `max_pixels`.

    A JPEG that is larger than `max_side` is decoded at 1/2, 1/4 or 1/8 scale in the
    DCT domain (libjpeg's scaled decoding): a 4K frame shrunk to 640 px then costs a
    fraction of a full decode in time and memory, which matters at camera rate.
    """
    if len(msg.data) == 0:
        raise ValueError("empty CompressedImage")
    data = np.frombuffer(msg.data, np.uint8)
    size = encoded_size(data)
    if size is None:
        raise ValueError(f"CompressedImage (format {msg.format!r}, {len(msg.data)} bytes) is not a "
                         "JPEG, PNG or WebP with a complete header: its size cannot be checked "
                         "before decoding")
    check_pixels(*size, max_pixels, "CompressedImage")
    factor = 1
    if max_side > 0 and jpeg_size(data) is not None:
        factor = next((k for k in (8, 4, 2) if -(-max(size) // k) >= max_side), 1)
    bgr = cv2.imdecode(data, _REDUCED_COLOR[factor])
    if bgr is None or bgr.size == 0:
        raise ValueError(f"could not decode CompressedImage ({len(msg.data)} bytes, "
                         f"format {msg.format!r})")
    source_size = size if factor > 1 else (bgr.shape[1], bgr.shape[0])
    return cv2.cvtColor(fit_to_max_side(bgr, max_side), cv2.COLOR_BGR2RGB), source_size


_REDUCED_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                  4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding it; None when `data`
    (uint8) is not a JPEG or its header is cut short."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = int(data[i + 1])
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            height = int(data[i + 5]) << 8 | int(data[i + 6])
            width = int(data[i + 7]) << 8 | int(data[i + 8])
            return (width, height) if width and height else None
        i += 2 + (int(data[i + 2]) << 8 | int(data[i + 3]))
    return None


def encoded_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) declared by a JPEG, PNG or WebP header (uint8 `data`), without
    decoding; None for other data or a header cut short."""
    head = data[:30].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        chunk = head[12:16]   # simple lossless or lossy WebP; the extended (VP8X) is not read
        if chunk == b"VP8L" and len(head) >= 25:    # 14-bit sizes - 1
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
        if chunk == b"VP8 " and len(head) >= 30:    # 14-bit sizes after the frame's start code
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        return None
    return jpeg_size(data)
