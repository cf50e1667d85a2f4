"""The node in this process: cleanup destroys every publisher configure created, so a
node configured again has one publisher per topic (rclpy's Node keeps its own list of
publishers; the node must not overwrite it)."""
from __future__ import annotations

import os

import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter

from molmo2_ros.ros.node import GroundingNode

TOPICS = ("grounding", "answer", "debug_image", "markers", "tracked_objects")


def test_cleanup_destroys_every_publisher_and_configure_makes_one_each(tiny_model_dir):
    context = Context()
    rclpy.init(context=context, domain_id=150 + os.getpid() % 80)
    node = GroundingNode(context=context, namespace="/publishers_test", parameter_overrides=[
        Parameter("autostart", value=False), Parameter("warmup", value="never"),
        Parameter("model", value=str(tiny_model_dir)), Parameter("device", value="cpu")])
    try:
        def counts():
            return {t: node.count_publishers(f"/publishers_test/molmo2_grounding/{t}") for t in TOPICS}

        ours = len(list(node.publishers))   # rclpy's own (parameter events, ...)
        assert ours > 0
        for _ in range(2):
            assert node.trigger_configure() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
            assert counts() == dict.fromkeys(TOPICS, 1)
            assert node.trigger_cleanup() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
            assert counts() == dict.fromkeys(TOPICS, 0)
            assert len(list(node.publishers)) == ours
    finally:
        node._release()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_three_cameras_one_model_and_each_cameras_own_topics(tiny_model_dir):
    """One loaded Molmo2 for three cameras (counted among the process's objects), and the
    per-camera topics made at configure and gone at cleanup."""
    import gc

    from transformers import Molmo2ForConditionalGeneration

    context = Context()
    rclpy.init(context=context, domain_id=150 + (os.getpid() + 7) % 80)
    cameras = ("front", "wrist", "rear")
    node = GroundingNode(context=context, namespace="/cameras_test", parameter_overrides=[
        Parameter("autostart", value=False), Parameter("warmup", value="never"),
        Parameter("model", value=str(tiny_model_dir)), Parameter("device", value="cpu"),
        Parameter("cameras", value=list(cameras)),
        *[Parameter(f"cameras.{c}.image_topic", value=f"/{c}/image_raw") for c in cameras]])
    try:
        def counts(leaf):
            return [node.count_publishers(f"/cameras_test/molmo2_grounding/{c}/{leaf}") for c in cameras]

        assert node.trigger_configure() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
        gc.collect()
        models = [o for o in gc.get_objects() if isinstance(o, Molmo2ForConditionalGeneration)]
        assert len(models) == 1
        for leaf in ("tracked_objects", "debug_image", "markers", "detections"):
            assert counts(leaf) == [1, 1, 1], leaf
        assert node.count_publishers("/cameras_test/molmo2_grounding/grounding") == 1
        assert [node.count_subscribers(f"/cameras_test/molmo2_grounding/{c}/query") for c in cameras] == [1, 1, 1]
        assert node.trigger_activate() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
        assert [node.count_subscribers(f"/{c}/image_raw") for c in cameras] == [1, 1, 1]
        assert node.trigger_deactivate() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == rclpy.lifecycle.TransitionCallbackReturn.SUCCESS
        assert counts("tracked_objects") == [0, 0, 0]
        assert [node.count_subscribers(f"/cameras_test/molmo2_grounding/{c}/query") for c in cameras] == [0, 0, 0]
    finally:
        node._release()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_a_bad_set_of_cameras_fails_configure_listing_every_problem(tiny_model_dir, capfd):
    context = Context()
    rclpy.init(context=context, domain_id=150 + (os.getpid() + 11) % 80)
    node = GroundingNode(context=context, namespace="/bad_cameras_test", parameter_overrides=[
        Parameter("autostart", value=False), Parameter("model", value=str(tiny_model_dir)),
        Parameter("cameras", value=["front", "front", "wrist", "rear", "side cam"]),
        Parameter("cameras.front.image_topic", value="/cam/image_raw"),
        Parameter("cameras.rear.image_topic", value="/cam/image_raw")])
    try:
        assert node.trigger_configure() == rclpy.lifecycle.TransitionCallbackReturn.FAILURE
        err = capfd.readouterr().err
        for problem in ("camera name 'side cam' is not a valid ROS name", "camera 'front' is listed 2 times",
                        "camera 'wrist' has no image topic: set cameras.wrist.image_topic",
                        "cameras 'front' and 'rear' both subscribe to /cam/image_raw"):
            assert problem in err, err
        assert "configure failed" in err and "loaded torch backend" not in err
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
