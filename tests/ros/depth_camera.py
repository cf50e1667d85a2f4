"""The depth camera of the depth node tests (tests/ros/test_depth_node.py,
test_depth_hostile.py): a static shapes scene (each shape a plate at a known distance
before a background plane, molmo2_ros/sim/depth_scene.py) published as colour frame,
registered depth image and CameraInfo per stamp, like a depth camera's driver, and the
checks both modules make on the node's answers.

The pointing model answers "red square" with (500, 500) on the first frame and
(250, 750) on the second (tests/ros/conftest.py), i.e. colour pixels (80, 60) and
(40, 90) of a 160x120 image; the scene is chosen so both lie on a shape."""
from __future__ import annotations

import time

import numpy as np
from action_msgs.msg import GoalStatus
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from molmo2_ros.core.depth import CameraModel
from molmo2_ros.ros.image_messages import camera_info, depth_to_image, rgb_to_image
from molmo2_ros.ros.messages import from_time, to_time
from molmo2_ros.sim.depth_scene import DepthScene, default_camera
from molmo2_ros.sim.shapes_world import make_clip
from node_harness import Harness, NodeProcess, write_params

TOPIC = "/depth_test/camera/image_raw"
DEPTH_TOPIC = "/depth_test/camera/depth/image_raw"
INFO_TOPIC = "/depth_test/camera/camera_info"     # the default: camera_info beside image_topic
SIZE = (160, 120)
ANSWER_PIXELS = [(80.0, 60.0), (40.0, 90.0)]      # the pointing model's two points, in order
PLUMB_BOB = (-0.3, 0.08, 0.001, -0.001, 0.0)   # with a wide (~100 degree) lens: fx = 0.6 width
FRAME = "test_camera"
BATCH = 13   # frames per check at 10 Hz: the window's 2 frames (0.5 s apart) are among them


def static_scene() -> tuple[DepthScene, np.ndarray]:
    """The first shapes clip (static) whose shapes cover both answer pixels with a margin
    of a half-resolution depth patch; and its colour frame with fine texture added (so
    camera-rate tracking has something to follow; the shapes stay recognisable)."""
    for seed in range(200):
        clip = make_clip(seed, n_frames=1, size=SIZE, n_objects=3, size_range=(0.2, 0.3), speed_range=(0.0, 0.0))
        scene = DepthScene(clip, default_camera(SIZE, FRAME))
        if all(scene.z_at(0, x, y) < scene.background_m and scene.flat(0, x, y, 6) for x, y in ANSWER_PIXELS):
            noise = np.random.default_rng(seed).integers(-40, 40, SIZE[::-1])[:, :, None]
            return scene, np.clip(clip.frames[0].astype(int) + noise, 0, 255).astype(np.uint8)
    raise AssertionError("no static shapes scene covers the answer pixels")


def serve(model_dir, tmp, domain: int, **params):
    """(harness, node, camera) for a node in its own process with the depth input on,
    `params` over the defaults of the depth tests; a fixture's body (yields once)."""
    params = {"model": str(model_dir), "image_topic": TOPIC, "depth_topic": DEPTH_TOPIC, "max_new_tokens": 128,
              "max_frames": 2, "diagnostics_period": 0.5, **params}
    node = NodeProcess(write_params(tmp / "params.yaml", **params), domain, tmp / "node.log")
    harness = Harness(domain, TOPIC, frame_id=FRAME)
    camera = DepthCamera(harness)
    try:
        harness.wait_diag(lambda d: d["state"] == "active", timeout=300, what="the node to become active")
        yield harness, node, camera
    finally:
        harness.close()
        node.stop()
        print(node.log()[-3000:])


class DepthCamera:
    """Publishes the static scene's colour frame, depth image and camera info per stamp."""

    def __init__(self, harness: Harness):
        self.harness = harness
        self.scene, self.rgb = static_scene()
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.depth_pub = harness.node.create_publisher(Image, DEPTH_TOPIC, reliable)
        self.info_pub = harness.node.create_publisher(CameraInfo, INFO_TOPIC, reliable)
        self.received = 0   # colour frames the node had received when the last batch settled

    def publish(self, n: int = BATCH, camera: CameraModel | None = None, depth: bool | str = True,
                depth_size=SIZE, encoding: str = "16UC1", depth_frame_id: str = FRAME, metres=None,
                depth_message=None, infos: list[CameraInfo] | None = None, extra_depth: dict | None = None) -> None:
        """n frames at 10 Hz (stamps in self.batch); depth=False: none, "once": only with the first.
        Hostile input: `depth_message(stamp)` makes each depth message instead; `infos`, the
        CameraInfo messages to publish in turn (stamped as the frame); `extra_depth`, frame
        index -> depth messages published before that frame's (with their own stamps)."""
        camera = camera or self.scene.camera
        depth_m = self.scene.depth_m(0, depth_size) if metres is None else metres
        self.batch = []
        for i in range(n):
            self.batch.append(self.harness.next_stamp(0.1))
            stamp = to_time(self.batch[-1])
            for msg in (extra_depth or {}).get(i, []):
                self.depth_pub.publish(msg)
            if depth is True or (depth == "once" and i == 0):
                self.depth_pub.publish(depth_message(stamp) if depth_message else
                                       depth_to_image(depth_m, stamp, depth_frame_id, encoding))
            info = camera_info(camera, stamp) if infos is None else infos[i % len(infos)]
            if info.header.stamp.nanosec < 10**9:   # a malformed stamp stays as the test made it
                info.header.stamp = stamp
            self.info_pub.publish(info)
            self.harness.image_pub.publish(rgb_to_image(self.rgb, stamp, FRAME))
            time.sleep(0.1)
        self.settle()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the node's counts of received colour frames and depth images stop
        changing over a diagnostics period (0.5 s). The node may lag the camera (camera-rate
        tracking on a loaded machine) and its best-effort subscriptions may drop a frame, so
        a count of what was sent cannot tell when it is done; asked earlier, its window
        could still hold an earlier check's frames."""
        deadline, previous = time.monotonic() + timeout, None
        while True:
            d = self.harness.wait_diag(lambda d: True, 30, "diagnostics")
            counts = (int(d["frames_received"]),
                      sum(int(d[k]) for k in ("depth_received", "depth_malformed", "depth_too_large")))
            if counts == previous and counts[0] > self.received:
                self.received = counts[0]
                return
            previous = counts
            assert time.monotonic() < deadline, f"the node's received counts did not settle: {counts}"

    def ask(self):
        status, result, _ = self.harness.ask("red square", max_frames=2)
        assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
        g = result.grounding
        assert [(p.x, p.y) for p in g.points] == ANSWER_PIXELS, "the pointing model's answer changed"
        assert [from_time(p.stamp) for p in g.points] == [from_time(s) for s in g.frame_stamps]
        assert {from_time(s) for s in g.frame_stamps} <= set(self.batch), "frames of an earlier check"
        return g


def position(p) -> np.ndarray:
    return np.array([p.position.x, p.position.y, p.position.z])


def assert_within_one_percent(g, scene: DepthScene) -> list[np.ndarray]:
    found = []
    for p in g.points:
        assert p.has_position, g.warnings
        truth = scene.truth(0, p.x, p.y)
        error = np.linalg.norm(position(p) - truth)
        assert error <= max(0.01 * truth[2], 0.01), (p.x, p.y, position(p), truth)
        found.append(position(p))
    assert not [w for w in g.warnings if w.startswith("3D:")]
    return found


def assert_flagged(g, node: NodeProcess, harness: Harness, reason: str) -> None:
    assert g.points and not any(p.has_position for p in g.points)
    assert all(np.isnan(position(p)).all() for p in g.points)
    assert any(w.startswith("3D: 2 points without a position:") and reason in w for w in g.warnings), g.warnings
    harness.wait_for(lambda: reason in node.log(), 30, f"the warning {reason!r} in the node's log")
    assert node.alive()
    harness.wait_diag(lambda d: d["state"] == "active", timeout=30, what="the node to stay active")
