"""Per-frame cost of camera-rate propagation (TrackPropagator.add_frame with N points).

Scene: a textured image (smoothed noise, like a real camera view) panning by a known
sub-pixel shift per frame; N points anchored on it. Per resolution (640x480, 1080p) and
N (1, 10, 50) it reports ms per frame with the default flow downscale (longer side 640)
and, as the baseline measured in the same process, the same at full resolution
(flow_max_side=0), plus the bare frame conversion cost (RGB -> gray -> downscale) that
every frame pays even without points. Also the one-off latency compensation when an
answer arrives (0.8 s of buffered frames at 30 Hz).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_propagation.py [--frames 60]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import cv2
import numpy as np

from molmo2_ros.core.grounding import GroundedPoint, Grounding, Task
from molmo2_ros.core.propagation import TrackPropagator

FPS = 30
SHIFT_PX = (1.3, 0.7)        # pan per frame, source pixels
LATENCY_FRAMES = 24          # answer arrives 0.8 s after its frame


def scene(width: int, height: int, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pad = int(np.ceil(max(SHIFT_PX) * n)) + 2
    base = rng.integers(0, 256, (height + pad, width + pad, 3), dtype=np.uint8)
    base = cv2.GaussianBlur(base, (0, 0), 3.0)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    frames = []
    for i in range(n):
        m = np.float32([[1, 0, -SHIFT_PX[0] * i], [0, 1, -SHIFT_PX[1] * i]])
        frames.append(cv2.warpAffine(base, m, (width, height), flags=cv2.INTER_LINEAR))
    return frames


def answer(n_points: int, width: int, height: int, stamp_ns: int) -> Grounding:
    rng = np.random.default_rng(1)
    xs = rng.uniform(0.2, 0.8, n_points) * width
    ys = rng.uniform(0.2, 0.8, n_points) * height
    return Grounding(Task.POINT, "bench", points=[
        GroundedPoint(stamp_ns, float(x), float(y), k + 1, "thing")
        for k, (x, y) in enumerate(zip(xs, ys))])


def per_frame_ms(frames, n_points: int, flow_max_side: int) -> dict:
    """Anchor n_points on frame 0 (answer arriving LATENCY_FRAMES later), then time
    add_frame on the remaining frames."""
    h, w = frames[0].shape[:2]
    stamps = [1_000_000_000 + round(i * 1e9 / FPS) for i in range(len(frames))]
    prop = TrackPropagator(flow_max_side=flow_max_side, max_points=max(50, n_points))
    for i in range(LATENCY_FRAMES + 1):
        prop.add_frame(frames[i], stamps[i])
    t0 = time.perf_counter()
    warnings = prop.anchor(answer(n_points, w, h, stamps[0]))
    compensation_ms = (time.perf_counter() - t0) * 1e3
    assert not warnings, warnings
    times = []
    for i in range(LATENCY_FRAMES + 1, len(frames)):
        t0 = time.perf_counter()
        prop.add_frame(frames[i], stamps[i])
        times.append(time.perf_counter() - t0)
    snap = prop.current()
    alive = [o for o in snap.objects if not o.lost]
    # Accuracy check of the run being timed: the pan is known.
    i = len(frames) - 1
    truth = answer(n_points, w, h, 0).points
    errs = [np.hypot(o.x - (p.x - SHIFT_PX[0] * i), o.y - (p.y - SHIFT_PX[1] * i))
            for o in alive for p in truth if p.object_id == o.object_id]
    ms = float(np.median(times) * 1e3)
    return {
        "ms_per_frame": round(ms, 3),                       # median
        "ms_per_frame_min": round(float(np.min(times) * 1e3), 3),  # least disturbed by load
        "hz": round(1e3 / ms, 1),
        "latency_compensation_ms": round(compensation_ms, 2),
        "points_alive": len(alive),
        "max_error_px": round(float(max(errs, default=float("nan"))), 2),
    }


def conversion_ms(frames, flow_max_side: int) -> float:
    h, w = frames[0].shape[:2]
    f = flow_max_side / max(h, w)
    size = (round(w * f), round(h * f))
    times = []
    for frame in frames:
        t0 = time.perf_counter()
        cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per run (>= 30)")
    args = ap.parse_args()
    n_frames = max(args.frames, LATENCY_FRAMES + 6)
    cv2.setNumThreads(1)
    results = []
    for name, (w, h) in (("640x480", (640, 480)), ("1080p", (1920, 1080))):
        frames = scene(w, h, n_frames)
        conv = conversion_ms(frames, 640)
        for n in (1, 10, 50):
            fast = per_frame_ms(frames, n, 640)
            full = per_frame_ms(frames, n, 0)
            results.append({
                "resolution": name, "points": n,
                "downscaled_640": fast,
                "baseline_full_resolution": full,
                "speedup_vs_full_resolution": round(
                    full["ms_per_frame"] / fast["ms_per_frame"], 2),
                "conversion_only_ms": round(conv, 3),
                "ratio_to_conversion_only": round(fast["ms_per_frame"] / conv, 2),
                "camera_rate_30hz": fast["hz"] >= 30,
            })
    print(json.dumps({
        "bench": "propagation",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cv2_threads": cv2.getNumThreads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1m": round(os.getloadavg()[0], 2),   # other work on the machine
        "frames_per_run": n_frames,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
