"""Launch the molmo2_grounding node.

    ros2 launch molmo2_ros molmo2.launch.py camera_topic:=/camera/image_raw model:=/path/to/model
    ros2 launch molmo2_ros molmo2.launch.py cameras:=front,wrist    # /front/image_raw, /wrist/image_raw

Parameters come from `params_file` (default: the package's config/molmo2_grounding.yaml);
every argument below that is given a value overrides its parameter there. Several
cameras (`cameras`, names comma-separated) share the one model; each subscribes to its
entry of `camera_topics` (default `/<name>/image_raw`) and, with `depth_topics`, to its
depth entry (empty entries: no depth for that camera). Other per-camera parameters
(cameras.<name>.*) go in the params file.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _bool(text):
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


# launch argument: (node parameter, type, description). Empty = keep the params file's value.
ARGUMENTS = {
    "camera_topic": ("image_topic", str, "camera topic (Image, or the base of <topic>/compressed)"),
    "compressed": ("compressed", _bool, "true: subscribe to sensor_msgs/CompressedImage"),
    "model": ("model", str, "checkpoint folder or hub id (empty: packaged model, else tiny random)"),
    "backend": ("backend", str, "torch, onnxruntime, tensorrt or openai (a server: server_* in the params file)"),
    "engine_dir": ("engine_dir", str, "folder of exported engines (onnxruntime/tensorrt)"),
    "device": ("device", str, "cuda or cpu (empty: cuda when available)"),
    "query": ("query", str, "continuous query to start with (e.g. 'count: red circles')"),
    "window": ("window_seconds", float, "seconds of frames a query sees"),
    "fps": ("fps", float, "frames per second kept in the window"),
    "tracking": ("tracking_enable", _bool, "true: camera-rate tracks between answers on ~/tracked_objects"),
    "depth_topic": ("depth_topic", str, "registered depth image (16UC1 mm / 32FC1 m): 3D positions; "
                                        "empty: the params file's (default: off)"),
    "camera_info_topic": ("camera_info_topic", str, "CameraInfo of the camera (empty: camera_info "
                                                    "beside camera_topic)"),
    "target_frame": ("target_frame", str, "frame 3D positions are also given in, through tf2 (e.g. base_link, "
                                          "odom, map; needs depth_topic)"),
    "tracked_tf_frames": ("tracked_tf_frames", _bool, "true: tracked objects with 3D as TF frames "
                                                      "<node>_<label>_<id>"),
}


def _names(text: str) -> list[str]:
    """'front, wrist' -> ['front', 'wrist'] (no entry empty)."""
    return [name.strip() for name in text.split(",")] if text.strip() else []


def _cameras(context) -> dict:
    """The cameras, camera_topics and depth_topics arguments as node parameters."""
    names = _names(LaunchConfiguration("cameras").perform(context))
    topics = _names(LaunchConfiguration("camera_topics").perform(context)) or [f"/{n}/image_raw" for n in names]
    depths = LaunchConfiguration("depth_topics").perform(context)
    depths = [d.strip() for d in depths.split(",")] if depths.strip() else [""] * len(names)
    if not names:
        if topics != [] or any(depths):
            raise ValueError("camera_topics and depth_topics need cameras:=name1,name2")
        return {}
    if len(topics) != len(names) or len(depths) != len(names):
        raise ValueError(f"cameras names {len(names)} cameras; camera_topics and depth_topics must have one "
                         f"entry each (got {len(topics)} and {len(depths)})")
    parameters = {"cameras": names}
    for name, topic, depth in zip(names, topics, depths):
        parameters[f"cameras.{name}.image_topic"] = topic
        if depth:
            parameters[f"cameras.{name}.depth_topic"] = depth
    return parameters


def _grounding_node(context):
    overrides = _cameras(context)
    for argument, (parameter, kind, _) in ARGUMENTS.items():
        value = LaunchConfiguration(argument).perform(context)
        if value != "":
            overrides[parameter] = kind(value)
    return [Node(
        package="molmo2_ros", executable="molmo2_grounding", name="molmo2_grounding",
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=[LaunchConfiguration("params_file").perform(context), overrides],
        output="screen", emulate_tty=True)]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("molmo2_ros"), "config", "molmo2_grounding.yaml")
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value="", description=description)
         for name, (_, _, description) in ARGUMENTS.items()]
        + [DeclareLaunchArgument("cameras", default_value="",
                                 description="several cameras sharing the model: names, comma-separated"),
           DeclareLaunchArgument("camera_topics", default_value="",
                                 description="their image topics, comma-separated (default /<name>/image_raw)"),
           DeclareLaunchArgument("depth_topics", default_value="",
                                 description="their depth topics, comma-separated (an empty entry: no depth)"),
           DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
           DeclareLaunchArgument("params_file", default_value=default_params,
                                 description="parameters YAML (see config/molmo2_grounding.yaml)"),
           OpaqueFunction(function=_grounding_node)])
