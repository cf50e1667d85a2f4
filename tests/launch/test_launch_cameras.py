"""The README's several-camera commands as a robot developer types them (issue 29): `ros2
launch molmo2_ros demo.launch.py cameras:=front,wrist` (two synthetic cameras showing
different objects, one node, the shipped model), `ros2 action send_goal` naming each
camera, `ros2 topic echo` of each camera's own topics, and its /diagnostics status."""
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import Shell, private_domain, require_ros2_tools  # noqa: E402

require_ros2_tools()

NODE = "/molmo2_grounding"
ASKED = {"front": "red circle", "wrist": "green circle"}   # each in its own camera's scene only


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    shell = Shell(private_domain(41), tmp_path_factory.mktemp("launch_cameras"))
    yield shell
    shell.close()


@pytest.fixture(scope="module")
def launched(shell):
    launch = shell.start("ros2 launch molmo2_ros demo.launch.py cameras:=front,wrist", "launch")
    launch.wait_for(lambda log: "active: camera 'front': Image on /front/image_raw" in log, 600,
                    "the node to activate")
    shell.wait_for_node(NODE)
    yield launch
    launch.stop()


def send_goal(shell: Shell, goal: str) -> dict:
    out = shell.run(f"""ros2 action send_goal {NODE}/ground molmo2_ros/action/Ground "{goal}" """, timeout=240)
    assert "Goal accepted" in out, out
    return yaml.safe_load(out.split("Result:\n", 1)[1].split("\nGoal finished")[0].strip())


def test_each_camera_answers_a_goal_naming_it_and_its_own_topics_carry_it(shell, launched):
    for camera, query in ASKED.items():
        tracked = shell.start(f"ros2 topic echo {NODE}/{camera}/tracked_objects", f"tracked_{camera}")
        try:
            result = send_goal(shell, f"{{query: '{query}', cameras: [{camera}]}}")
            assert result["error_code"] == 0, result["error_message"]
            grounding = result["grounding"]
            assert grounding["camera"] == camera and grounding["header"]["frame_id"] == f"{camera}_optical_frame"
            assert grounding["points"] and [g["camera"] for g in result["groundings"]] == [camera]
            # the answer's objects, carried onto this camera's frames on its own topic
            found = tracked.wait_for(lambda text: re.search(
                rf"frame_id: {camera}_optical_frame\n(.*\n)*?query_id: {grounding['query_id']}", text), 120,
                f"{camera}'s tracked objects")
            assert found
        finally:
            tracked.stop()


def test_one_goal_asks_both_cameras_and_an_unknown_camera_is_refused(shell, launched):
    result = send_goal(shell, "{query: 'red circle', cameras: [wrist, front]}")
    assert result["error_code"] == 0, result["error_message"]
    assert [g["camera"] for g in result["groundings"]] == ["wrist", "front"]
    result = send_goal(shell, "{query: 'red circle', cameras: [left]}")
    assert result["error_code"] == 3   # ERROR_INVALID_QUERY
    assert result["error_message"] == "unknown camera 'left': the cameras are 'front', 'wrist'"


def test_each_camera_has_its_diagnostics_status(shell, launched):
    def camera_status(batch):
        found = {s["name"].rpartition(" ")[2]: {kv["key"]: kv["value"] for kv in s["values"]}
                 for msg in batch for s in msg["status"] if s["name"].startswith("molmo2_grounding: camera ")}
        return found if set(found) == set(ASKED) else None

    statuses = shell.echo("/diagnostics", camera_status)
    for camera, values in statuses.items():
        assert float(values["ingest_rate_hz"]) > 0 and int(values["window_frames"]) > 0, (camera, values)


def test_a_continuous_query_on_one_camera(shell, launched):
    def wrist_counts(batch):
        return [m for m in batch if m["query_id"].startswith("topic-") and m["query"] == "green circles"]

    found = shell.echo(f"{NODE}/grounding", wrist_counts, then=(
        f"""ros2 topic pub --once {NODE}/wrist/query std_msgs/String "{{data: 'count: green circles'}}" """))
    shell.run(f"""ros2 topic pub --once {NODE}/wrist/query std_msgs/String "{{data: ''}}" """)
    assert {m["camera"] for m in found} == {"wrist"} and found[0]["task"] == 1
    assert found[0]["header"]["frame_id"] == "wrist_optical_frame"
