"""Without the ROS 2 tools the command-line and launch tests skip with the reason, except
in CI (CI=true, set by .ci/run), where that is a failure."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "launch"))
import ros2_cli  # noqa: E402


def test_missing_tools_skip_with_the_reason_and_fail_in_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(ros2_cli, "VENV", tmp_path)  # a venv without bin/ros2
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="bash ../shared/ros2-tools/install.sh .venv"):
        ros2_cli.require_ros2_tools()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the ROS 2 tool tests"):
        ros2_cli.require_ros2_tools()
