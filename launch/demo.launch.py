"""The demo: a video publisher (a video file or the synthetic shapes scene) feeding the
molmo2_grounding node. Takes every argument of molmo2.launch.py, plus `video` and
`depth` (true: the publisher adds a registered depth image and camera info of the
synthetic scene, and the node answers with 3D positions). With `cameras` (names,
comma-separated), one synthetic camera per name, each showing other objects
(molmo2_ros.ros.demo.CAMERA_SCENES) on /<name>/image_raw with frame_id <name>_optical_frame,
all answered by the one node.

    ros2 launch molmo2_ros demo.launch.py query:="point: red circle" depth:=true
    ros2 launch molmo2_ros demo.launch.py cameras:=front,wrist
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from molmo2_ros.ros.demo import CAMERA_SCENES


def _camera_names(context) -> list[str]:
    text = LaunchConfiguration("cameras").perform(context)
    return [name.strip() for name in text.split(",")] if text.strip() else []


def _video_publisher(context):
    names = _camera_names(context)
    if names:
        return [_scene_camera(context, i, name) for i, name in enumerate(names)]
    arguments = ["--topic", LaunchConfiguration("camera_topic").perform(context), "--rate", "10"]
    video = LaunchConfiguration("video").perform(context)
    if video:
        arguments += ["--video", video]
    if LaunchConfiguration("compressed").perform(context).lower() == "true":
        arguments.append("--compressed")
    if _depth(context):
        arguments.append("--depth")
    return [Node(package="molmo2_ros", executable="video_publisher", name="video_publisher",
                 namespace=LaunchConfiguration("namespace").perform(context),
                 arguments=arguments, output="screen")]


def _scene_camera(context, i: int, name: str) -> Node:
    """One of several synthetic cameras: its own scene, topic and frame_id."""
    objects = list(CAMERA_SCENES.values())[i % len(CAMERA_SCENES)]
    arguments = ["--topic", f"/{name}/image_raw", "--rate", "10", "--objects", objects, "--seed", str(i),
                 "--frame-id", f"{name}_optical_frame"]
    if _depth(context):
        arguments.append("--depth")
    return Node(package="molmo2_ros", executable="video_publisher", name=f"video_publisher_{name}",
                namespace=LaunchConfiguration("namespace").perform(context), arguments=arguments, output="screen")


def _depth(context) -> bool:
    value = LaunchConfiguration("depth").perform(context).lower()
    if value not in ("true", "false"):
        raise ValueError(f"depth: expected true or false, got {value!r}")
    return value == "true"


def _grounding_node(context):
    """molmo2.launch.py with this launch's arguments; with depth, the publisher's depth topic
    (`depth/image_raw` beside the camera topic)."""
    arguments = {}
    names = _camera_names(context)
    if names and _depth(context):
        arguments["depth_topics"] = ",".join(f"/{name}/depth/image_raw" for name in names)
    elif _depth(context):
        camera = LaunchConfiguration("camera_topic").perform(context).rstrip("/")
        base = camera.rpartition("/")[0]
        arguments["depth_topic"] = f"{base}/depth/image_raw" if base else "depth/image_raw"
    share = get_package_share_directory("molmo2_ros")
    return [IncludeLaunchDescription(PythonLaunchDescriptionSource(os.path.join(share, "launch", "molmo2.launch.py")),
                                     launch_arguments=arguments.items())]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("video", default_value="", description="video file (empty: synthetic shapes)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw", description="camera topic"),
        DeclareLaunchArgument("compressed", default_value="false", description="publish/subscribe compressed"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="several synthetic cameras, names comma-separated (e.g. front,wrist)"),
        DeclareLaunchArgument("depth", default_value="false",
                              description="true: synthetic depth + camera info, 3D answers"),
        OpaqueFunction(function=_video_publisher),
        OpaqueFunction(function=_grounding_node),
    ])
