"""`ros2 launch molmo2_ros demo.launch.py` (which includes molmo2.launch.py) with every
launch argument the README lists (but `model:=`: tests/launch/test_launch_files.py), each
shown to take effect: the node's parameters (`ros2 param dump`), its names (`ros2 node
list`, `ros2 topic info`) and its answers (`ros2 topic echo`). The ONNX Runtime engines
come from the README's `molmo2-engines export`.
"""
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from ros2_cli import ROOT, Shell, diagnostics, private_domain, require_ros2_tools  # noqa: E402

require_ros2_tools()

NODE = "/robot1/molmo2_grounding"
PACKAGED = ROOT / "molmo2_ros" / "assets" / "shapes-tiny"


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    shell = Shell(private_domain(23), tmp_path_factory.mktemp("launch_arguments"))
    yield shell
    shell.close()


# First in the file: the launch of `launched` below (a continuous query on ONNX Runtime) is not
# yet running to share the CPU with this one.
def test_demo_depth_and_target_frame_arguments_give_3d_answers_in_base_link(shell):
    """depth:=true: the publisher adds the synthetic scene's registered depth and camera
    info, the node subscribes to it (depth_topic), and answers carry 3D positions.
    target_frame:=base_link with the camera's transform published from another process
    (tests/ros/transform_publisher.py, what `ros2 run tf2_ros static_transform_publisher`
    does): the README's `ros2 topic echo` of ~/detections_3d and ~/tracked_poses show them
    in base_link; tracked_tf_frames:=true puts the tracked objects on /tf."""
    static = shell.start(f"python {ROOT}/tests/ros/transform_publisher.py $ROS_DOMAIN_ID static base_link "
                         "camera_optical_frame 0.3 0 1.2 -0.5 0.5 -0.5 0.5", "static_transform")
    static.wait_for(lambda log: "publishing" in log, 60, "the static transform")
    launch = shell.start("ros2 launch molmo2_ros demo.launch.py depth:=true namespace:=robot2 "
                         "query:='red circle' target_frame:=base_link tracked_tf_frames:=true", "launch_depth")
    node = "/robot2/molmo2_grounding"
    try:
        launch.wait_for(lambda log: "active: Image on /camera/image_raw" in log, 600, "the node to activate")
        assert "target_frame 'base_link' is in the TF tree" in launch.log()
        shell.wait_for_node(node)
        dumped = yaml.safe_load(shell.run(f"ros2 param dump {node}"))[node]["ros__parameters"]
        assert dumped["depth_topic"] == "/camera/depth/image_raw"
        assert (dumped["target_frame"], dumped["tracked_tf_frames"]) == ("base_link", True)
        diagnostics(shell, node, lambda d: int(d.get("depth_received", "0")) > 0)
        answer = shell.echo(f"{node}/grounding", lambda batch: [m for m in batch if m["points"]])[0]
        assert any(p["has_position"] and 0.5 < p["position"]["z"] < 3.5 for p in answer["points"]), answer
        placed = [p for p in answer["points"] if p["has_target_position"]]
        assert placed and all(p["target_position"]["header"]["frame_id"] == "base_link" for p in placed), answer
        # the camera looks along base_link's x from 1.2 m up: optical z is base x (+ 0.3 m)
        assert all(abs(p["target_position"]["point"]["x"] - 0.3 - p["position"]["z"]) < 1e-6 for p in placed)
        detections = shell.echo(f"{node}/detections_3d", lambda batch: [m for m in batch if m["detections"]])[0]
        assert detections["header"]["frame_id"] == "base_link"
        poses = shell.echo(f"{node}/tracked_poses", lambda batch: [m for m in batch if m["poses"]])[0]
        assert poses["header"]["frame_id"] == "base_link"
        tf = shell.echo("/tf", lambda batch: [t for m in batch for t in m["transforms"]
                                              if t["child_frame_id"].startswith("molmo2_grounding_")])
        assert tf[0]["header"]["frame_id"] == "camera_optical_frame"
    finally:
        launch.stop()
        static.stop()


@pytest.fixture(scope="module")
def launched(shell, tmp_path_factory, session_test_video):
    folder = tmp_path_factory.mktemp("launch_inputs")
    shell.run(f"molmo2-engines export --model {PACKAGED} --out {folder}/engines --max-frames 8 "
              "--max-prompt 1024 --max-new-tokens 64", timeout=300)
    params = yaml.safe_load((ROOT / "config" / "molmo2_grounding.yaml").read_text())
    params["/**"]["ros__parameters"]["max_new_tokens"] = 48
    (folder / "my_params.yaml").write_text(yaml.safe_dump(params))
    launch = shell.start(
        f"ros2 launch molmo2_ros demo.launch.py video:={session_test_video} camera_topic:=/cam/image_raw "
        f"compressed:=true backend:=onnxruntime engine_dir:={folder}/engines query:='count: red circles' window:=4.0 "
        f"fps:=1.0 tracking:=false device:=cpu namespace:=robot1 params_file:={folder}/my_params.yaml", "launch")
    launch.wait_for(lambda log: "active: CompressedImage on /cam/image_raw/compressed" in log, 600,
                    "the node to activate")
    shell.wait_for_node(NODE)
    shell.wait_for_node("/robot1/video_publisher", lifecycle=False)
    return launch, folder


def test_arguments_set_the_node_parameters(shell, launched):
    """namespace:= (the fixture found /robot1/molmo2_grounding and /robot1/video_publisher in
    `ros2 node list`), params_file:= (max_new_tokens) and the others."""
    _, folder = launched
    dumped = yaml.safe_load(shell.run(f"ros2 param dump {NODE}"))[NODE]["ros__parameters"]
    names = ("image_topic", "compressed", "backend", "engine_dir", "query", "window_seconds", "fps",
             "tracking_enable", "device", "max_new_tokens")
    assert {name: dumped[name] for name in names} == {
        "image_topic": "/cam/image_raw", "compressed": True, "backend": "onnxruntime",
        "engine_dir": f"{folder}/engines", "query": "count: red circles", "window_seconds": 4.0, "fps": 1.0,
        "tracking_enable": False, "device": "cpu", "max_new_tokens": 48}


def test_arguments_take_effect(shell, launched, session_test_video):
    launch, _ = launched
    assert f"publishing {session_test_video} (30 frames) on /cam/image_raw/compressed" in launch.log()
    info = shell.run("ros2 topic info /cam/image_raw/compressed")  # compressed camera, both ends
    assert "Type: sensor_msgs/msg/CompressedImage" in info
    assert "Publisher count: 1" in info and "Subscription count: 1" in info

    def counted(batch):  # the query argument's answers, on ONNX Runtime, over >= 2 frames
        return [m for m in batch if m["query"] == "red circles" and m["task"] == 1 and len(m["frame_stamps"]) >= 2]

    grounding = shell.echo(f"{NODE}/grounding", counted)[0]
    assert grounding["backend"] == "onnxruntime"
    stamps = [s["sec"] + s["nanosec"] * 1e-9 for s in grounding["frame_stamps"]]
    assert min(b - a for a, b in zip(stamps, stamps[1:])) > 0.75  # fps:=1.0 (default 2: 0.5 s apart)
    assert stamps[-1] - stamps[0] <= 4.0  # window:=4.0 (default 8)
    stats = diagnostics(shell, NODE, lambda d: d["state"] == "active")
    assert "tracking_frames" not in stats  # tracking:=false
    assert stats["backend"] == "onnxruntime"
