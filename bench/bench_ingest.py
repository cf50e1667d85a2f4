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

Depth (VGA and 720p; 16UC1, 32FC1 and compressedDepth PNG), in ms, best of --repeats:
- `ingest_ms`: one depth message into the depth buffer (what the depth callback costs,
  on its own thread: a zero-copy view, for compressedDepth the PNG decode, plus the
  buffer's bookkeeping at steady state);
- `locate_ms`: one point's 3D position (nearest image, 5x5 median, back-projection
  through a plumb_bob camera);
- `buffer_mb`/`buffer_images`: the buffer after 20 s of a 30 Hz depth stream next to a
  window keeping 16 frames at 2 fps (24 remembered, as the node with its defaults);
- `depth_want_ms` vs `colour_kept_ms`: telling the depth buffer about a kept colour frame
  (the camera callback's only extra work with depth on) against a kept VGA bgr8 frame.

Cameras (`cameras`; skipped with `--camera-seconds 0`): the node in its own process with one
camera at 90 Hz, then with three at 30 Hz each (the `cameras` parameter; the same frames per
second, so only their split across cameras differs), each camera a 320x240 bgr8 publisher in
a process of its own: the node's CPU per frame received, (CPU busy - CPU idle) / frames,
alternating for --camera-rounds rounds, medians, and the ratio three / one (issue 29's
target: within 10 %).

Depth flood (`depth_flood`; skipped with `--flood-seconds 0`): the node in its own process
(`molmo2-ros node`, the packaged model, depth on), a colour camera in another process
publishing 320x240 bgr8 at 30 Hz, for `--flood-seconds` s alone and then as long again
with a third process flooding 320x240 16UC1 depth at 200 Hz. From the node's /diagnostics
(one a second): its colour ingest rate (mean and worst second) in each phase, and the
ratio flooded / alone; the depth images it took per second; its CPU use in each phase.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_ingest.py [--repeats 20] [--flood-seconds 10] [--camera-seconds 12]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from builtin_interfaces.msg import Time

from molmo2_ros.core.depth import DepthBuffer, DepthLookup, depth_from_compressed, depth_from_image, locate
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


DEPTH_SIZES = {"VGA": (640, 480), "720p": (1280, 720)}


def depth_message(width: int, height: int, encoding: str):
    """A depth image of a slanted floor with a box on it, as a driver publishes it."""
    import struct

    from sensor_msgs.msg import CompressedImage, Image

    ys, xs = np.mgrid[0:height, 0:width]
    metres = (1.0 + 3.0 * (1 - ys / height) + 0.001 * xs).astype(np.float32)
    metres[height // 3: height // 2, width // 3: width // 2] = 0.8
    metres[::7, ::11] = 0.0  # holes
    if encoding == "compressedDepth":
        png = cv2.imencode(".png", np.round(metres * 1000).astype(np.uint16))[1].tobytes()
        return CompressedImage(format="16UC1; compressedDepth png", data=struct.pack("<iff", 0, 0, 0) + png)
    pixels = np.round(metres * 1000).astype(np.uint16) if encoding == "16UC1" else metres
    return Image(height=height, width=width, encoding=encoding, step=width * pixels.itemsize,
                 data=pixels.tobytes())


def steady_buffer(to_image, repeats: int) -> tuple[DepthBuffer, float, int]:
    """A buffer fed 20 s of a 30 Hz stream (a colour frame kept every 15th), the best
    time of one more message into it, and the newest stamp."""
    buffer = DepthBuffer(tolerance_s=0.05, max_bytes=10**12, recent_s=0.25, max_wanted=24)
    stamp = [0]

    def add():
        stamp[0] += NS // 30
        if (stamp[0] // (NS // 30)) % 15 == 0:
            buffer.want(stamp[0] + 3_000_000)
        buffer.add(to_image(stamp[0]))

    for _ in range(600):
        add()
    return buffer, best_ms(add, repeats * 5), stamp[0]


def depth_costs(repeats: int) -> dict:
    from molmo2_ros.sim.depth_scene import default_camera

    results = {}
    for name, (width, height) in DEPTH_SIZES.items():
        camera = default_camera((width, height), "cam")
        camera = type(camera)(**{**camera.__dict__, "d": (-0.28, 0.09, 0.001, -0.0015, -0.012)})
        for encoding in ("16UC1", "32FC1", "compressedDepth"):
            msg = depth_message(width, height, encoding)
            convert = depth_from_compressed if encoding == "compressedDepth" else depth_from_image
            buffer, ingest, newest = steady_buffer(lambda stamp, m=msg: convert(m, stamp), repeats)
            point = (width * 0.4, height * 0.6)
            lookup = DepthLookup()

            def find():
                position, why = locate(*point, newest, "", (width, height), camera, buffer, lookup)
                assert position is not None, why

            frames, nbytes = buffer.stats()
            entry = {"message_mb": round(len(msg.data) / 2**20, 3), "ingest_ms": round(ingest, 4),
                     "locate_ms": round(best_ms(find, repeats), 4),
                     "buffer_images": frames, "buffer_mb": round(nbytes / 2**20, 1)}
            results[f"{name}/{encoding}"] = entry
    # The camera callback's only extra work with depth on: telling the buffer about a kept
    # frame. Timed alone (a difference of two frame timings drowns in noise), against a
    # kept VGA bgr8 frame.
    rgb_msg = raw_message(scene(640, 480), "bgr8")
    kept = kept_cost(lambda: image_to_rgb(rgb_msg, MAX_SIDE), repeats)
    buffer = DepthBuffer(tolerance_s=0.05, max_bytes=10**12, recent_s=0.25, max_wanted=24)
    counter = [0]

    def want():
        counter[0] += 1
        buffer.want(counter[0] * NS)

    told = best_ms(want, repeats * 100)
    results["VGA/colour_kept_ms"] = round(kept, 4)
    results["VGA/depth_want_ms"] = round(told, 5)
    results["VGA/colour_kept_with_depth_ratio"] = round((kept + told) / kept, 3)
    return results


FLOOD = {"colour_hz": 30.0, "depth_hz": 200.0, "size": (320, 240)}
FLOOD_TOPIC = "/flood/camera/image_raw"
FLOOD_DEPTH_TOPIC = "/flood/camera/depth/image_raw"


def publish(kind: str, hz: float, seconds: float, domain: int, topic: str = "") -> None:
    """A publisher process: `kind` (colour or depth) at `hz` for `seconds` on `topic` (default:
    the flood's), best effort (a driver's sensor QoS), stamped now; prints how many it
    published per second."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from molmo2_ros.ros.image_messages import depth_to_image, rgb_to_image
    from molmo2_ros.ros.messages import to_time

    rclpy.init(domain_id=domain)
    node = rclpy.create_node(f"flood_{kind}")
    topic = topic or (FLOOD_TOPIC if kind == "colour" else FLOOD_DEPTH_TOPIC)
    publisher = node.create_publisher(Image, topic, qos_profile_sensor_data)
    width, height = FLOOD["size"]
    rgb, metres = scene(width, height), np.full((height, width), 1.5, np.float32)
    time.sleep(2.0)   # discovery
    sent, started = 0, time.monotonic()
    while (now := time.monotonic()) < started + seconds:
        stamp = to_time(time.time_ns())
        publisher.publish(rgb_to_image(rgb, stamp, "cam", "bgr8") if kind == "colour"
                          else depth_to_image(metres, stamp, "cam"))
        sent += 1
        time.sleep(max(0.0, started + sent / hz - time.monotonic()))
    print(json.dumps({"published_hz": round(sent / (now - started), 1)}))
    node.destroy_node()
    rclpy.shutdown()


def cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the processes in process group `pgid`."""
    total = 0
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def depth_flood(seconds: float) -> dict:
    """The node's colour ingest with and without a 200 Hz depth flood beside it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ros"))
    from node_harness import Harness, NodeProcess, write_params

    domain = 200 + (os.getpid() + 11) % 30
    with tempfile.TemporaryDirectory(prefix="molmo2_flood_") as tmp:
        params = write_params(Path(tmp) / "params.yaml", image_topic=FLOOD_TOPIC, depth_topic=FLOOD_DEPTH_TOPIC,
                              diagnostics_period=1.0)
        node = NodeProcess(params, domain, Path(tmp) / "node.log")
        harness = Harness(domain, FLOOD_TOPIC)
        children = []

        def start(kind: str, hz: float, run_s: float) -> subprocess.Popen:
            children.append(subprocess.Popen([sys.executable, __file__, "--publish", kind, "--hz", str(hz),
                                              "--seconds", str(run_s), "--domain", str(domain)],
                                             stdout=subprocess.PIPE, text=True))
            return children[-1]

        def phase() -> dict:
            """Diagnostics over `seconds` (the first second's dropped: a rate over the change)."""
            harness.wait_diag(lambda d: True, 30)
            first, cpu = len(harness.diagnostics), cpu_seconds(node.proc.pid)
            started = time.monotonic()
            time.sleep(seconds)
            cpu = (cpu_seconds(node.proc.pid) - cpu) / (time.monotonic() - started)
            diags = harness.diagnostics[first + 1:]
            rates = [float(d["ingest_rate_hz"]) for d in diags]
            depth = [int(d["depth_received"]) for d in diags]
            return {"colour_hz_mean": round(float(np.mean(rates)), 2), "colour_hz_worst_second": min(rates),
                    "depth_taken_hz": round((depth[-1] - depth[0]) / max(len(depth) - 1, 1), 1),
                    "node_cpu_cores": round(cpu, 2)}

        try:
            harness.wait_diag(lambda d: d["state"] == "active", timeout=300, what="the node to become active")
            colour = start("colour", FLOOD["colour_hz"], 2 * seconds + 10)
            harness.wait_diag(lambda d: float(d["ingest_rate_hz"]) > 0, 30, "colour frames at the node")
            alone = phase()
            flood = start("depth", FLOOD["depth_hz"], seconds + 6)
            harness.wait_diag(lambda d: int(d["depth_received"]) > 0, 30, "depth images at the node")
            flooded = phase()
            published = {"colour": json.loads(colour.communicate(timeout=60)[0]),
                         "depth": json.loads(flood.communicate(timeout=60)[0])}
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
            harness.close()
            node.stop()
    return {"colour_hz": FLOOD["colour_hz"], "depth_hz": FLOOD["depth_hz"], "size": "x".join(map(str, FLOOD["size"])),
            "phase_s": seconds, "published": published, "alone": alone, "with_depth_flood": flooded,
            "colour_rate_ratio_mean": round(flooded["colour_hz_mean"] / alone["colour_hz_mean"], 3),
            "colour_rate_ratio_worst_second": round(flooded["colour_hz_worst_second"]
                                                    / alone["colour_hz_worst_second"], 3)}


CAMERA_RUNS = {"1_camera_90hz": (1, 90.0), "3_cameras_30hz": (3, 30.0)}   # the same frames per second


def camera_ingest(seconds: float, rounds: int) -> dict:
    """The node's CPU per camera frame with one camera at 90 Hz and with three at 30 Hz each
    (the same frames per second: the per-frame cost grows with the machine's load, so only
    the split across cameras differs), 320x240 bgr8, each camera publishing from its own
    process; (CPU busy - CPU idle) / frames the node received (its /diagnostics), each
    phase `seconds` long. The two runs alternate for `rounds` rounds; medians."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ros"))
    from node_harness import Harness, NodeProcess, write_params

    def run(n: int, hz: float) -> dict:
        names = ["front", "wrist", "rear"][:n]
        domain = 200 + (os.getpid() + 17 + n) % 30
        with tempfile.TemporaryDirectory(prefix="molmo2_cameras_") as tmp:
            own = {f"cameras.{c}.image_topic": f"/{c}/image_raw" for c in names}
            params = write_params(Path(tmp) / "params.yaml", cameras=names, diagnostics_period=1.0, **own)
            node = NodeProcess(params, domain, Path(tmp) / "node.log")
            harness = Harness(domain, "/unused")
            children = []

            def cameras() -> list[dict]:
                return [d for d in harness.diagnostics if ": camera " in d["_name"]]

            def received() -> int:
                return sum({d["_name"]: int(d["frames_received"]) for d in cameras()}.values())

            try:
                harness.wait_diag(lambda d: d.get("state") == "active", timeout=300, what="the node to be active")
                cpu, started = cpu_seconds(node.proc.pid), time.monotonic()
                time.sleep(seconds)
                idle = (cpu_seconds(node.proc.pid) - cpu) / (time.monotonic() - started)
                for c in names:
                    children.append(subprocess.Popen(
                        [sys.executable, __file__, "--publish", "colour", "--hz", str(hz),
                         "--seconds", str(seconds + 15), "--domain", str(domain), "--topic", f"/{c}/image_raw"],
                        stdout=subprocess.PIPE, text=True))
                harness.wait_for(lambda: len({d["_name"] for d in cameras() if float(d["ingest_rate_hz"]) > 0})
                                 == n, 60, "frames from every camera")
                time.sleep(2.0)
                frames, cpu, started = received(), cpu_seconds(node.proc.pid), time.monotonic()
                time.sleep(seconds)
                busy = (cpu_seconds(node.proc.pid) - cpu) / (time.monotonic() - started)
                elapsed = time.monotonic() - started
                time.sleep(1.5)   # the diagnostics of the phase's last second
                frames = received() - frames
            finally:
                for child in children:
                    child.kill()
                harness.close()
                node.stop()
        return {"frames_per_s": frames / elapsed, "node_cpu_idle_cores": idle, "node_cpu_busy_cores": busy,
                "per_frame_ms": (busy - idle) * elapsed / max(frames, 1) * 1000}

    measured = {name: [] for name in CAMERA_RUNS}
    for _ in range(rounds):
        for name, (n, hz) in CAMERA_RUNS.items():
            measured[name].append(run(n, hz))
    medians = {name: {key: round(float(np.median([r[key] for r in runs])), 3) for key in runs[0]}
               for name, runs in measured.items()}
    for name, runs in measured.items():
        medians[name]["per_frame_ms_each_round"] = [round(r["per_frame_ms"], 3) for r in runs]
    return {"size": "x".join(map(str, FLOOD["size"])), "phase_s": seconds, "rounds": rounds, **medians,
            "per_frame_ratio_3_vs_1": round(medians["3_cameras_30hz"]["per_frame_ms"]
                                            / medians["1_camera_90hz"]["per_frame_ms"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--flood-seconds", type=float, default=10.0,
                        help="seconds of each phase of the depth flood (0: skip it)")
    parser.add_argument("--camera-seconds", type=float, default=12.0,
                        help="seconds of each phase of the one- and three-camera runs (0: skip them)")
    parser.add_argument("--camera-rounds", type=int, default=3, help="rounds of the one- and three-camera runs")
    parser.add_argument("--publish", choices=("colour", "depth"), help=argparse.SUPPRESS)  # a flood publisher
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    parser.add_argument("--hz", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--domain", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        publish(args.publish, args.hz, args.seconds, args.domain, args.topic)
        return
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
        "depth": depth_costs(args.repeats),
        "depth_flood": depth_flood(args.flood_seconds) if args.flood_seconds > 0 else None,
        "cameras": camera_ingest(args.camera_seconds, args.camera_rounds) if args.camera_seconds > 0 else None,
    }, indent=2))


if __name__ == "__main__":
    main()
