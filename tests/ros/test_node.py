"""The molmo2_grounding node in its own OS process (console entry + --params-file),
driven over DDS: action goals, cancel, queue policy, topic mode, lifecycle, and every
kind of bad input. One node process serves the whole module; the lifecycle tests put
it back in its served state when they are done."""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Time
from lifecycle_msgs.msg import Transition
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from visualization_msgs.msg import MarkerArray
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from molmo2_ros.action import Ground
from molmo2_ros.msg import Grounding as GroundingMsg
from molmo2_ros.ros.image_messages import rgb_to_compressed, rgb_to_image
from molmo2_ros.ros.messages import from_time, to_time

sys.path.insert(0, str(Path(__file__).parent))
from node_harness import Harness, NodeProcess, png_bomb, stamps_of, write_params  # noqa: E402

R = Ground.Result
TOPIC = "/node_test/camera/image_raw"


@pytest.fixture(scope="module")
def nan_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with every weight NaN: loads fine, then the torch backend's
    finite-logits guard raises on the first decode step (a real backend failure)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("nan_model") / "model"
    shutil.copytree(tiny_model_dir, out)
    weights = load_file(str(out / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def served(pointing_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node")
    domain = 50 + os.getpid() % 100
    params = write_params(tmp / "params.yaml", model=str(pointing_model_dir), image_topic=TOPIC,
                          max_new_tokens=384, queue_size=1, max_frames=8, query_period=0.5,
                          diagnostics_period=0.5)
    node = NodeProcess(params, domain, tmp / "node.log")
    harness = Harness(domain, TOPIC)
    try:
        harness.wait_diag(lambda d: d["state"] == "active", timeout=90, what="the node to become active")
        yield harness, node
    finally:
        harness.close()
        node.stop()
        print(node.log()[-3000:])


def test_empty_window_is_an_error_with_a_reason(served):
    harness, node = served
    status, result, _ = harness.ask("red square")
    assert status == GoalStatus.STATUS_ABORTED
    assert result.error_code == R.ERROR_EMPTY_WINDOW
    assert "no camera frames" in result.error_message


def test_goal_result_carries_the_source_frame_id_and_published_stamps(served):
    harness, node = served
    published = set(harness.publish_frames(20, hz=10))
    status, result, stages = harness.ask("red square", task=0)
    assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
    g = result.grounding
    assert result.error_code == R.ERROR_NONE
    assert g.header.frame_id == harness.frame_id
    window = stamps_of(g)
    assert window and window <= published and len(window) >= 2
    assert from_time(g.header.stamp) == max(window)  # header stamp: newest frame used
    assert g.points and all(from_time(p.stamp) in window for p in g.points)
    assert all(0 <= p.x <= 160 and 0 <= p.y <= 120 for p in g.points)  # source pixels
    assert g.backend == "torch" and g.query == "red square" and g.generation.sec + g.generation.nanosec > 0
    assert stages[:3] == [Ground.Feedback.STAGE_QUEUED, Ground.Feedback.STAGE_PREPROCESSING,
                          Ground.Feedback.STAGE_GENERATING]
    # feedback and result travel separately: the last stage may land just after the result;
    # GENERATING repeats while the answer streams (each feedback with the points so far)
    harness.wait_for(lambda: [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s][3:4] ==
                     [Ground.Feedback.STAGE_PARSING], 5, "the parsing stage")
    harness.wait_for(lambda: any(m.query_id == g.query_id for m in harness.groundings), 10,
                     "the result on ~/grounding")
    window_of_4 = harness.ask("red square", max_frames=4)[1].grounding
    assert len(window_of_4.frame_stamps) == 4


def test_debug_image_and_markers_while_subscribed_and_qos_mismatch_warned(served):
    harness, node = served
    got = {"image": [], "markers": []}
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    subs = [harness.node.create_subscription(Image, "/molmo2_grounding/debug_image", got["image"].append, qos),
            harness.node.create_subscription(MarkerArray, "/molmo2_grounding/markers", got["markers"].append, qos)]
    # A subscriber demanding transient-local durability cannot match the volatile results.
    subs.append(harness.node.create_subscription(
        GroundingMsg, "/molmo2_grounding/grounding", lambda m: None,
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)))
    try:
        time.sleep(1.0)  # discovery
        harness.publish_frames(6)
        status, result, _ = harness.ask("red square")
        assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
        harness.wait_for(lambda: got["image"] and got["markers"], 20, "debug image and markers")
        image = got["image"][-1]
        assert image.header.frame_id == harness.frame_id
        assert image.header.stamp == result.grounding.header.stamp
        assert (image.width, image.height, image.encoding) == (160, 120, "rgb8")
        assert got["markers"][-1].markers[0].action == got["markers"][-1].markers[0].DELETEALL
        harness.wait_for(lambda: "QoS incompatible" in node.log(), 20, "the QoS warning")
    finally:
        for sub in subs:
            harness.node.destroy_subscription(sub)


def test_cancel_and_queue_policy(served, tiny_model_dir, pointing_model_dir):
    """queue_size 1: one running, one waiting, the third is refused BUSY; both canceled.
    On the random tiny model, whose answers run to max_new_tokens (long enough to cancel)."""
    harness, node = served
    assert harness.reconfigure(model=str(tiny_model_dir))
    harness.publish_frames(6)
    running, running_stages = harness.send_goal("red square")
    harness.wait_for(lambda: Ground.Feedback.STAGE_GENERATING in running_stages, 30, "generation to start")
    waiting, _ = harness.send_goal("blue circle")
    status, refused = harness.result(harness.send_goal("green triangle")[0], timeout=30)
    assert status == GoalStatus.STATUS_ABORTED and refused.error_code == R.ERROR_BUSY
    assert "queue full" in refused.error_message
    waiting.cancel_goal_async()
    running.cancel_goal_async()
    for handle in (waiting, running):
        status, result = harness.result(handle, timeout=60)
        assert status == GoalStatus.STATUS_CANCELED
        assert result.error_code == R.ERROR_CANCELED, result.error_message
    assert harness.ask("red square")[1].error_code == R.ERROR_NONE  # and it still serves
    # Deactivated during inference: NOT_ACTIVE, as documented (CANCELED is the client's own).
    running, running_stages = harness.send_goal("red square")
    harness.wait_for(lambda: Ground.Feedback.STAGE_GENERATING in running_stages, 30, "generation to start")
    assert harness.transition(Transition.TRANSITION_DEACTIVATE)
    status, result = harness.result(running, timeout=60)
    assert status == GoalStatus.STATUS_ABORTED and result.error_code == R.ERROR_NOT_ACTIVE, result.error_message
    assert "deactivated during inference" in result.error_message
    assert harness.transition(Transition.TRANSITION_ACTIVATE)
    assert harness.reconfigure(model=str(pointing_model_dir))


@pytest.mark.parametrize("query,task,why", [
    ("", 0, "empty"),
    ("   \n\t ", 0, "empty"),
    ("x" * 10_000, 0, "characters long"),
    ("red square", 9, "unknown task"),
])
def test_bad_queries_are_refused_with_a_reason(served, query, task, why):
    harness, node = served
    status, result, _ = harness.ask(query, task=task)
    assert status == GoalStatus.STATUS_ABORTED
    assert result.error_code == R.ERROR_INVALID_QUERY and why in result.error_message


def test_a_camera_name_on_the_one_camera_node_is_refused_saying_how(served):
    harness, node = served
    harness.publish_frames(3)
    status, result, _ = harness.ask("red square", cameras=("front",))
    assert status == GoalStatus.STATUS_ABORTED and result.error_code == R.ERROR_INVALID_QUERY
    assert result.error_message == ("unknown camera 'front': this node has one camera and no `cameras` "
                                    "parameter: leave the goal's cameras empty")
    status, result, _ = harness.ask("red square")
    assert status == GoalStatus.STATUS_SUCCEEDED and result.grounding.camera == ""
    assert [g.query_id for g in result.groundings] == [result.grounding.query_id]


@pytest.mark.parametrize("window_seconds,max_frames,why", [
    (math.inf, 0, "window_seconds must be 0 (the whole window) or a number of seconds up to the node's "
                  "window_seconds 8, got inf"),
    (math.nan, 0, "got nan"),
    (1e30, 0, "got 1.0000000150474662e+30"),
    (-0.5, 0, "got -0.5"),
    (0.0, 2**32 - 1, "max_frames must be 0 (the node's) or up to the node's max_frames 8, got 4294967295"),
])
def test_goal_numbers_out_of_range_are_refused(served, window_seconds, max_frames, why):
    harness, node = served
    harness.publish_frames(3)
    status, result, _ = harness.ask("red square", window_seconds=window_seconds, max_frames=max_frames)
    assert status == GoalStatus.STATUS_ABORTED
    assert result.error_code == R.ERROR_INVALID_QUERY and why in result.error_message, result.error_message


def test_empty_window_after_reactivation_names_no_stale_frame_error(served):
    harness, node = served
    harness.publish_raw(malformed_images()["unknown encoding"], harness.next_stamp(0.6))
    harness.wait_diag(lambda d: "bayer_weird16" in d["last_frame_error"], what="the frame error")
    assert harness.reconfigure()
    status, result, _ = harness.ask("red square")
    assert result.error_code == R.ERROR_EMPTY_WINDOW
    assert "no frame has arrived on /node_test/camera/image_raw since activation" in result.error_message
    assert "bayer_weird16" not in result.error_message
    assert harness.wait_diag(lambda d: True)["last_frame_error"] == ""


def test_topic_mode_streams_repeated_results(served):
    harness, node = served
    harness.publish_frames(5)
    harness.query_pub.publish(String(data="count: red squares"))

    def topic_results():
        return [m for m in harness.groundings if m.query_id.startswith("topic-")]

    harness.wait_for(lambda: len(topic_results()) >= 2, 90, "two continuous results")
    topic = topic_results()
    assert topic[0].query_id != topic[1].query_id
    assert all(m.task == m.TASK_COUNT and m.query == "red squares" for m in topic)
    harness.query_pub.publish(String(data=""))  # stops continuous mode
    time.sleep(3.0)
    settled = len(harness.groundings)
    time.sleep(2.0)
    assert len(harness.groundings) == settled
    # The `query` parameter starts continuous mode at configure.
    assert harness.reconfigure(query="point: red square")
    harness.publish_frames(5)
    harness.wait_for(lambda: len(topic_results()) > len(topic) and topic_results()[-1].task == 0, 60,
                     "a continuous result from the query parameter")
    assert harness.reconfigure(query="")


def malformed_images():
    good = np.zeros((6, 8, 3), np.uint8)

    def image(**fields):
        msg = Image(height=6, width=8, encoding="rgb8", step=24, data=good.tobytes())
        for key, value in fields.items():
            setattr(msg, key, value)
        msg.header.frame_id = "test_camera"
        return msg

    return {
        "unknown encoding": image(encoding="bayer_weird16"),
        "empty encoding": image(encoding=""),
        "step/size mismatch": image(step=30),
        "data too short": image(data=good.tobytes()[:-5]),
        "zero size": image(height=0, width=0, step=0, data=b""),
    }


def test_malformed_images_are_dropped_with_a_reason_and_nothing_else_is_lost(served):
    harness, node = served
    harness.publish_frames(4)
    before = harness.wait_diag(lambda d: int(d["window_frames"]) > 0)
    for name, msg in malformed_images().items():
        harness.publish_raw(msg, harness.next_stamp(0.6))  # due for a window slot: converted
        diag = harness.wait_diag(lambda d: d["last_frame_error"] and d["frames_malformed"] !=
                                 before["frames_malformed"], what=f"the {name} frame to be reported")
        before = diag
        time.sleep(0.3)
    assert int(before["frames_malformed"]) >= 5
    # A stamp whose nanosec is not < 1e9 is malformed too.
    bad_stamp = rgb_to_image(harness.frame(0), Time(sec=harness.next_stamp(0.6) // 10**9, nanosec=1_500_000_000),
                             harness.frame_id)
    harness.image_pub.publish(bad_stamp)
    diag = harness.wait_diag(lambda d: "malformed stamp: nanosec 1500000000 is not < 1e9" in d["last_frame_error"],
                             what="the malformed stamp to be reported")
    assert int(diag["frames_malformed"]) == int(before["frames_malformed"]) + 1
    # An Image declaring more pixels than max_image_pixels (8K) is refused before its data is read.
    huge = Image(height=12000, width=12000, encoding="mono8", step=12000)
    harness.publish_raw(huge, harness.next_stamp(0.6))
    too_large = int(diag["frames_too_large"])
    diag = harness.wait_diag(lambda d: int(d["frames_too_large"]) == too_large + 1,
                             what="the too-large frame to be counted")
    assert "12000x12000 = 144000000 pixels, more than max_image_pixels 33177600" in diag["last_frame_error"]
    assert node.alive()
    status, result, _ = harness.ask("red square")
    assert result.error_code == R.ERROR_NONE, result.error_message


def test_out_of_order_duplicate_and_time_jump_back(served):
    harness, node = served
    stamps = harness.publish_frames(6)
    rejected = int(harness.wait_diag(lambda d: True)["frames_rejected"])
    duplicate = harness.frame(0)
    harness.image_pub.publish(rgb_to_image(duplicate, to_time(stamps[-1]), harness.frame_id))
    harness.image_pub.publish(rgb_to_image(duplicate, to_time(stamps[-1] - 300_000_000), harness.frame_id))
    diag = harness.wait_diag(lambda d: int(d["frames_rejected"]) >= rejected + 2, what="rejections")
    assert "out-of-order" in diag["last_frame_error"] or "duplicate" in diag["last_frame_error"]
    resets = int(diag["window_resets"])
    # One frame stamped an hour ahead (a clock glitch) is rejected; the stream goes on
    # without looking like a jump back, so the window keeps its frames.
    harness.image_pub.publish(rgb_to_image(duplicate, to_time(stamps[-1] + 3600 * 10**9), harness.frame_id))
    diag = harness.wait_diag(lambda d: "3600.000 s ahead of the newest" in d["last_frame_error"],
                             what="the future stamp to be rejected")
    assert int(diag["frames_rejected"]) == rejected + 3
    harness.publish_frames(6)
    status, result, _ = harness.ask("red square")
    assert result.error_code == R.ERROR_NONE, result.error_message
    assert stamps_of(result.grounding) & set(stamps)  # frames from before the glitch
    assert int(harness.wait_diag(lambda d: True)["window_resets"]) == resets
    stamps = harness.published_stamps
    # A bag replay restarting: time jumps back a minute.
    harness._next_stamp = stamps[-1] - 60 * 10**9
    replayed = harness.publish_frames(3, hz=10)
    harness.wait_diag(lambda d: int(d["window_resets"]) == resets + 1, what="the window reset")
    status, result, _ = harness.ask("red square")
    assert result.error_code == R.ERROR_NONE, result.error_message
    assert stamps_of(result.grounding) <= set(replayed)  # nothing from before the jump
    assert node.alive()


def test_lifecycle_inactive_queries_and_failing_backends(served, nan_model_dir, pointing_model_dir, tmp_path):
    harness, node = served
    assert "warm-up" not in node.log()   # warmup: auto, and torch on CPU compiles nothing
    assert harness.transition(Transition.TRANSITION_DEACTIVATE)
    status, result, _ = harness.ask("red square")
    assert result.error_code == R.ERROR_NOT_ACTIVE and "not active" in result.error_message

    # A backend that raises: every weight NaN -> the torch backend's NaN guard. The
    # warm-up meets it first: logged, and configure still succeeds.
    assert harness.transition(Transition.TRANSITION_CLEANUP)
    harness.set_params(model=str(nan_model_dir), warmup="always")
    assert harness.transition(Transition.TRANSITION_CONFIGURE)
    assert "warm-up failed: NonFiniteLogitsError" in node.log()
    assert harness.transition(Transition.TRANSITION_ACTIVATE)
    harness.publish_frames(4)
    for _ in range(2):
        status, result, _ = harness.ask("red square")
        assert status == GoalStatus.STATUS_ABORTED
        assert result.error_code == R.ERROR_BACKEND and "NaN" in result.error_message, result.error_message

    # A model that is not there: configure fails with a reason, the node stays up.
    assert harness.transition(Transition.TRANSITION_DEACTIVATE)
    assert harness.transition(Transition.TRANSITION_CLEANUP)
    harness.set_params(model=str(tmp_path / "no_such_model"))
    assert not harness.transition(Transition.TRANSITION_CONFIGURE)
    assert "cannot load the torch backend" in node.log() and "does not exist" in node.log()
    assert harness.ask("red square")[1].error_code == R.ERROR_NOT_ACTIVE

    # Invalid parameters: refused when set, with configure's message; the old value stays.
    harness.set_params(model=str(pointing_model_dir))
    refused = harness.set_params_results(fps=-1.0, image_reliability="sometimes")
    assert [r.reason for r in refused] == ["fps must be 0.01..120, or 0 for the model's window, got -1.0",
                                           "image_reliability must be "
                                           "best_effort or reliable, got 'sometimes'"]
    refused = harness.set_params_results(window_seconds=math.nan, jump_back_s=math.inf, query_period=1e30)
    assert [r.reason for r in refused] == ["window_seconds must be a finite number, got nan",
                                           "jump_back_s must be a finite number, got inf",
                                           "query_period must be 0.01..3600 s, got 1e+30"]
    assert harness.transition(Transition.TRANSITION_CONFIGURE)
    assert "warm-up: 8 blank frames answered" in node.log()   # max_frames 8, fps 2.0 kept
    assert harness.transition(Transition.TRANSITION_ACTIVATE)
    harness.publish_frames(4)
    assert harness.ask("red square")[1].error_code == R.ERROR_NONE
    assert node.alive()


def scene_4k() -> np.ndarray:
    """A smooth 4K scene (gradient + shapes), so its JPEG is camera-like in size."""
    ys, xs = np.mgrid[0:2160, 0:3840]
    image = np.dstack([(xs // 16) % 256, (ys // 9) % 256, np.full_like(xs, 128)]).astype(np.uint8)
    image[600:1000, 1000:1600] = (220, 40, 40)
    return image


def test_4k_flood_keeps_memory_bounded(served):
    """30 Hz of 4K JPEG frames (CompressedImage): the node takes them all in, decodes
    only the 2 fps it keeps, and the window and the process stay bounded."""
    harness, node = served
    assert harness.reconfigure(compressed=True, warmup="auto")
    msg = rgb_to_compressed(scene_4k(), to_time(0), harness.frame_id)
    received0 = int(harness.wait_diag(lambda d: d["state"] == "active")["frames_received"])
    rss, sent, seconds = {}, 0, 8
    started = time.monotonic()
    for second in range(seconds):
        while time.monotonic() - started < second + 1:
            msg.header.stamp = to_time(harness.next_stamp(1 / 30))
            harness.compressed_pub.publish(msg)
            sent += 1
            time.sleep(max(0.0, started + sent / 30 - time.monotonic()))
        rss[second] = node.rss_bytes()
    elapsed = time.monotonic() - started
    time.sleep(1.0)
    diag = harness.wait_diag(lambda d: True)
    received = int(diag["frames_received"]) - received0
    bound = 8 * 640 * 360 * 3  # max_frames x a 4K frame shrunk to max_side 640
    print(f"4K JPEG flood ({len(msg.data) / 2**20:.2f} MiB/frame): sent {sent / elapsed:.1f} Hz, "
          f"node received {received / elapsed:.1f} Hz, window {diag['window_frames']} frames "
          f"{int(diag['window_bytes']) / 2**20:.1f} MiB, node RSS {rss[1] / 2**20:.0f} -> "
          f"{rss[seconds - 1] / 2**20:.0f} MiB")
    assert received >= 5 * seconds  # far more than the window keeps (2 fps)
    assert int(diag["window_frames"]) == 8 and int(diag["window_bytes"]) == bound
    assert rss[seconds - 1] - rss[1] < 100 * 2**20, rss  # nothing grows with the input
    # Decompression bombs: 140 KB PNGs declaring 12000x12000 pixels, refused from their header.
    bomb = CompressedImage(format="png", data=png_bomb(12000, 12000))
    rss_before, too_large = node.rss_bytes(), int(diag["frames_too_large"])
    for _ in range(3):
        bomb.header.stamp = to_time(harness.next_stamp(0.6))  # due for a window slot
        harness.compressed_pub.publish(bomb)
    diag = harness.wait_diag(lambda d: int(d["frames_too_large"]) == too_large + 3, what="three refused bombs")
    assert "CompressedImage is 12000x12000 = 144000000 pixels, more than max_image_pixels" in diag["last_frame_error"]
    print(f"3 PNG bombs ({len(bomb.data) / 1e3:.0f} KB, 12000x12000): node RSS {rss_before / 2**20:.0f} -> "
          f"{node.rss_bytes() / 2**20:.0f} MiB")
    assert node.rss_bytes() - rss_before < 100 * 2**20
    assert node.alive()
    assert harness.ask("red square")[1].error_code == R.ERROR_NONE
    assert harness.reconfigure(compressed=False)


def test_the_models_trained_window_fills_the_window_parameters_left_at_0(served, pointing_model_dir, tmp_path):
    from molmo2_ros.backends.trained_window import TrainedWindow, write_trained_window

    harness, node = served
    model = tmp_path / "model_with_window"
    shutil.copytree(pointing_model_dir, model)
    write_trained_window(model, TrainedWindow(fps=1.0, max_frames=3))
    try:
        assert harness.reconfigure(model=str(model), max_frames=0)   # fps, window_seconds: 0 in the params file
        d = harness.wait_diag(lambda d: d["state"] == "active" and d["model"] == str(model))
        assert d["window_max_frames"] == "3"
        assert d["window_source"] == "the model's trained window (3 frames at 1 fps (3 s))"
        assert "window: 3 frames, 3 s at 1 fps, from the model's trained window" in node.log()
        harness.set_params(max_frames=5)                              # an explicit value wins, live
        d = harness.wait_diag(lambda d: d["window_max_frames"] == "5")
        assert d["window_source"] == ("fps, window_seconds from the model's trained window (3 frames at 1 fps "
                                      "(3 s)), the rest from parameters")
    finally:
        assert harness.reconfigure(model=str(pointing_model_dir), max_frames=8)
    d = harness.wait_diag(lambda d: d["model"] == str(pointing_model_dir))
    assert d["window_source"] == "fps, window_seconds from built-in defaults, the rest from parameters"
