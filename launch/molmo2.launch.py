"""Launch the molmo2_grounding node.

    ros2 launch molmo2_ros molmo2.launch.py camera_topic:=/camera/image_raw model:=/path/to/model

Parameters come from `params_file` (default: the package's config/molmo2_grounding.yaml);
every argument below that is given a value overrides its parameter there.
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


def _grounding_node(context):
    overrides = {}
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
        + [DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
           DeclareLaunchArgument("params_file", default_value=default_params,
                                 description="parameters YAML (see config/molmo2_grounding.yaml)"),
           OpaqueFunction(function=_grounding_node)])
