"""launch_pytest tests of launch/molmo2.launch.py and launch/demo.launch.py: each launch
brings up a node that answers an action goal over DDS. Needs the ROS 2 launch tools
(../shared/ros2-tools; see ros2_cli.require_ros2_tools)."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import require_ros2_tools  # noqa: E402

require_ros2_tools()

import launch  # noqa: E402
import launch_pytest  # noqa: E402
from action_msgs.msg import GoalStatus  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ros"))
from node_harness import Harness  # noqa: E402

DOMAIN = 50 + (os.getpid() + 37) % 100
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN)  # the launched processes inherit it
# What `source .venv/bin/activate` adds: the launch files find the package's share.
os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(filter(None, [sys.prefix, os.environ.get("AMENT_PREFIX_PATH")]))
TOPIC = "/launch_test/camera/image_raw"


def include(name: str, **arguments) -> IncludeLaunchDescription:
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(str(ROOT / "launch" / name)),
                                    launch_arguments={k: str(v) for k, v in arguments.items()}.items())


@launch_pytest.fixture
def grounding_launch(tiny_model_dir):
    return launch.LaunchDescription([
        include("molmo2.launch.py", camera_topic=TOPIC, model=tiny_model_dir, window=4.0),
        launch_pytest.actions.ReadyToTest()])


@launch_pytest.fixture
def demo_launch(tiny_model_dir):
    return launch.LaunchDescription([
        include("demo.launch.py", camera_topic=TOPIC, model=tiny_model_dir),
        launch_pytest.actions.ReadyToTest()])


@pytest.mark.launch(fixture=grounding_launch)
def test_molmo2_launch_serves_goals(tiny_model_dir):
    harness = Harness(DOMAIN, TOPIC)
    try:
        harness.wait_diag(lambda d: d["state"] == "active", timeout=600, what="the launched node")
        published = set(harness.publish_frames(20))
        status, result, _ = harness.ask("red square")
        assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
        assert result.grounding.header.frame_id == harness.frame_id
        assert result.grounding.model == str(tiny_model_dir)  # model:=
        assert {s.sec * 10**9 + s.nanosec for s in result.grounding.frame_stamps} <= published
    finally:
        harness.close()


@pytest.mark.launch(fixture=demo_launch)
def test_demo_launch_publishes_and_serves():
    harness = Harness(DOMAIN, TOPIC)
    try:
        harness.wait_diag(lambda d: d["state"] == "active" and int(d["window_frames"]) >= 2,
                          timeout=600, what="the launched node to buffer the publisher's frames")
        status, result, _ = harness.ask("red circle")
        assert status == GoalStatus.STATUS_SUCCEEDED, result.error_message
        assert result.grounding.header.frame_id == "camera_optical_frame"
    finally:
        harness.close()
