"""`ros2 run molmo2_ros molmo2_grounding --ros-args -p ...` (the README's node command) with a
model that is not there: configure fails with the reason, the node stays up unconfigured
and refuses goals; the fix is `ros2 param set` (a bad value refused) and `ros2 lifecycle set
configure`/`activate`."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import ROOT, Shell, private_domain, require_ros2_tools  # noqa: E402

require_ros2_tools()


@pytest.fixture
def shell(tmp_path):
    shell = Shell(private_domain(37), tmp_path)
    yield shell
    shell.close()


def test_ros2_run_node_recovers_from_a_missing_model(shell):
    node = shell.start("ros2 run molmo2_ros molmo2_grounding --ros-args -p model:=/models/Molmo2-4B "
                       "-p image_topic:=/camera/image_raw", "node")
    node.wait_for(lambda log: "cannot load the torch backend for model '/models/Molmo2-4B'" in log, 600,
                  "configure to fail")
    shell.wait_for_node("/molmo2_grounding")
    assert "unconfigured [1]" in shell.run("ros2 lifecycle get /molmo2_grounding")
    out = shell.run("ros2 action send_goal /molmo2_grounding/ground molmo2_ros/action/Ground "
                    """"{query: 'red circle'}" """)
    assert "error_code: 1" in out and "Goal finished with status: ABORTED" in out  # ERROR_NOT_ACTIVE

    assert "Setting parameter failed: fps must be 0.01..120" in shell.run("ros2 param set /molmo2_grounding fps -1.0")
    packaged = ROOT / "molmo2_ros" / "assets" / "shapes-tiny"
    assert "Set parameter successful" in shell.run(f"ros2 param set /molmo2_grounding model {packaged}")
    assert "Transitioning successful" in shell.run("ros2 lifecycle set /molmo2_grounding configure")
    assert "Transitioning successful" in shell.run("ros2 lifecycle set /molmo2_grounding activate")
    node.wait_for(lambda log: "active: Image on /camera/image_raw" in log, 120, "the node to activate")
