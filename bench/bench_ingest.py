"""Cost of taking camera frames into the node's frame window, and the window's memory.

Per resolution (640x480, 1080p, 4K) and input (raw bgr8 Image, raw yuv422 Image, JPEG
CompressedImage) it reports, in ms (best of --repeats runs):
- `kept_ms`: one frame the window keeps (convert + shrink to max_side + store), our path
  (zero-copy view, shrink in the camera's layout, then colour-convert);
- `baseline_kept_ms`: the usual cv_bridge-style path measured in the same process (copy
  the buffer, colour-convert the full image, then shrink), and `speedup` = baseline / ours;
- `skipped_ms`: a frame between sampling slots (the window decides on the stamp alone);
- `per_frame_at_30hz_ms`: average over a 30 Hz stream (2 of 30 frames kept at 2 fps), and
  `stream_speedup` against a subscriber converting every frame the baseline way.
And the window's memory when full (16 frames) with and without shrinking on ingest.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ingest.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import cv2
import numpy as np
from builtin_interfaces.msg import Time

from molmo2_ros.core.frame_window import FrameWindow, fit_to_max_side
from molmo2_ros.core.image_conversion import compressed_to_rgb, image_to_rgb
from molmo2_ros.ros.image_messages import rgb_to_compressed

NS = 1_000_000_000
SIZES = {"640x480": (640, 480), "1080p": (1920, 1080), "4K": (3840, 2160)}
MAX_SIDE = 640
MAX_FRAMES = 16


def scene(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.dstack([(xs * 255 // width), (ys * 255 // height), np.full_like(xs, 90)]).astype(np.uint8)
    cv2.circle(image, (width // 3, height // 2), height // 6, (220, 40, 40), -1)
    return image


def raw_message(rgb: np.ndarray, encoding: str):
    from sensor_msgs.msg import Image

    if encoding == "bgr8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    else:  # yuv422 = UYVY
        yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV)
        pixels = np.empty(rgb.shape[:2] + (2,), np.uint8)
        pixels[:, :, 1] = yuv[:, :, 0]
        pixels[:, 0::2, 0] = yuv[:, 0::2, 1]
        pixels[:, 1::2, 0] = yuv[:, 0::2, 2]
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                step=rgb.shape[1] * pixels.shape[2])
    msg.data = pixels.tobytes()
    return msg


def baseline_raw(msg, max_side: int) -> np.ndarray:
    """cv_bridge-style: copy to an array, convert the full image, then shrink."""
    channels = 3 if msg.encoding == "bgr8" else 2
    pixels = np.array(msg.data, np.uint8).reshape(msg.height, msg.width, channels)
    code = cv2.COLOR_BGR2RGB if msg.encoding == "bgr8" else cv2.COLOR_YUV2RGB_UYVY
    return fit_to_max_side(cv2.cvtColor(pixels, code), max_side)


def baseline_compressed(msg, max_side: int) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    return fit_to_max_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side)


def best_ms(fn, repeats: int) -> float:
    """Best of `repeats` runs: the least disturbed by other processes on a shared CPU."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.min(times) * 1e3)


def kept_cost(convert, repeats: int) -> float:
    """A frame the window keeps: each call is a fresh slot (stamps 1 s apart)."""
    window = FrameWindow(fps=2, max_seconds=1e6, max_frames=MAX_FRAMES, max_side=MAX_SIDE)
    stamp = [0]

    def add():
        stamp[0] += NS
        assert window.add(stamp[0], convert).keep

    return best_ms(add, repeats)


def skipped_cost(convert, repeats: int) -> float:
    window = FrameWindow(fps=2, max_seconds=1e6, max_frames=MAX_FRAMES, max_side=MAX_SIDE)
    window.add(0, convert)
    stamp = [0]

    def add():
        stamp[0] += 1_000  # 1 us later: never due
        assert not window.add(stamp[0], convert).keep

    return best_ms(add, repeats * 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    results = {}
    for name, (width, height) in SIZES.items():
        rgb = scene(width, height)
        inputs = {"bgr8": raw_message(rgb, "bgr8"), "yuv422": raw_message(rgb, "yuv422"),
                  "jpeg": rgb_to_compressed(rgb, Time(), "cam", fmt="jpeg")}
        for kind, msg in inputs.items():
            if kind == "jpeg":
                ours, base = (lambda m=msg: compressed_to_rgb(m, MAX_SIDE)), \
                             (lambda m=msg: (baseline_compressed(m, MAX_SIDE), (width, height)))
            else:
                ours, base = (lambda m=msg: image_to_rgb(m, MAX_SIDE)), \
                             (lambda m=msg: (baseline_raw(m, MAX_SIDE), (width, height)))
            np.testing.assert_allclose(ours()[0].astype(int), base()[0].astype(int), atol=40)
            kept = kept_cost(ours, args.repeats)
            baseline = kept_cost(base, args.repeats)
            skipped = skipped_cost(ours, args.repeats)
            results[f"{name}/{kind}"] = {
                "message_mb": round(len(msg.data) / 2**20, 2),
                "kept_ms": round(kept, 3), "baseline_kept_ms": round(baseline, 3),
                "speedup": round(baseline / kept, 2),
                "skipped_ms": round(skipped, 4),
                "per_frame_at_30hz_ms": round((2 * kept + 28 * skipped) / 30, 3),
                # A subscriber converting every frame it receives (cv_bridge style):
                "stream_speedup": round(baseline / ((2 * kept + 28 * skipped) / 30), 1),
            }
    memory = {}
    for max_side in (MAX_SIDE, 0):
        window = FrameWindow(fps=2, max_seconds=1e6, max_frames=MAX_FRAMES, max_side=max_side)
        frame4k = scene(3840, 2160)
        for i in range(60):  # 30 s of 2 fps: the window keeps its 16 newest
            window.add(i * NS // 2, frame4k)
        memory[f"4K_window_mb_max_side_{max_side or 'off'}"] = round(window.stats().bytes / 2**20, 1)
    print(json.dumps({
        "bench": "ingest", "max_side": MAX_SIDE, "window_frames": MAX_FRAMES,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "results": results, "memory": memory,
        "memory_ratio_unshrunk_vs_shrunk": round(memory["4K_window_mb_max_side_off"]
                                                 / memory[f"4K_window_mb_max_side_{MAX_SIDE}"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
