"""One node, three cameras, one model (issue 29), over DDS between real processes: three
video publishers (the shapes scene, different objects per camera, 15, 20 and 25 Hz, each
its own frame_id), the node (console entry + --params-file, the shipped model) and this
process as client and subscriber.

Each camera is asked for an object only its scene holds; the point must lie on that
object in that camera's frame with the point's stamp (the evaluation's hit rule,
node_harness.on_colour). The continuous query on all three cameras is timed over
60 s; the rear camera is stopped last."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from action_msgs.msg import GoalStatus
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from molmo2_ros.action import Ground
from molmo2_ros.core.image_conversion import image_to_rgb
from molmo2_ros.msg import TrackedObjectArray
from molmo2_ros.ros.messages import from_time, to_time

sys.path.insert(0, str(Path(__file__).parent))
from node_harness import NODE, Harness, NodeProcess, on_colour, write_params  # noqa: E402

R = Ground.Result
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# name -> (rate Hz, the scene's objects, what is asked of it)
CAMERAS = {"front": (15, "red circle,green square", "red circle"),
           "wrist": (20, "blue square,yellow circle", "blue square"),
           "rear": (25, "yellow triangle,green circle", "yellow triangle")}
FAIR_SECONDS = 60
CAMERA_TIMEOUT_S = 3.0


def topic(camera: str) -> str:
    return f"/{camera}/image_raw"


def frame_id(camera: str) -> str:
    return f"{camera}_optical_frame"


def publisher(camera: str, domain: int, log: Path) -> subprocess.Popen:
    rate, objects, _ = CAMERAS[camera]
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "molmo2_ros.ros.video_publisher", "--topic", topic(camera), "--rate", str(rate),
             "--objects", objects, "--frame-id", frame_id(camera), "--seed", str(len(camera))],
            env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cameras_node")
    domain = 50 + (os.getpid() + 83) % 100
    publishers = {c: publisher(c, domain, tmp / f"{c}.log") for c in CAMERAS}
    own = {f"cameras.{c}.image_topic": topic(c) for c in CAMERAS}
    params = write_params(tmp / "params.yaml", cameras=list(CAMERAS), camera_timeout=CAMERA_TIMEOUT_S,
                          diagnostics_period=0.5, **own)
    node = NodeProcess(params, domain, tmp / "node.log")
    harness = Harness(domain, "/unused")
    frames: dict[str, dict[int, Image]] = {c: {} for c in CAMERAS}
    for camera in CAMERAS:
        harness.node.create_subscription(Image, topic(camera), lambda m, c=camera: frames[c].__setitem__(
            from_time(m.header.stamp), m), RELIABLE)
    try:
        for camera in CAMERAS:
            harness.wait_diag(lambda d, c=camera: d["_name"].endswith(f"camera {c}")
                              and d["window_frames"] == d["window_max_frames"], 240, f"{camera}'s full window")
        yield harness, node, publishers, frames
    finally:
        harness.close()
        node.stop()
        for proc in publishers.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        print(node.log()[-4000:])


def on_its_object(frames: dict[int, Image], camera: str, point) -> bool:
    rgb, _ = image_to_rgb(frames[from_time(point.stamp)], 0)
    return on_colour(rgb, CAMERAS[camera][2].split()[0], point.x, point.y)


def test_one_model_serves_every_camera(three):
    harness, node, _, _ = three
    log = node.log()
    assert log.count("loaded torch backend") == 1, log
    assert "camera buffers (host memory, at most, MiB): front: window" in log and "for 3 cameras" in log
    d = harness.wait_diag(lambda d: d["_name"].endswith(": grounding"), 10)
    assert d["state"] == "active" and d["_message"] == "3 cameras"


def test_each_cameras_answers_are_on_its_own_scene(three):
    """Its own frame_id and stamps, and points on the object only it sees."""
    harness, node, _, frames = three
    for camera, (_, _, asked) in CAMERAS.items():
        hits = 0
        for _ in range(3):
            status, result, _ = harness.ask(asked, cameras=(camera,))
            assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
            g = result.grounding
            assert [x.camera for x in result.groundings] == [camera] and g.camera == camera
            assert g.header.frame_id == frame_id(camera)
            stamps = [from_time(s) for s in g.frame_stamps]
            assert len(stamps) == 16 and set(stamps) <= set(frames[camera]), camera
            hits += bool(g.points) and on_its_object(frames[camera], camera, g.points[0])
        assert hits >= 2, f"{camera}: {hits} of 3 answers on its {asked}"


def test_one_goal_asks_several_cameras_answers_in_order(three):
    harness, _, _, frames = three
    status, result, _ = harness.ask("blue square", cameras=("wrist", "front"))
    assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
    assert [g.camera for g in result.groundings] == ["wrist", "front"]
    assert [g.header.frame_id for g in result.groundings] == [frame_id("wrist"), frame_id("front")]
    assert result.grounding.query_id == result.groundings[0].query_id and result.grounding.camera == "wrist"
    for g in result.groundings:
        assert {from_time(s) for s in g.frame_stamps} <= set(frames[g.camera])


def test_an_unknown_camera_is_refused_naming_the_cameras(three):
    harness, node, _, _ = three
    status, result, _ = harness.ask("red circle", cameras=("front", "left"))
    assert status == GoalStatus.STATUS_ABORTED and result.error_code == R.ERROR_INVALID_QUERY
    assert result.error_message == "unknown camera 'left': the cameras are 'front', 'wrist', 'rear'"
    assert node.alive()


def test_camera_rate_outputs_and_diagnostics_are_per_camera(three):
    harness, _, _, _ = three
    tracked: dict[str, list] = {c: [] for c in CAMERAS}
    subs = [harness.node.create_subscription(TrackedObjectArray, f"{NODE}/{c}/tracked_objects",
                                             tracked[c].append, RELIABLE) for c in CAMERAS]
    try:
        time.sleep(1.0)   # discovery
        for camera in CAMERAS:
            status, result, _ = harness.ask(CAMERAS[camera][2], cameras=(camera,))
            assert status == GoalStatus.STATUS_SUCCEEDED
            harness.wait_for(lambda c=camera, q=result.grounding.query_id: [m for m in tracked[c] if m.query_id == q],
                             30, f"{camera}'s tracked objects")
        for camera, msgs in tracked.items():
            assert {m.header.frame_id for m in msgs} == {frame_id(camera)}
        for camera, (rate, _, _) in CAMERAS.items():
            d = harness.wait_diag(lambda d, c=camera: d["_name"].endswith(f"camera {c}")
                                  and float(d["ingest_rate_hz"]) > 0, 10)
            assert 0.4 * rate < float(d["ingest_rate_hz"]) < 1.6 * rate, (camera, d["ingest_rate_hz"])
            assert d["window_frames"] == "16" and float(d["window_span_s"]) >= 7.0
            assert float(d["last_latency_s"]) > 0 and d["stopped"] == ""
    finally:
        for sub in subs:
            harness.node.destroy_subscription(sub)


def test_continuous_query_on_all_cameras_shares_the_model_fairly(three):
    """~/query runs on every camera; over 60 s each camera's answer period is within 1.5x
    of the others' though their frame rates differ (15/20/25 Hz). Then ~/front/query
    alone: only the front camera is answered."""
    harness, _, _, _ = three
    query_pub = harness.node.create_publisher(String, f"{NODE}/query", RELIABLE)
    front_pub = harness.node.create_publisher(String, f"{NODE}/front/query", RELIABLE)
    time.sleep(1.0)
    try:
        query_pub.publish(String(data="point: red circle"))
        harness.wait_for(lambda: {g.camera for g in harness.groundings if g.query_id.startswith("topic-")}
                         == set(CAMERAS), 90, "a continuous answer from every camera")
        start = len(harness.groundings)
        time.sleep(FAIR_SECONDS)
        runs = [g for g in harness.groundings[start:] if g.query_id.startswith("topic-")]
        counts = {c: sum(g.camera == c for g in runs) for c in CAMERAS}
        periods = {c: FAIR_SECONDS / max(n, 1) for c, n in counts.items()}
        print(f"continuous answers in {FAIR_SECONDS} s: {counts}")
        assert min(counts.values()) >= 3, counts
        assert max(periods.values()) <= 1.5 * min(periods.values()), counts
        assert all(g.header.frame_id == frame_id(g.camera) for g in runs)

        query_pub.publish(String(data=""))
        front_pub.publish(String(data="red circle"))
        time.sleep(5.0)   # runs already queued finish
        start = len(harness.groundings)
        harness.wait_for(lambda: sum(g.query_id.startswith("topic-") for g in harness.groundings[start:]) >= 3,
                         90, "three continuous answers")
        assert {g.camera for g in harness.groundings[start:] if g.query_id.startswith("topic-")} == {"front"}
    finally:
        query_pub.publish(String(data=""))
        front_pub.publish(String(data=""))


def test_malformed_and_huge_frames_of_one_camera_leave_the_others_alone(three):
    """Bad messages on the front camera's topic (another publisher beside its camera):
    counted and refused in the front camera; the wrist camera's window and counters, and
    its answers, untouched."""
    harness, node, _, _ = three
    bad = harness.node.create_publisher(Image, topic("front"), RELIABLE)
    try:
        def camera(c):
            return harness.wait_diag(lambda d: d["_name"].endswith(f"camera {c}"), 10)

        front, wrist = camera("front"), camera("wrist")
        harness.wait_for(lambda: bad.get_subscription_count() > 0, 10, "the node's subscription")
        stamp = time.time_ns() + 10**9   # due for a window slot: converted
        bad.publish(Image(header=Header(stamp=to_time(stamp), frame_id=frame_id("front")), height=120, width=160,
                          encoding="rgb8", step=480, data=bytes(100)))            # data shorter than it says
        bad.publish(Image(header=Header(stamp=to_time(stamp + 10**9), frame_id=frame_id("front")),
                          height=12000, width=12000, encoding="mono8", step=12000))   # over max_image_pixels
        after = harness.wait_diag(lambda d: d["_name"].endswith("camera front")
                                  and int(d["frames_too_large"]) > int(front["frames_too_large"]), 30, "front refusing")
        assert int(after["frames_malformed"]) > int(front["frames_malformed"])
        later = camera("wrist")
        assert (later["frames_malformed"], later["frames_too_large"], later["last_frame_error"]) == \
            (wrist["frames_malformed"], wrist["frames_too_large"], wrist["last_frame_error"]) == ("0", "0", "")
        assert later["window_frames"] == "16"
        status, result, _ = harness.ask("blue square", cameras=("wrist",))
        assert status == GoalStatus.STATUS_SUCCEEDED and node.alive()
    finally:
        harness.node.destroy_publisher(bad)


def test_a_stopped_camera_is_reported_and_refused_while_the_others_answer(three):
    harness, node, publishers, _ = three
    publishers["rear"].terminate()
    publishers["rear"].wait(timeout=20)
    d = harness.wait_diag(lambda d: d["_name"].endswith("camera rear") and d["stopped"], 30, "rear stopped")
    assert d["_level"] == DiagnosticStatus.WARN and d["_message"].startswith("camera 'rear' stopped: nothing on /rear")
    status, result, _ = harness.ask("yellow triangle", cameras=("rear",))
    assert status == GoalStatus.STATUS_ABORTED and result.error_code == R.ERROR_EMPTY_WINDOW
    assert result.error_message.startswith("camera 'rear' stopped: nothing on /rear/image_raw for ")
    assert f"(camera_timeout {CAMERA_TIMEOUT_S:g} s)" in result.error_message
    status, result, _ = harness.ask("red circle", cameras=("front",))
    assert status == GoalStatus.STATUS_SUCCEEDED and result.grounding.camera == "front"
    assert node.alive()
