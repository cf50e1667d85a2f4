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
