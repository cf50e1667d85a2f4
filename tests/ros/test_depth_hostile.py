"""Hostile depth and CameraInfo input (issue 28, reproductions 1 and 3-7): the node in its
own OS process with the depth input on, fed over DDS by a separate publisher (the depth
camera of tests/ros/depth_camera.py), never dies, never publishes a non-finite position
as valid, refuses depth bombs before decoding them with resident memory bounded, keeps
its depth through one wild stamp, names the true reason a point has no position, and
gives camera-rate objects the depth image of their own stamp. One node process serves
the module (the memory check switches it to compressedDepth last)."""
from __future__ import annotations

import os
import struct
import sys
import threading
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage

from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.ros.image_messages import camera_info, depth_to_image
from molmo2_ros.ros.messages import from_time, to_time

sys.path.insert(0, str(Path(__file__).parent))
from depth_camera import (DEPTH_TOPIC, FRAME, assert_flagged, assert_within_one_percent,  # noqa: E402
                          serve)
from node_harness import NODE, png_bomb  # noqa: E402

MAX_PIXELS = 4_000_000   # the node's max_image_pixels here (colour frames are 160x120)
BUFFER_MB = 8            # its depth_buffer_mb
MiB = 2**20


@pytest.fixture(scope="module")
def hostile(pointing_model_dir, tmp_path_factory):
    yield from serve(pointing_model_dir, tmp_path_factory.mktemp("depth_hostile"), 50 + (os.getpid() + 61) % 100,
                     max_image_pixels=MAX_PIXELS, depth_buffer_mb=float(BUFFER_MB),
                     image_reliability="reliable")   # best effort drops the large messages in transport


def refused_infos(good) -> dict[str, object]:
    """What the log says -> a CameraInfo the node must refuse."""
    def info(**change):
        msg = deepcopy(good)
        for name, value in change.items():
            setattr(msg, name, value)
        return msg

    k = list(good.k)
    return {
        "non-finite principal point": info(k=k[:2] + [float("nan")] + k[3:]),
        "non-finite principal point (cx=": info(k=k[:5] + [float("inf")] + k[6:]),
        "non-finite distortion coefficients D=[0.1, nan": info(d=[0.1, float("nan"), 0.0, 0.0, 0.0]),
        "non-finite distortion coefficients D=[inf": info(d=[float("inf"), 0.0, 0.0, 0.0, 0.0]),
        "plumb_bob has 5 coefficients, D has 8": info(d=[0.01] * 8),
        "rational_polynomial has 8 coefficients, D has 5": info(distortion_model="rational_polynomial", d=[0.01] * 5),
        "distortion model 'equidistant' is not supported": info(distortion_model="equidistant", d=[0.0] * 4),
        "camera info refused: malformed stamp: nanosec 1000000005": info(header=deepcopy(good.header)),
    }


def test_bad_stamps_and_camera_info_never_kill_the_node_nor_make_a_non_finite_position_valid(hostile):
    """Reproductions 1 and 3, and 6's bad calibration after a good one and diagnostics that
    keep an old error: 3D stops with the true reason, and comes back with good info."""
    harness, node, camera = hostile
    camera.publish()
    assert_within_one_percent(camera.ask(), camera.scene)   # a good calibration first
    infos = refused_infos(camera_info(camera.scene.camera, Time()))
    infos["camera info refused: malformed stamp: nanosec 1000000005"].header.stamp = Time(sec=5, nanosec=10**9 + 5)
    bad_stamp_depth = depth_to_image(camera.scene.depth_m(0), Time(sec=5, nanosec=10**9 + 5), FRAME)
    camera.publish(infos=list(infos.values()), extra_depth={0: [bad_stamp_depth]})
    g = camera.ask()
    assert_flagged(g, node, harness, "camera info refused (")
    assert not any(p.has_position and not np.isfinite([p.position.x, p.position.y, p.position.z]).all()
                   for p in g.points)
    for said in [*infos, "depth image dropped: malformed stamp: nanosec 1000000005"]:
        harness.wait_for(lambda: said in node.log(), 30, f"{said!r} in the node's log")
    d = harness.wait_diag(lambda d: True)
    assert d["camera_info"] == "refused" and d["camera_info_error"], d
    assert int(d["camera_info_refused"]) >= len(infos) and int(d["depth_malformed"]) >= 1
    camera.publish()   # good ones again: 3D back, no error left in /diagnostics
    assert_within_one_percent(camera.ask(), camera.scene)
    d = harness.wait_diag(lambda d: True)
    assert (d["camera_info"], d["camera_info_error"], d["depth_last_error"]) == ("yes", "", ""), d
    assert node.alive()


def test_malformed_depth_is_the_reason_given_not_stale_depth(hostile):
    """Reproduction 6: a malformed depth image of the frame is named as such."""
    harness, node, camera = hostile

    def truncated(stamp):
        msg = depth_to_image(camera.scene.depth_m(0), stamp, FRAME)
        msg.data = msg.data[:-2]
        return msg

    camera.publish(depth_message=truncated)
    assert_flagged(camera.ask(), node, harness, "the depth image of the frame was dropped as malformed (depth data has")


def test_one_wild_depth_stamp_does_not_cost_the_answer_its_3d(hostile):
    """Reproduction 5: one depth image stamped 11 s ahead, then one 100 s back, arriving
    after the window kept its frames: held back, never confirmed, the buffer stays."""
    harness, node, camera = hostile
    refused = int(harness.wait_diag(lambda d: True)["depth_refused"])
    last = harness._next_stamp + 13 * 100_000_000   # the batch's last stamp (13 frames, 0.1 s apart)
    depth_m = camera.scene.depth_m(0)
    wild = [depth_to_image(depth_m, to_time(last + 11 * 10**9), FRAME),
            depth_to_image(depth_m, to_time(last - 100 * 10**9), FRAME)]
    camera.publish(extra_depth={12: wild})
    assert camera.batch[-1] == last
    assert_within_one_percent(camera.ask(), camera.scene)
    assert "held back unless the next depth image confirms the jump" in node.log()
    assert int(harness.wait_diag(lambda d: True)["depth_refused"]) >= refused + 2


def test_camera_rate_objects_find_the_depth_image_of_their_own_stamp(hostile):
    """Reproduction 7: each depth image is published before its colour frame with the same
    stamp; the camera callback may still run first. Every camera-rate object has 3D."""
    harness, node, camera = hostile
    tracked = []
    sub = harness.node.create_subscription(TrackedObjectArray, f"{NODE}/tracked_objects", tracked.append,
                                           QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    try:
        time.sleep(1.0)   # discovery
        camera.publish()
        g = camera.ask()
        camera.publish(40)
        batch = set(camera.batch)
        harness.wait_for(lambda: sum(from_time(m.header.stamp) in batch for m in tracked) >= 30, 30,
                         "the batch's tracked objects")
        ours = [m for m in tracked if m.query_id == g.query_id and from_time(m.header.stamp) in batch]
        objects = [o for m in ours for o in m.objects if not o.lost]
        assert len(objects) >= 30
        without = [from_time(m.header.stamp) for m in ours for o in m.objects if not o.lost and not o.has_position]
        assert not without, f"{len(without)} of {len(objects)} camera-rate objects without 3D"
    finally:
        harness.node.destroy_subscription(sub)


class PeakRss:
    """The node's resident memory, sampled every 10 ms on a thread until stopped."""

    def __init__(self, node):
        self.node, self.peak, self._stop = node, node.rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.node.rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_depth_bombs_are_refused_before_decoding_with_resident_memory_bounded(hostile):
    """Reproduction 4: raw depth over max_image_pixels or depth_buffer_mb, and a 1.75 MB
    compressedDepth PNG declaring 30000x30000 16-bit pixels (1.8 GB decoded), are refused
    before decoding; peak and retained resident memory stay within the bounds docs/node.md
    states, the buffer within depth_buffer_mb, and the node answers with 3D after."""
    harness, node, camera = hostile
    camera.publish()
    before = harness.wait_diag(lambda d: True)
    baseline = node.rss_bytes()
    peak = PeakRss(node)
    too_many_pixels = depth_to_image(np.ones((2000, 2400), np.float32), to_time(harness.next_stamp()), FRAME)
    too_many_bytes = depth_to_image(np.ones((2000, 2000), np.float32), to_time(harness.next_stamp()), FRAME, "32FC1")
    # one at a time, each counted before the next is sent: the node's keep-last history
    # would drop one still waiting when newer depth images arrive (a loaded machine)
    for n, msg in enumerate([too_many_pixels, too_many_bytes], 1):   # 4.8 Mpx, 9.2 MiB; 4.0 Mpx, 15.3 MiB
        camera.depth_pub.publish(msg)
        harness.wait_diag(lambda d: int(d["depth_too_large"]) >= int(before["depth_too_large"]) + n, 60,
                          f"raw depth image {n} refused as too large")
    camera.publish()
    raw_peak = peak.stop()
    assert int(harness.wait_diag(lambda d: True)["depth_bytes"]) <= BUFFER_MB * MiB
    assert_within_one_percent(camera.ask(), camera.scene)
    raw_retained = node.rss_bytes()
    assert "more than max_image_pixels 4000000: refused before decoding" in node.log()
    assert "more than depth_buffer_mb 8: refused before decoding" in node.log()

    assert harness.reconfigure(depth_compressed=True)
    try:
        compressed_pub = harness.node.create_publisher(CompressedImage, DEPTH_TOPIC + "/compressedDepth",
                                                       QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        harness.wait_for(lambda: compressed_pub.get_subscription_count() > 0, 30,
                         "the node's compressedDepth subscription")
        harness.publish_frames(3)
        baseline_compressed = node.rss_bytes()
        peak = PeakRss(node)
        bomb = CompressedImage(format="16UC1; compressedDepth png",
                               data=struct.pack("<iff", 0, 0.0, 0.0) + png_bomb(30000, 30000, bit_depth=16))
        bomb.header.stamp, bomb.header.frame_id = to_time(harness.next_stamp()), FRAME
        compressed_pub.publish(bomb)
        harness.wait_diag(lambda d: int(d["depth_too_large"]) >= 1, 60, "the bomb refused")
        harness.publish_frames(3)
        bomb_peak = peak.stop()
        bomb_retained = node.rss_bytes()
        assert "30000x30000 = 900000000 pixels, more than max_image_pixels 4000000: refused before decoding" \
            in node.log()
        assert node.alive()
    finally:
        assert harness.reconfigure(depth_compressed=False)
    mib = {name: round(value / MiB, 1) for name, value in [
        ("raw_peak", raw_peak - baseline), ("raw_retained", raw_retained - baseline),
        ("bomb_peak", bomb_peak - baseline_compressed), ("bomb_retained", bomb_retained - baseline_compressed)]}
    print("resident memory over the baseline, MiB:", mib)
    # The bounds docs/node.md states: what the transport needs for the messages themselves
    # (they arrive whole, are copied into Python and its buffers are kept for reuse), none
    # of it in the depth buffer (checked above); nothing like the decoded 1.8 GB.
    raw_mib = (len(too_many_pixels.data) + len(too_many_bytes.data)) / MiB   # 24.5
    assert mib["raw_peak"] < 4 * raw_mib and mib["raw_retained"] < 2 * raw_mib, mib
    assert mib["bomb_peak"] < 32 and mib["bomb_retained"] < 16, mib    # a 1.75 MB message
