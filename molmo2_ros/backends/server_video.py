"""A window of frames as the one video file an inference server reads (the openai backend).

The frames go into an MP4 at the window's own rate, so the server presents frame i at
`i / rate` seconds, as the local backends present it (for evenly spaced stamps). Two
encodings:
- "lossless": RGB H.264 at qp 0 (libx264rgb): the server decodes exactly the pixels a
  local backend sees, so answers equal the local backend's token for token;
- "compact": ordinary H.264 (yuv420p, CRF 23, sized to even dimensions): about 20 times
  smaller (docs/backends.md has the measured bytes and the answer quality it costs).
Every file carries a silent mono audio track: `transformers serve` (5.23) treats Molmo2 as
audio-capable and answers HTTP 500 ("best audio stream is unknown") for a video without
one; other servers ignore it. One frame is sent as an image instead (PNG, or JPEG when compact).
"""
from __future__ import annotations

import io
from fractions import Fraction
from typing import Sequence

import numpy as np

from molmo2_ros.backends.inputs import presented_image
from molmo2_ros.core.grounding import Frame

ENCODINGS = ("compact", "lossless")
COMPACT_CRF = 23
JPEG_QUALITY = 90
AUDIO_RATE = 8000       # Hz of the silent track: the smallest rate AAC encodes well
AUDIO_FRAME = 1024      # samples per AAC frame


def video_rate(fps: float) -> Fraction:
    """The container's frame rate for a window sampled at `fps` (a small exact fraction,
    so the server's `index / fps` reproduces the window's seconds)."""
    if not fps > 0:
        raise ValueError(f"a video needs a positive frame rate, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def presented_times(count: int, rate: Fraction) -> list[float]:
    """The seconds a server writes before each of `count` frames of a video at `rate`:
    `index / fps` with one decimal, as Molmo2's processor (and vLLM's loader) format them."""
    return [float(f"{i / float(rate):.1f}") for i in range(count)]


def encode_video(frames: Sequence[Frame], rate: Fraction, encoding: str) -> bytes:
    """MP4 bytes of `frames` (resized to the first frame's size, as the local backends do)."""
    import av

    if encoding not in ENCODINGS:
        raise ValueError(f"unknown video encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    height, width = frames[0].image.shape[:2]
    if encoding == "compact":   # 4:2:0 chroma needs even sides
        height, width = height + height % 2, width + width % 2
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        if encoding == "lossless":
            video = container.add_stream("libx264rgb", rate=rate, options={"qp": "0", "preset": "ultrafast"})
            video.pix_fmt = "rgb24"
        else:
            video = container.add_stream("libx264", rate=rate, options={"crf": str(COMPACT_CRF),
                                                                        "preset": "veryfast"})
            video.pix_fmt = "yuv420p"
        video.width, video.height = width, height
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        for frame in frames:
            image = presented_image(frame.image, height, width)
            for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        _silence(container, audio, seconds=len(frames) / float(rate))
    return buffer.getvalue()


def _silence(container, audio, seconds: float) -> None:
    import av

    samples = 0
    while samples < seconds * AUDIO_RATE:
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, AUDIO_FRAME), np.float32), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = AUDIO_RATE, samples
        for packet in audio.encode(chunk):
            container.mux(packet)
        samples += AUDIO_FRAME
    for packet in audio.encode():
        container.mux(packet)


def encode_image(frame: Frame, encoding: str) -> tuple[bytes, str]:
    """One frame as (file bytes, MIME type): PNG when lossless, JPEG when compact."""
    import cv2

    if encoding not in ENCODINGS:
        raise ValueError(f"unknown video encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
    if encoding == "lossless":
        ok, data = cv2.imencode(".png", bgr)
        mime = "image/png"
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        mime = "image/jpeg"
    if not ok:
        raise RuntimeError(f"cannot encode a {frame.image.shape} frame as {mime}")
    return data.tobytes(), mime


def decode_video(data: bytes) -> list[np.ndarray]:
    """RGB frames of an MP4 (to check an encoding and to measure what compact costs)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
