"""3D positions from a registered depth camera (issue 20): the node in its own OS process
(console entry + --params-file), driven over DDS by a camera that publishes the shapes
scene with a depth image (each shape a plate at a known distance before a background
plane, molmo2_ros/sim/depth_scene.py) and CameraInfo, like a depth camera's driver.

The pointing model answers "red square" with (500, 500) on the first frame and
(250, 750) on the second (tests/ros/conftest.py), i.e. colour pixels (80, 60) and
(40, 90) of a 160x120 image; the scene is chosen so both lie on a shape. One node
process serves the module; each check publishes its own frames and asks once."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import Marker, MarkerArray

from molmo2_ros.core.depth import CameraModel
from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.ros.image_messages import camera_info, depth_to_image, rgb_to_image
from molmo2_ros.ros.messages import from_time, to_time
from molmo2_ros.sim.depth_scene import DepthScene, default_camera
from molmo2_ros.sim.shapes_world import make_clip

sys.path.insert(0, str(Path(__file__).parent))
from node_harness import NODE, Harness, NodeProcess, write_params  # noqa: E402

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


@pytest.fixture(scope="module")
def served(pointing_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("depth_node")
    domain = 50 + (os.getpid() + 23) % 100
    params = write_params(tmp / "params.yaml", model=str(pointing_model_dir), image_topic=TOPIC,
                          depth_topic=DEPTH_TOPIC, max_new_tokens=128, max_frames=2, diagnostics_period=0.5)
    node = NodeProcess(params, domain, tmp / "node.log")
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
                depth_size=SIZE, encoding: str = "16UC1", depth_frame_id: str = FRAME, metres=None) -> None:
        """n frames at 10 Hz (stamps in self.batch); depth=False: none, "once": only with the first."""
        camera = camera or self.scene.camera
        depth_m = self.scene.depth_m(0, depth_size) if metres is None else metres
        self.batch = []
        for i in range(n):
            self.batch.append(self.harness.next_stamp(0.1))
            stamp = to_time(self.batch[-1])
            if depth is True or (depth == "once" and i == 0):
                self.depth_pub.publish(depth_to_image(depth_m, stamp, depth_frame_id, encoding))
            self.info_pub.publish(camera_info(camera, stamp))
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
            counts = (int(d["frames_received"]), int(d["depth_received"]) + int(d["depth_malformed"]))
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


def test_without_any_depth_points_are_flagged_with_the_reason(served):
    harness, node, camera = served
    camera.publish(depth=False)
    assert_flagged(camera.ask(), node, harness, "no depth image received")


def test_points_tracks_and_markers_at_the_shapes_known_depths(served):
    """Undistorted camera, 16UC1 depth at the colour size: 3D within 1 % of the truth;
    ~/markers at those positions; ~/tracked_objects with 3D from each frame's depth."""
    harness, node, camera = served
    markers, tracked = [], []
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    subs = [harness.node.create_subscription(MarkerArray, f"{NODE}/markers", markers.append, qos),
            harness.node.create_subscription(TrackedObjectArray, f"{NODE}/tracked_objects", tracked.append, qos)]
    try:
        time.sleep(1.0)  # discovery
        camera.publish()
        g = camera.ask()
        found = assert_within_one_percent(g, camera.scene)
        harness.wait_for(lambda: markers, 30, "markers")
        spheres = [m for m in markers[-1].markers if m.type == Marker.SPHERE]
        assert len(spheres) == 2
        for sphere, xyz in zip(spheres, found):
            p = sphere.pose.position
            np.testing.assert_allclose([p.x, p.y, p.z], xyz, atol=1e-9)
        camera.publish(5)   # camera frames after the answer: tracked at camera rate

        def tracked_with_3d():
            found = [m for m in tracked if m.query_id == g.query_id and m.objects and m.objects[0].has_position]
            return found if len(found) >= 3 else None

        with_3d = harness.wait_for(tracked_with_3d, 30, "three camera frames' tracked objects with 3D")
        for msg in with_3d:
            o = msg.objects[0]
            truth = camera.scene.truth(0, o.x, o.y)
            assert not o.lost and np.linalg.norm(position(o) - truth) <= 0.01 * truth[2], (o, truth)
    finally:
        for sub in subs:
            harness.node.destroy_subscription(sub)


def test_distorted_camera_32fc1_same_accuracy_after_undistortion(served):
    harness, node, camera = served
    wide = 0.6 * SIZE[0]
    distorted = CameraModel(**{**camera.scene.camera.__dict__, "fx": wide, "fy": wide, "d": PLUMB_BOB})
    scene = DepthScene(camera.scene.clip, distorted)
    camera.publish(camera=distorted, encoding="32FC1")
    g = camera.ask()
    found = assert_within_one_percent(g, scene)
    # the check means something: ignoring the distortion would miss by more than 3 %
    x, y = ANSWER_PIXELS[1]
    z = found[1][2]
    naive = np.array([(x - 0.5 - distorted.cx) / wide * z, (y - 0.5 - distorted.cy) / wide * z, z])
    assert np.linalg.norm(found[1] - naive) > 0.03 * z


def test_half_resolution_depth_gives_the_same_3d(served):
    harness, node, camera = served
    camera.publish()
    full = [position(p) for p in camera.ask().points]
    camera.publish(depth_size=(SIZE[0] // 2, SIZE[1] // 2))
    g = camera.ask()
    half = assert_within_one_percent(g, camera.scene)
    for a, b in zip(full, half):
        assert np.linalg.norm(a - b) <= 0.02 * a[2]


@pytest.mark.parametrize("case,reason", [
    ("stale", "no depth image within 0.05 s of the frame"),
    ("invalid", "no valid depth in the 5x5 depth pixels around"),
    ("size", "depth size 160x100 has another aspect ratio than the colour image 160x120"),
    ("frame_id", "depth frame_id 'other_depth_frame' is not the colour camera's 'test_camera'"),
])
def test_bad_depth_points_published_flagged_with_the_reason(served, case, reason):
    harness, node, camera = served
    if case == "stale":      # the depth camera froze: one image, then colour only
        camera.publish(16, depth="once")  # the window keeps its 2 frames >= 0.5 s later
    elif case == "invalid":  # zeros (16UC1's "no depth") everywhere
        camera.publish(metres=np.zeros((SIZE[1], SIZE[0]), np.float32))
    elif case == "size":
        camera.publish(depth_size=(160, 100))
    else:
        camera.publish(depth_frame_id="other_depth_frame")
    assert_flagged(camera.ask(), node, harness, reason)
