"""Runs `molmo2-ros node` in its own OS process, exactly as users start it, and talks to
it over DDS from a private rclpy context (camera publisher, action client, topics)."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from molmo2_ros.action import Ground
from molmo2_ros.msg import Grounding as GroundingMsg
from molmo2_ros.ros.image_messages import rgb_to_compressed, rgb_to_image
from molmo2_ros.ros.messages import from_time, to_time
from molmo2_ros.sim.shapes_world import COLORS

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = Path(sys.executable).parent / "molmo2-ros"
NODE = "/molmo2_grounding"


def write_params(path: Path, **overrides) -> Path:
    """The package's params file with `overrides` applied."""
    params = yaml.safe_load((ROOT / "config" / "molmo2_grounding.yaml").read_text())
    params["/**"]["ros__parameters"].update(overrides)
    path.write_text(yaml.safe_dump(params))
    return path


class NodeProcess:
    """`molmo2-ros node --ros-args --params-file FILE` in its own process group (the
    ros_wheels bootstrapper re-executes Python, so signals go to the whole group)."""

    def __init__(self, params_file: Path, domain_id: int, log_path: Path):
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([str(CONSOLE), "node", "--ros-args", "--params-file", str(params_file)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=ROOT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text()

    def rss_bytes(self) -> int:
        """Resident memory of every process in the node's process group."""
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                pgid = int(stat.rsplit(")", 1)[1].split()[2])
                if pgid != self.proc.pid:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                continue
        return total

    def stop(self) -> int:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Harness:
    """The test side: a camera, an action client, result/diagnostics subscribers."""

    def __init__(self, domain_id: int, image_topic: str, frame_id: str = "test_camera"):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("test_harness", context=self.context)
        self.frame_id = frame_id
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, image_topic, reliable)
        self.compressed_pub = self.node.create_publisher(CompressedImage, image_topic + "/compressed", reliable)
        self.query_pub = self.node.create_publisher(String, f"{NODE}/query", reliable)
        self.groundings: list[GroundingMsg] = []
        self.diagnostics: list[dict] = []
        self.node.create_subscription(GroundingMsg, f"{NODE}/grounding", self.groundings.append, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        self.action = ActionClient(self.node, Ground, f"{NODE}/ground")
        self.published_stamps: list[int] = []
        self._next_stamp = time.time_ns()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("molmo2_grounding"):
                self.diagnostics.append({kv.key: kv.value for kv in status.values}
                                        | {"_message": status.message, "_name": status.name, "_level": status.level})

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    # --- camera -----------------------------------------------------------------------
    def next_stamp(self, step_s: float = 0.1) -> int:
        self._next_stamp += round(step_s * 1e9)
        return self._next_stamp

    def stamps_from_now(self, lag_s: float = 0.3) -> None:
        """Continue the stamps from the wall clock less `lag_s` (never backwards), so that
        transforms another process stamps with its clock cover the frames' stamps."""
        self._next_stamp = max(self._next_stamp, time.time_ns() - round(lag_s * 1e9))

    def frame(self, i: int, size=(160, 120)) -> np.ndarray:
        width, height = size
        image = np.full((height, width, 3), 200, np.uint8)
        x = 10 + (i * 7) % (width - 30)
        image[height // 3: height // 3 + 20, x: x + 20] = (220, 40, 40)
        return image

    def publish_frames(self, n: int, hz: float = 10.0, compressed: bool = False) -> list[int]:
        """`n` frames stamped 1/hz apart (and published at that pace); their stamps."""
        stamps = []
        for i in range(n):
            stamp = self.next_stamp(1.0 / hz)
            rgb = self.frame(i)
            if compressed:
                self.compressed_pub.publish(rgb_to_compressed(rgb, to_time(stamp), self.frame_id))
            else:
                self.image_pub.publish(rgb_to_image(rgb, to_time(stamp), self.frame_id))
            stamps.append(stamp)
            time.sleep(1.0 / hz)
        self.published_stamps += stamps
        return stamps

    def stream_frames(self, hz: float = 10.0) -> threading.Event:
        """Publish frames at `hz` on a thread until the returned event is set."""
        stop = threading.Event()

        def loop():
            i = 0
            while not stop.wait(1.0 / hz):
                self.image_pub.publish(rgb_to_image(self.frame(i), to_time(self.next_stamp(1.0 / hz)),
                                                    self.frame_id))
                i += 1

        threading.Thread(target=loop, daemon=True).start()
        return stop

    def publish_raw(self, msg, stamp_ns: int | None = None) -> None:
        if stamp_ns is not None:
            msg.header.stamp = to_time(stamp_ns)
        self.image_pub.publish(msg)

    # --- node control ------------------------------------------------------------------
    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_diag(self, predicate, timeout: float = 30.0, what: str = "diagnostics") -> dict:
        start = len(self.diagnostics)
        return self.wait_for(lambda: next((d for d in self.diagnostics[start:] if predicate(d)), None),
                             timeout, what)

    def _call(self, srv_type, name: str, request, timeout: float = 30.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
            future = client.call_async(request)
            self.wait_for(future.done, timeout, f"a reply from {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self._call(ChangeState, f"{NODE}/change_state", request, timeout=60.0).success

    def set_params(self, **values) -> None:
        results = self.set_params_results(**values)
        assert all(r.successful for r in results), results

    def set_params_results(self, **values) -> list:
        """One SetParametersResult per value (successful, or the reason it was refused)."""
        params = []
        for name, value in values.items():
            pv = ParameterValue()
            if isinstance(value, str):
                pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
            elif isinstance(value, bool):
                pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
            elif isinstance(value, int):
                pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
            else:
                pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, float(value)
            params.append(Parameter(name=name, value=pv))
        return self._call(SetParameters, f"{NODE}/set_parameters", SetParameters.Request(parameters=params)).results

    def reconfigure(self, **params) -> bool:
        """deactivate -> cleanup -> set params -> configure -> activate; True when active."""
        assert self.transition(Transition.TRANSITION_DEACTIVATE)
        assert self.transition(Transition.TRANSITION_CLEANUP)
        if params:
            self.set_params(**params)
        if not self.transition(Transition.TRANSITION_CONFIGURE):
            return False
        return self.transition(Transition.TRANSITION_ACTIVATE)

    # --- queries -----------------------------------------------------------------------
    def send_goal(self, query: str, task: int = 0, window_seconds: float = 0.0, max_frames: int = 0,
                  cameras: tuple[str, ...] = ()):
        """Send a goal; returns (goal_handle, feedback stages list)."""
        assert self.action.wait_for_server(timeout_sec=30), "action server not available"
        stages: list[int] = []
        future = self.action.send_goal_async(
            Ground.Goal(query=query, task=task, window_seconds=window_seconds, max_frames=max_frames,
                        cameras=list(cameras)),
            feedback_callback=lambda m: stages.append(m.feedback.stage))
        handle = self.wait_for(lambda: future.result() if future.done() else None, 30, "goal acceptance")
        assert handle.accepted
        return handle, stages

    def result(self, handle, timeout: float = 120.0):
        """(status, Ground.Result) of a sent goal."""
        future = handle.get_result_async()
        self.wait_for(future.done, timeout, "the goal's result")
        return future.result().status, future.result().result

    def ask(self, query: str, task: int = 0, timeout: float = 120.0, **goal):
        handle, stages = self.send_goal(query, task, **goal)
        status, result = self.result(handle, timeout)
        return status, result, stages


def png_bomb(width: int = 12000, height: int = 12000, bit_depth: int = 8) -> bytes:
    """A valid grey PNG of width x height black pixels, 8- or 16-bit: ~140 KB for 12000 x
    12000 at 8 bits, which decode to 144 MB (432 MB as RGB); ~1.75 MB for 30000 x 30000 at
    16 bits (1.8 GB). Built without compressing every row: after a full flush deflate
    starts afresh, so each further block of (identical) rows compresses to the same bytes,
    and the Adler-32 of zeros is known."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + width * bit_depth // 8)  # filter byte 0 + the pixels
    per_block = max(1, min(height, 2**23 // len(row)))   # rows compressed at once: up to 8 MB
    blocks, rest = divmod(height, per_block)
    packer = zlib.compressobj(9)
    head = packer.compress(row * rest) + packer.flush(zlib.Z_FULL_FLUSH)   # with the zlib header
    block = packer.compress(row * per_block) + packer.flush(zlib.Z_FULL_FLUSH)
    adler = (len(row) * height % 65521) << 16 | 1                          # of len(row) * height zeros
    idat = head + block * blocks + b"\x03\x00" + struct.pack(">I", adler)   # and a final empty block
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def on_colour(rgb: np.ndarray, colour: str, x: float, y: float) -> bool:
    """The evaluation's hit rule (docs/training.md): on the object of `colour`, or within 8 %
    of the image diagonal of it (the object's pixels found by their colour)."""
    h, w = rgb.shape[:2]
    ys, xs = np.nonzero(np.abs(rgb.astype(int) - np.array(COLORS[colour])).sum(axis=-1) < 60)
    assert len(xs), f"nothing {colour} in the frame"
    return bool(np.hypot(xs - x, ys - y).min() <= 0.08 * np.hypot(w, h))


def stamps_of(msg: GroundingMsg) -> set[int]:
    return {from_time(s) for s in msg.frame_stamps}
