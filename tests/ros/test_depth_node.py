"""3D positions from a registered depth camera (issue 20): the node in its own OS process
(console entry + --params-file), driven over DDS by a camera that publishes the shapes
scene with a depth image and CameraInfo (tests/ros/depth_camera.py). One node process
serves the module; each check publishes its own frames and asks once."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from visualization_msgs.msg import Marker, MarkerArray

from molmo2_ros.core.depth import CameraModel
from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.sim.depth_scene import DepthScene

sys.path.insert(0, str(Path(__file__).parent))
from depth_camera import (ANSWER_PIXELS, PLUMB_BOB, SIZE, assert_flagged, assert_within_one_percent,  # noqa: E402
                          position, serve)
from node_harness import NODE  # noqa: E402


@pytest.fixture(scope="module")
def served(pointing_model_dir, tmp_path_factory):
    yield from serve(pointing_model_dir, tmp_path_factory.mktemp("depth_node"), 50 + (os.getpid() + 23) % 100)


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
