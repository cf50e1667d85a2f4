"""The demo: a video publisher (a video file or the synthetic shapes scene) feeding the
molmo2_grounding node. Takes every argument of molmo2.launch.py, plus `video`.

    ros2 launch molmo2_ros demo.launch.py query:="point: red circle"
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _video_publisher(context):
    arguments = ["--topic", LaunchConfiguration("camera_topic").perform(context), "--rate", "10"]
    video = LaunchConfiguration("video").perform(context)
    if video:
        arguments += ["--video", video]
    if LaunchConfiguration("compressed").perform(context).lower() == "true":
        arguments.append("--compressed")
    return [Node(package="molmo2_ros", executable="video_publisher", name="video_publisher",
                 namespace=LaunchConfiguration("namespace").perform(context),
                 arguments=arguments, output="screen")]


def generate_launch_description():
    share = get_package_share_directory("molmo2_ros")
    return LaunchDescription([
        DeclareLaunchArgument("video", default_value="", description="video file (empty: synthetic shapes)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw", description="camera topic"),
        DeclareLaunchArgument("compressed", default_value="false", description="publish/subscribe compressed"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
        OpaqueFunction(function=_video_publisher),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(os.path.join(share, "launch", "molmo2.launch.py"))),
    ])
