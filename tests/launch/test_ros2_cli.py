"""The README's "Using it" commands, verbatim, with the real ROS 2 tools: a camera from
`ros2 run molmo2_ros video_publisher`, the node from `ros2 launch molmo2_ros
molmo2.launch.py`, then `ros2 action send_goal --feedback`, `ros2 topic pub/echo`,
`ros2 param dump/set/load/get`, `ros2 lifecycle set/get` and `ros2 interface show` against
them. One node serves the whole module (tests run in file order and leave it active).
"""
import re
import shlex
import statistics
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import ROOT, VENV, Shell, diagnostics, private_domain, require_ros2_tools

require_ros2_tools()

from molmo2_ros.ros import live_params  # noqa: E402
from molmo2_ros.ros.settings import PARAMETERS, Applies, problems  # noqa: E402

NODE = "/molmo2_grounding"
DEFAULTS = yaml.safe_load((ROOT / "config" / "molmo2_grounding.yaml").read_text())["/**"]["ros__parameters"]
# A new valid value for every parameter that applies at once.
LIVE_VALUES = {"fps": 1.0, "window_seconds": 6.0, "max_frames": 6, "max_side": 320, "jump_back_s": 2.0,
               "max_new_tokens": 128, "query_task": "count", "query": "red circle", "query_period": 0.5,
               "diagnostics_period": 0.5, "tracking_enable": False, "tracking_max_points": 20,
               "tracking_max_age": 8.0, "tracking_window": 4.0, "tracking_max_side": 320,
               "tracking_buffer_mb": 64.0, "jump_ahead_s": 5.0, "max_image_pixels": 1920 * 1080,
               "camera_timeout": 30.0}


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    shell = Shell(private_domain(11), tmp_path_factory.mktemp("ros2_cli"))
    yield shell
    shell.close()


@pytest.fixture(scope="module")
def node(shell):
    """The README's camera and node, started once; the launch's output."""
    shell.start("ros2 run molmo2_ros video_publisher", "video_publisher")
    launch = shell.start("ros2 launch molmo2_ros molmo2.launch.py", "launch")
    launch.wait_for(lambda log: "active: Image on /camera/image_raw" in log, 600, "the node to activate")
    shell.wait_for_node(NODE)
    return launch


def test_interface_show(shell):
    out = shell.run("ros2 interface show molmo2_ros/action/Ground")
    goal, result, feedback = out.split("\n---\n")
    assert "string query" in goal and "uint8 task" in goal
    assert "molmo2_ros/Grounding grounding" in result and "uint8 ERROR_BUSY = 6" in result
    assert "uint8 STAGE_GENERATING = 2" in feedback and "float32 elapsed" in feedback
    assert "molmo2_ros/GroundedPoint[] points" in feedback and "molmo2_ros/Track[] tracks" in feedback


def test_action_send_goal_with_feedback(shell, node):
    out = shell.run("ros2 action send_goal --feedback /molmo2_grounding/ground molmo2_ros/action/Ground "
                    """"{query: 'red circle', task: 0}" """)
    assert "Goal accepted" in out
    stages = [int(s) for s in re.findall(r"Feedback:\s+stage: (\d)", out)]
    assert stages[:3] == [0, 1, 2], out  # QUEUED, PREPROCESSING, GENERATING
    result = yaml.safe_load(out.split("Result:\n", 1)[1].split("\nGoal finished")[0].strip())
    assert result["error_code"] == 0, result["error_message"]
    grounding = result["grounding"]
    assert grounding["query"] == "red circle" and grounding["task"] == 0
    assert grounding["header"]["frame_id"] == "camera_optical_frame"  # the video publisher's
    assert grounding["points"], grounding["answer"]
    assert "Goal finished with status: SUCCEEDED" in out


def test_action_feedback_streams_points_before_the_result(shell, node):
    """A track query's feedback carries the track points decoded so far, printed before the
    result, each a prefix of the result's track (same stamps, pixels, ids)."""
    out = shell.run("ros2 action send_goal --feedback /molmo2_grounding/ground molmo2_ros/action/Ground "
                    """"{query: 'red circle', task: 2}" """)
    before, after = out.split("Result:\n", 1)
    feedbacks = [yaml.safe_load(block.strip()) for block in before.split("Feedback:\n")[1:]]
    streamed = [f for f in feedbacks if f["tracks"]]
    assert streamed, out
    result = yaml.safe_load(after.split("\nGoal finished")[0].strip())
    assert result["error_code"] == 0, result["error_message"]
    final = {t["id"]: t for t in result["grounding"]["tracks"]}

    def key(p):
        return p["stamp"]["sec"], p["stamp"]["nanosec"], p["x"], p["y"], p["object_id"]

    for f in streamed:
        assert f["stage"] == 2   # GENERATING
        for track in f["tracks"]:
            expected = final[track["id"]]["points"][:len(track["points"])]
            assert [key(p) for p in track["points"]] == [key(p) for p in expected]
    assert "Goal finished with status: SUCCEEDED" in out


def test_topic_pub_query_then_echo_grounding(shell, node):
    def counted(batch):
        return [m for m in batch if m["query"] == "red circles" and m["task"] == 1]  # TASK_COUNT

    found = shell.echo("/molmo2_grounding/grounding", counted, then=(
        """ros2 topic pub --once /molmo2_grounding/query std_msgs/String "{data: 'count: red circles'}" """))
    assert found[0]["query_id"].startswith("topic-")
    assert found[0]["header"]["frame_id"] == "camera_optical_frame"
    shell.run("""ros2 topic pub --once /molmo2_grounding/query std_msgs/String "{data: ''}" """)
    node.wait_for(lambda log: "continuous query stopped" in log, 120, "the continuous query to stop")


def test_topic_echo_tracked_objects(shell, node):
    def tracked(batch):
        return [m for m in batch if m["objects"]]

    # Objects are dropped tracking_max_age s after the frame their answer saw: on a loaded
    # 2-core machine an answer can take longer than the defaults allow, so widen them here.
    # (independent commands run together: each is mostly Python start-up and discovery)
    shell.run_together(["ros2 param set /molmo2_grounding tracking_max_age 120.0",
                        "ros2 param set /molmo2_grounding tracking_window 60.0"])
    found = shell.echo("/molmo2_grounding/tracked_objects", tracked, then=(
        """ros2 topic pub --once /molmo2_grounding/query std_msgs/String "{data: 'point: red circle'}" """))
    shell.run_together(["""ros2 topic pub --once /molmo2_grounding/query std_msgs/String "{data: ''}" """,
                        f"ros2 param set /molmo2_grounding tracking_max_age {DEFAULTS['tracking_max_age']}",
                        f"ros2 param set /molmo2_grounding tracking_window {DEFAULTS['tracking_window']}"])
    assert found[0]["header"]["frame_id"] == "camera_optical_frame"
    assert {"object_id", "x", "y", "anchor_stamp", "age", "confidence", "lost"} <= set(found[0]["objects"][0])


def test_param_dump_lists_every_parameter(shell, node):
    dumped = yaml.safe_load(shell.run("ros2 param dump /molmo2_grounding"))[NODE]["ros__parameters"]
    assert {name: dumped[name] for name in PARAMETERS} == DEFAULTS


def test_param_set_applies_at_once_or_names_the_problem(shell, node):
    assert "Set parameter successful" in shell.run("ros2 param set /molmo2_grounding max_frames 4")
    assert diagnostics(shell, NODE, lambda d: d["window_max_frames"] == "4")

    assert "Set parameter successful" in shell.run("ros2 param set /molmo2_grounding tracking_enable false")
    assert "tracking_frames" not in diagnostics(shell, NODE, lambda d: "tracking_frames" not in d)
    shell.run("ros2 param set /molmo2_grounding tracking_enable true")

    # Three refused values (set together, then read back together: independent commands).
    fps, max_frames, model = shell.run_together(["ros2 param set /molmo2_grounding fps -1.0",
                                                 "ros2 param set /molmo2_grounding max_frames -2",
                                                 "ros2 param set /molmo2_grounding model /models/Molmo2-4B"])
    assert "Setting parameter failed: fps must be 0.01..120, or 0 for the model's window, got -1.0" in fps
    assert "Setting parameter failed: max_frames must be 1..1024, or 0 for the model's window, got -2" in max_frames
    assert ("Setting parameter failed: model applies at configure: ros2 lifecycle set /molmo2_grounding "
            "cleanup, set model, then ros2 lifecycle set /molmo2_grounding configure") in model
    fps, max_frames, model = shell.run_together([f"ros2 param get /molmo2_grounding {name}"
                                                 for name in ("fps", "max_frames", "model")])
    assert "Double value is: 0.0" in fps   # the model's window
    assert "Integer value is: 4" in max_frames
    assert "String value is: " + DEFAULTS["model"] in model


def test_param_load_every_parameter(shell, node, tmp_path):
    """Every live parameter applies; every other one is refused with how to apply it; a
    value of the wrong type is refused with the configure-time message."""
    assert set(LIVE_VALUES) == live_params.named(Applies.LIVE)
    def changed(value):
        if isinstance(value, (str, list)):
            return "changed" if isinstance(value, str) else ["changed"]
        return not value if isinstance(value, bool) else value + 1

    refused = {name: changed(DEFAULTS[name]) for name in set(PARAMETERS) - live_params.named(Applies.LIVE)}
    wrong_type = {name: 5 if isinstance(value, str) else "five" for name, value in LIVE_VALUES.items()}
    for values, expect in ((LIVE_VALUES, "successful"), (refused, "failed: "), (wrong_type, "failed: ")):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({NODE: {"ros__parameters": values}}, sort_keys=False))
        out = shell.run(f"ros2 param load /molmo2_grounding {path}")
        for name in values:
            assert f"Set parameter {name} {expect}" in out, out
        if values is refused:
            for name in live_params.named(Applies.CONFIGURE):
                assert f"Set parameter {name} failed: {name} applies at configure: ros2 lifecycle set" in out
            for name in live_params.named(Applies.ACTIVATE):
                assert f"Set parameter {name} failed: {name} applies at activate: ros2 lifecycle set" in out
            for name in live_params.named(Applies.START):
                assert f"Set parameter {name} failed: {name} is read when the node starts" in out
        if values is wrong_type:
            for name in values:
                assert f"Set parameter {name} failed: {name} must be a" in out, out
    dumped = yaml.safe_load(shell.run("ros2 param dump /molmo2_grounding"))[NODE]["ros__parameters"]
    assert {name: dumped[name] for name in PARAMETERS} == DEFAULTS | LIVE_VALUES
    # Applied, not just stored: the window, tracking, the diagnostics period, the continuous query.
    stats = diagnostics(shell, NODE, lambda d: d["window_max_frames"] == "6")
    assert float(stats["window_span_s"]) <= 6.0 and "tracking_frames" not in stats

    def node_diagnostics(batch):
        ours = [m for m in batch if any(s["name"] == "molmo2_grounding: grounding" for s in m["status"])]
        return ours if len(ours) >= 6 else None

    beats = [m["header"]["stamp"]["sec"] + m["header"]["stamp"]["nanosec"] * 1e-9
             for m in shell.echo("/diagnostics", node_diagnostics)]
    # diagnostics_period 0.5 (default 1.0); the median, as one beat may wait for a busy executor
    assert statistics.median(b - a for a, b in zip(beats, beats[1:])) < 0.75
    found = shell.echo("/molmo2_grounding/grounding", lambda batch: [
        m for m in batch if m["query"] == "red circle" and m["task"] == 1 and len(m["frame_stamps"]) >= 2])
    stamps = [s["sec"] + s["nanosec"] * 1e-9 for s in found[0]["frame_stamps"]]
    assert len(stamps) <= 6 and min(b - a for a, b in zip(stamps, stamps[1:])) > 0.75  # fps 1.0
    # Back to the package's params file (unchanged values are accepted whatever their kind).
    out = shell.run(f"ros2 param load /molmo2_grounding {VENV}/share/molmo2_ros/config/molmo2_grounding.yaml")
    assert "failed" not in out, out


# Hostile values as typed on the command line (`ros2 param set` reads them as YAML).
HOSTILE = ["1.0e+300", "-1.0e+300", "1.0e-300", ".nan", ".inf", "-.inf", "0", "-1", str(2**63), "x" * 5000,
           "[1, 2]"]
# `ros2 param set` hands the exact double and int on: one live parameter of each in the default
# suite (strings and bools arrive as typed through `ros2 param load` too); every parameter with
# every value: the slow sweep below.
SAMPLE = ("tracking_max_age", "max_frames")
GOAL = "ros2 action send_goal /molmo2_grounding/ground molmo2_ros/action/Ground \"{query: 'red circle'}\""


def set_commands(names, value) -> list[str]:
    return [f"ros2 param set /molmo2_grounding {name} -- {shlex.quote(value)}" for name in names]


def check_set(outs, names, value) -> None:
    """Each `ros2 param set` of `names` to `value` (outputs in order): refused naming the
    parameter and why, or (a CLI that cannot even encode it, like 2**63) never sent."""
    for name, out in zip(names, outs, strict=True):
        assert "Set parameter successful" in out or re.search(
            rf"Setting parameter failed: {name} (must be|is read|applies at|need)", out) or (
            value == str(2**63) and "Setting parameter" not in out), (name, value[:20], out[-2000:])


def set_hostile(shell, names, value) -> None:
    """`ros2 param set` each of `names` to `value`, one after the other (see check_set)."""
    for name, command in zip(names, set_commands(names, value)):
        check_set([shell.run(command, check=False)], [name], value)


def assert_alive_and_valid(shell, node) -> None:
    """The node answers a goal, and whatever it took is valid for its declaration (the goal
    and `ros2 param dump` at the same time)."""
    answered, dump = shell.run_together([GOAL, "ros2 param dump /molmo2_grounding"])
    assert "Goal finished with status: SUCCEEDED" in answered
    dumped = yaml.safe_load(dump)[NODE]["ros__parameters"]
    assert problems({name: dumped[name] for name in PARAMETERS}) == []
    assert "Traceback" not in node.log()


def test_hostile_values_never_kill_the_node(shell, node, tmp_path):
    """Each hostile value through `ros2 param set` on a double and an int, and on every
    parameter at once through `ros2 param load` (which hands values on as it parses them),
    the three commands at the same time (as from three terminals): the node never dies, each
    refusal names the parameter and the reason, and after each value the node answers a goal
    with valid parameters."""
    for value in HOSTILE:
        path = tmp_path / "hostile.yaml"
        path.write_text(f"{NODE}:\n  ros__parameters:\n" + "".join(f"    {name}: {value}\n" for name in PARAMETERS))
        *outs, out = shell.run_together(set_commands(SAMPLE, value) + [f"ros2 param load /molmo2_grounding {path}"],
                                        check=False)
        check_set(outs, SAMPLE, value)
        for name in PARAMETERS:
            assert f"Set parameter {name} successful" in out or re.search(
                rf"Set parameter {name} failed: {name} (must be|is read|applies at|need)", out) or (
                value == str(2**63)), (name, value[:20], out[-2000:])
        assert_alive_and_valid(shell, node)
    package_params = f"{VENV}/share/molmo2_ros/config/molmo2_grounding.yaml"
    assert "failed" not in shell.run(f"ros2 param load /molmo2_grounding {package_params}")


@pytest.mark.slow
def test_every_parameter_with_every_hostile_value(shell, node):
    """The whole product through `ros2 param set` (about 500 CLI calls: slow)."""
    package_params = f"{VENV}/share/molmo2_ros/config/molmo2_grounding.yaml"
    for value in HOSTILE:
        set_hostile(shell, PARAMETERS, value)
        assert_alive_and_valid(shell, node)
        assert "failed" not in shell.run(f"ros2 param load /molmo2_grounding {package_params}")


def test_lifecycle_set_frees_and_reloads_the_model(shell, node):
    def loads():
        return node.log().count("loaded torch backend")

    loaded = loads()
    assert "Transitioning successful" in shell.run("ros2 lifecycle set /molmo2_grounding deactivate")
    # (independent commands run together: each is mostly Python start-up and discovery)
    state, depth, backend = shell.run_together(["ros2 lifecycle get /molmo2_grounding",
                                                "ros2 param set /molmo2_grounding image_depth 3",
                                                "ros2 param set /molmo2_grounding backend onnxruntime"])
    assert "inactive [2]" in state
    # Inactive: what applies at activate may be set; what applies at configure still may not.
    assert "Set parameter successful" in depth
    assert "applies at configure" in backend
    freed = diagnostics(shell, NODE, lambda d: d["state"] == "inactive")
    assert freed["backend"] == "" and freed["model"] == ""  # the backend was closed

    assert "Transitioning successful" in shell.run("ros2 lifecycle set /molmo2_grounding activate")
    assert loads() == loaded + 1
    node.wait_for(lambda log: "(best_effort, depth 3)" in log, 120, "the new camera QoS depth")

    shell.run("ros2 lifecycle set /molmo2_grounding deactivate")
    assert "Transitioning successful" in shell.run("ros2 lifecycle set /molmo2_grounding cleanup")
    packaged = str(ROOT / "molmo2_ros" / "assets" / "shapes-tiny")
    state, model = shell.run_together(["ros2 lifecycle get /molmo2_grounding",
                                       f"ros2 param set /molmo2_grounding model {packaged}"])
    assert "unconfigured [1]" in state
    assert "Set parameter successful" in model
    assert "Transitioning successful" in shell.run("ros2 lifecycle set /molmo2_grounding configure")
    assert "Transitioning successful" in shell.run("ros2 lifecycle set /molmo2_grounding activate")
    assert loads() == loaded + 2
    state, out = shell.run_together(["ros2 lifecycle get /molmo2_grounding",
                                     "ros2 action send_goal /molmo2_grounding/ground molmo2_ros/action/Ground "
                                     """"{query: 'red circle', task: 0}" """])
    assert "active [3]" in state
    assert "Goal finished with status: SUCCEEDED" in out
