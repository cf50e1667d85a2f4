"""Every molmo2_ros message type crosses DDS between two OS processes unchanged."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from interface_samples import assert_same, samples  # noqa: E402


@pytest.fixture
def ros_domain(monkeypatch):
    domain = str(100 + os.getpid() % 100)
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return domain


def test_each_message_type_arrives_equal_from_another_process(ros_domain):
    publisher = subprocess.Popen([sys.executable, str(HERE / "interface_samples.py"), "publish", "60"],
                                 env=os.environ.copy())
    rclpy.init()
    try:
        node = rclpy.create_node("interface_sample_listener")
        qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        expected = samples()
        received = {}
        for key, msg in expected.items():
            node.create_subscription(type(msg), f"samples/{key}",
                                     lambda m, key=key: received.setdefault(key, m), qos)
        deadline = time.monotonic() + 45
        while len(received) < len(expected) and time.monotonic() < deadline:
            assert publisher.poll() is None, "publisher process died"
            rclpy.spin_once(node, timeout_sec=0.1)
        assert set(received) == set(expected), f"missing: {set(expected) - set(received)}"
        for key, msg in expected.items():
            assert received[key] is not msg
            assert_same(msg, received[key], key)  # (not ==: positions without depth are NaN)
        node.destroy_node()
    finally:
        rclpy.shutdown()
        publisher.terminate()
        publisher.wait(timeout=10)


def test_core_task_codes_are_the_message_constants():
    from molmo2_ros.core.grounding import TASK_CODES
    from molmo2_ros.msg import Grounding

    assert [getattr(Grounding, f"TASK_{t.name}") for t in TASK_CODES] == list(range(len(TASK_CODES)))
