"""3D in the robot's frames (issue 30), with real tf2 over DDS between real processes: the
node in its own process (console entry + --params-file), the transforms published by
tests/ros/transform_publisher.py in others (static camera -> base_link; base_link moving
in odom at a known velocity at 50 Hz), and this process as camera, client, subscriber of
the standard messages and TF listener.

The scene and the pointing model are test_depth_node's: the answer's two points lie on
shapes at known depths, on the window's two frames (0.5 s apart)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from tf2_ros import Buffer, TransformListener
from vision_msgs.msg import Detection2DArray, Detection3DArray

from molmo2_ros.core.depth import CameraModel
from molmo2_ros.core.rigid_transform import RigidTransform
from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.ros.messages import from_time
from molmo2_ros.ros.standard_messages import tf_frame_name

sys.path.insert(0, str(Path(__file__).parent))
from node_harness import NODE, Harness, NodeProcess, write_params  # noqa: E402
from depth_camera import DEPTH_TOPIC, FRAME, SIZE, TOPIC, DepthCamera, position  # noqa: E402

PUBLISHER = Path(__file__).parent / "transform_publisher.py"


def yawed(q, yaw: float) -> tuple[float, float, float, float]:
    """The rotation q (quaternion x, y, z, w) followed by `yaw` about z: the product r * q."""
    s, c = np.sin(yaw / 2), np.cos(yaw / 2)
    x, y, z, w = q
    return float(c * x - s * y), float(c * y + s * x), float(c * z + s * w), float(c * w - s * z)


# base_link <- camera optical frame: the camera 0.3 m ahead of the base and 1.2 m up,
# looking along the base's x (optical z forward = base x, optical x right = base -y,
# optical y down = base -z; REP 103), then yawed 30 degrees to the left.
CAMERA_IN_BASE = RigidTransform((0.3, 0.0, 1.2), yawed((-0.5, 0.5, -0.5, 0.5), np.deg2rad(30.0)))
VELOCITY = 0.5     # m/s of base_link along odom's x
T0 = time.time_ns()
QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def start_publisher(domain: int, *args, log: Path) -> subprocess.Popen:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, str(PUBLISHER), str(domain), *map(str, args)], stdout=out,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while "publishing" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def served(pointing_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robot_frames_node")
    domain = 50 + (os.getpid() + 61) % 100
    static = start_publisher(domain, "static", "base_link", FRAME, *CAMERA_IN_BASE.translation,
                             *CAMERA_IN_BASE.rotation, log=tmp / "static.log")
    params = write_params(tmp / "params.yaml", model=str(pointing_model_dir), image_topic=TOPIC,
                          depth_topic=DEPTH_TOPIC, max_new_tokens=128, max_frames=2, diagnostics_period=0.5,
                          target_frame="base_link", transform_tolerance=0.2, tracked_tf_frames=True)
    node = NodeProcess(params, domain, tmp / "node.log")
    harness = Harness(domain, TOPIC, frame_id=FRAME)
    camera = DepthCamera(harness)
    try:
        harness.wait_diag(lambda d: d["state"] == "active", timeout=300, what="the node to become active")
        yield harness, node, camera, domain, tmp
    finally:
        harness.close()
        node.stop()
        stop(static)
        print(node.log()[-3000:])


def ask(camera: DepthCamera, **publish):
    camera.harness.stamps_from_now()
    camera.publish(**publish)
    return camera.ask()


def target(p) -> np.ndarray:
    assert p.has_target_position, "no target-frame position"
    return np.array([p.target_position.point.x, p.target_position.point.y, p.target_position.point.z])


def test_configure_reports_the_target_frame_reachable(served):
    harness, node, camera, _, _ = served
    forward = CAMERA_IN_BASE.apply((0.0, 0.0, 1.0))   # the transform is the one described above
    np.testing.assert_allclose(forward, (0.3 + np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30)), 1.2), atol=1e-12)
    assert "target_frame 'base_link' is in the TF tree" in node.log()
    camera.publish(3)
    harness.wait_for(lambda: f"target_frame 'base_link' is reachable from camera frame '{FRAME}'" in node.log(),
                     30, "the camera's reachability in the log")
    d = harness.wait_diag(lambda d: "target_frame_reachable" in d, 30)
    assert d["target_frame"] == "base_link" and d["target_frame_reachable"] == f"from {FRAME}: yes"
    assert d["depth_self_checks"] == "ok"


def test_static_transform_points_in_base_link_and_the_standard_messages(served):
    """The scene's truth transformed by the static camera -> base_link transform, in our
    Grounding and in vision_msgs read back by this process."""
    harness, node, camera, _, _ = served
    d2, d3 = [], []
    subs = [harness.node.create_subscription(Detection2DArray, f"{NODE}/detections", d2.append, QOS),
            harness.node.create_subscription(Detection3DArray, f"{NODE}/detections_3d", d3.append, QOS)]
    try:
        time.sleep(1.0)  # discovery: the node publishes them only while subscribed
        g = ask(camera)
        expected = []
        for p in g.points:
            truth = CAMERA_IN_BASE.apply(camera.scene.truth(0, p.x, p.y))
            assert p.target_position.header.frame_id == "base_link"
            assert from_time(p.target_position.header.stamp) == from_time(p.stamp)
            assert np.linalg.norm(target(p) - truth) <= 0.01 * position(p)[2], (target(p), truth)
            np.testing.assert_allclose(target(p), CAMERA_IN_BASE.apply(position(p)), atol=1e-6)
            expected.append(target(p))
        assert not [w for w in g.warnings if w.startswith("base_link:")], g.warnings
        detections = harness.wait_for(lambda: [m for m in d2 if m.detections and
                                               from_time(m.header.stamp) == from_time(g.header.stamp)], 30, "2D")
        assert [(d.bbox.center.position.x, d.bbox.center.position.y, d.id, d.results[0].hypothesis.class_id)
                for d in detections[-1].detections] == [(p.x, p.y, str(p.object_id), p.label) for p in g.points]
        assert [d.header.frame_id for d in detections[-1].detections] == [FRAME, FRAME]
        in_3d = harness.wait_for(lambda: [m for m in d3 if m.detections and
                                          from_time(m.header.stamp) == from_time(g.header.stamp)], 30, "3D")[-1]
        assert in_3d.header.frame_id == "base_link"
        for d, p, xyz in zip(in_3d.detections, g.points, expected):
            c = d.bbox.center.position
            np.testing.assert_allclose([c.x, c.y, c.z], xyz, atol=1e-6)
            assert d.header.frame_id == "base_link" and from_time(d.header.stamp) == from_time(p.stamp)
    finally:
        for sub in subs:
            harness.node.destroy_subscription(sub)


def test_tracked_objects_as_tf_frames_while_tracked_not_after_lost(served):
    """A TF listener here sees <node>_<label>_<id> (child of the camera frame) in base_link
    where the object is, while it is tracked; once lost (the view replaced by noise), its
    frame is broadcast no more: no transform at the later frames' stamps."""
    harness, node, camera, _, _ = served
    buffer = Buffer()
    listener = TransformListener(buffer, harness.node)
    tracked = []
    sub = harness.node.create_subscription(TrackedObjectArray, f"{NODE}/tracked_objects", tracked.append, QOS)
    try:
        g = ask(camera)
        camera.publish(10)   # frames after the answer: tracked at camera rate (some may miss their depth)
        moving = harness.wait_for(lambda: [m for m in tracked if m.query_id == g.query_id and m.objects
                                           and m.objects[0].has_position and not m.objects[0].lost], 30,
                                  "tracked objects with 3D")[-1]
        o = moving.objects[0]
        assert o.has_target_position and o.target_position.header.frame_id == "base_link"
        child = tf_frame_name(NODE.lstrip("/"), o.label, o.object_id)
        stamp = Time(nanoseconds=from_time(moving.header.stamp))
        harness.wait_for(lambda: buffer.can_transform("base_link", child, stamp), 30, f"TF frame {child}")
        seen = buffer.lookup_transform("base_link", child, stamp).transform.translation
        np.testing.assert_allclose([seen.x, seen.y, seen.z], target(o), atol=1e-6)
        np.testing.assert_allclose(target(o), CAMERA_IN_BASE.apply(position(o)), atol=1e-6)

        rng = np.random.default_rng(0)
        rgb = camera.rgb
        try:   # the object is lost in noise; depth still places every pixel
            camera.rgb = rng.integers(0, 255, rgb.shape, dtype=np.uint8)
            camera.publish(6)
        finally:
            camera.rgb = rgb
        later = [Time(nanoseconds=s) for s in camera.batch[-3:]]
        harness.wait_for(lambda: [m for m in tracked if m.objects and m.objects[0].lost], 30, "the object lost")
        time.sleep(1.0)
        assert not any(buffer.can_transform("base_link", child, t) for t in later)
        assert buffer.can_transform("base_link", FRAME, later[-1])   # the tree itself is there
    finally:
        harness.node.destroy_subscription(sub)
        listener.unregister()


def test_moving_base_each_point_at_its_own_frames_stamp(served):
    """base_link moves at 0.5 m/s in odom (50 Hz from another process): each point's odom
    position is the transform at its own frame's stamp; the latest transform would put it
    (answer latency x 0.5 m/s) further along."""
    harness, node, camera, domain, tmp = served
    moving = start_publisher(domain, "moving", "odom", "base_link", VELOCITY, T0, log=tmp / "moving.log")
    try:
        assert harness.reconfigure(target_frame="odom")
        # the fresh TF buffer hears the moving transform only after discovery (seconds on a
        # loaded machine): frames stamped before its first transform have none to be placed by
        camera.publish(3)
        harness.wait_diag(lambda d: d.get("target_frame") == "odom"
                          and d.get("target_frame_reachable") == f"from {FRAME}: yes", 60, "odom reachable")
        g = ask(camera)
        answered_ns = time.time_ns()
        stamps = [from_time(p.stamp) for p in g.points]
        assert stamps[1] - stamps[0] >= 400_000_000   # two frames 0.5 s apart: 0.25 m of travel between
        for p, stamp in zip(g.points, stamps):
            base = CAMERA_IN_BASE.apply(position(p))
            at_stamp = np.add(base, (VELOCITY * (stamp - T0) / 1e9, 0.0, 0.0))
            latest = np.add(base, (VELOCITY * (answered_ns - T0) / 1e9, 0.0, 0.0))
            assert p.target_position.header.frame_id == "odom"
            np.testing.assert_allclose(target(p), at_stamp, atol=2e-3)
            assert np.linalg.norm(latest - at_stamp) > 0.1   # the latest transform would fail the check

        stop(moving)   # the transform stops: later frames' stamps are past the last one
        time.sleep(0.5)
        g = ask(camera)
        # (a point may also lack depth, when the loaded machine drops a best-effort depth image)
        placed = [p for p in g.points if p.has_position]
        assert placed and not any(p.has_target_position for p in g.points)
        late = f"odom: {len(placed)} point{'s' if len(placed) > 1 else ''} without a position in odom: transform late"
        assert any(w.startswith(late) for w in g.warnings), g.warnings
        harness.wait_for(lambda: f"target_frame: {late}" in node.log(), 30, "the warning in the log")
        assert node.alive()
    finally:
        stop(moving)


def test_unknown_target_frame_keeps_camera_positions_and_says_why(served):
    harness, node, camera, _, _ = served
    assert harness.reconfigure(target_frame="nowhere")
    assert "target_frame 'nowhere' is not in the TF tree yet" in node.log()
    g = ask(camera)
    assert g.points and all(p.has_position and not p.has_target_position for p in g.points)
    assert any(w.startswith("nowhere: 2 points without a position in nowhere: frame unknown") for w in g.warnings), \
        g.warnings
    d = harness.wait_diag(lambda d: d.get("target_frame") == "nowhere", 30)
    assert d["target_frame_reachable"].startswith(f"from {FRAME}: no: frame unknown")
    assert int(d["target_positions_missing"]) >= 2 and node.alive()


def test_self_checks_at_start_in_log_and_diagnostics(served):
    """A fresh depth input (reconfigure) whose first depth is 16UC1 holding metres, whose
    camera info has another size and frame_id: each said once, in the log and in
    /diagnostics; the answer still arrives."""
    harness, node, camera, _, _ = served
    assert harness.reconfigure(target_frame="base_link")
    wrong = CameraModel(**{**camera.scene.camera.__dict__, "width": 320, "height": 200, "frame_id": "other_cam"})
    metres_as_mm = camera.scene.depth_m(0, SIZE) / 1000.0   # 16UC1 values of 1-3: metres
    harness.stamps_from_now()
    camera.publish(camera=wrong, metres=metres_as_mm)
    status, result, _ = harness.ask("red square", max_frames=2)
    assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
    assert result.grounding.points and not any(p.has_position for p in result.grounding.points)
    d = harness.wait_diag(lambda d: "16UC1 depth values look like metres" in d.get("depth_self_checks", ""), 30)
    checks = d["depth_self_checks"]
    assert "camera info frame_id 'other_cam' is not the colour camera's 'test_camera'" in checks
    assert "camera info size 320x200 is neither the colour image's 160x120 nor the depth image's 160x120" in checks
    log = node.log()
    assert log.count("depth self-check: 16UC1 depth values look like metres") == 1
    assert "publish 16UC1 in millimetres or 32FC1 in metres" in log
    assert node.alive()


def test_target_frame_without_depth_is_warned_and_answers_still_come(served):
    harness, node, camera, _, _ = served
    assert harness.reconfigure(target_frame="base_link", depth_topic="")
    harness.wait_for(lambda: "target_frame 'base_link' is set but depth_topic is empty: there are no 3D positions "
                             "to give in it" in node.log(), 30, "the warning")
    harness.stamps_from_now()
    harness.publish_frames(13)
    status, result, _ = harness.ask("red square", max_frames=2)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.grounding.points
    assert not any(p.has_position or p.has_target_position for p in result.grounding.points)
    d = harness.wait_diag(lambda d: d["state"] == "active", 30)
    assert "target_frame" not in d and "depth_received" not in d
