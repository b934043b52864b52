"""The region captioning node next to a camera driver and a segmenter.

    ros2 launch finecaption_ros finecaption.launch.py image:=/camera/image_raw mask:=/segmenter/instances
    ros2 launch finecaption_ros finecaption.launch.py camera:=v4l2_camera    # also start a USB camera driver
    ros2 launch finecaption_ros finecaption.launch.py cameras:=[front,left]  # front/image + front/mask, ... in one batch
    ros2 launch finecaption_ros finecaption.launch.py lifecycle:=true        # a managed node: waits for configure

With `cameras`, each camera's topics are `<ns>/image`, `<ns>/mask` and `<ns>/region_captions` under the node's
namespace (remap them with `<ns>/image:=...`); the image, mask and captions arguments name the single camera's.

The segmenter (not started here) must publish an instance label image (mono8, mono16 or 32SC1) with the same header
stamp as the image it segmented (or within sync_slop seconds). Every process started here gets the Fast DDS profile
for camera-sized frames (finecaption_ros/ros_support/dds.py) unless FASTDDS_DEFAULT_PROFILES_FILE is already set.
When the captioning node exits (a bad model path, Ctrl-C), the whole launch shuts down.
"""
import os
from typing import List

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable, Shutdown
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from finecaption_ros.ros_support.dds import LARGE_FRAMES_PROFILE, PROFILE_VARIABLE
from finecaption_ros.ros_support.params import BACKENDS
from finecaption_ros.tasks import TASKS
from launch import LaunchDescription

# Camera drivers this file can start: package -> executable.
CAMERAS = {"v4l2_camera": "v4l2_camera_node", "usb_cam": "usb_cam_node_exe"}


def _camera_is(name):
    return IfCondition(PythonExpression(["'", LaunchConfiguration("camera"), "' == '", name, "'"]))


def check_camera_installed(context):
    """Refuse, before any process starts, a camera driver whose package is not installed."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    camera = LaunchConfiguration("camera").perform(context)
    if camera in CAMERAS:
        try:
            get_package_share_directory(camera)
        except PackageNotFoundError:
            raise RuntimeError(f"camera:={camera} needs the ROS package {camera!r}, which is not installed: "
                               f"install it (apt install ros-$ROS_DISTRO-{camera.replace('_', '-')}) or launch "
                               "with camera:=none") from None
    return []


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("mask", default_value="/segmentation/instances",
                              description="instance label image topic (mono8, mono16 or 32SC1; 0 = background)"),
        DeclareLaunchArgument("captions", default_value="/region_captions", description="output topic"),
        DeclareLaunchArgument("model", default_value="", description="model folder; empty = embedded default model"),
        DeclareLaunchArgument("backend", default_value="torch", choices=list(BACKENDS),
                              description="inference backend"),
        DeclareLaunchArgument("engine_dir", default_value="", description="exported engines (onnxruntime/tensorrt)"),
        DeclareLaunchArgument("task", default_value="dense", choices=list(TASKS), description="what to caption"),
        DeclareLaunchArgument("sync_slop", default_value="0.0",
                              description="seconds image and mask stamps may differ"),
        DeclareLaunchArgument("publish_annotated", default_value="false", choices=["true", "false"],
                              description="publish ~/annotated_image for RViz"),
        DeclareLaunchArgument("camera", default_value="none", choices=["none", *CAMERAS],
                              description="camera driver to start"),
        DeclareLaunchArgument("video_device", default_value="/dev/video0", description="camera device"),
        DeclareLaunchArgument("cameras", default_value="[]",
                              description="camera namespaces captioned in one batch, e.g. [front,left]; [] = one"),
        DeclareLaunchArgument("latency_budget", default_value="0.0",
                              description="seconds a frame may wait for the model before it is dropped; 0 = none"),
        DeclareLaunchArgument("lifecycle", default_value="false", choices=["true", "false"],
                              description="a managed (lifecycle) node that waits for configure and activate"),
        DeclareLaunchArgument("inference_workers", default_value="0",
                              description="batches captioned at once; 0 = one per camera up to the cores"),
        DeclareLaunchArgument("inference_process", default_value="true", choices=["true", "false"],
                              description="caption in a child process (true), or in the node's own process"),
    ]
    environment = SetEnvironmentVariable(PROFILE_VARIABLE, os.environ.get(PROFILE_VARIABLE) or
                                         str(LARGE_FRAMES_PROFILE))
    cameras = [
        Node(
            package=package,
            executable=executable,
            name="camera",
            output="screen",
            parameters=[{"video_device": LaunchConfiguration("video_device")}],
            remappings=[("image_raw", LaunchConfiguration("image"))],
            condition=_camera_is(package),
        )
        for package, executable in CAMERAS.items()
    ]
    captioner = Node(
        package="finecaption_ros",
        executable="finecaption_node",
        name="finecaption_node",
        output="screen",
        parameters=[{
            "model_path": ParameterValue(LaunchConfiguration("model"), value_type=str),
            "backend": ParameterValue(LaunchConfiguration("backend"), value_type=str),
            "engine_dir": ParameterValue(LaunchConfiguration("engine_dir"), value_type=str),
            "task": ParameterValue(LaunchConfiguration("task"), value_type=str),
            "sync_slop": ParameterValue(LaunchConfiguration("sync_slop"), value_type=float),
            "publish_annotated": ParameterValue(LaunchConfiguration("publish_annotated"), value_type=bool),
            "cameras": ParameterValue(LaunchConfiguration("cameras"), value_type=List[str]),
            "latency_budget": ParameterValue(LaunchConfiguration("latency_budget"), value_type=float),
            "lifecycle": ParameterValue(LaunchConfiguration("lifecycle"), value_type=bool),
            "inference_workers": ParameterValue(LaunchConfiguration("inference_workers"), value_type=int),
            "inference_process": ParameterValue(LaunchConfiguration("inference_process"), value_type=bool),
        }],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("mask", LaunchConfiguration("mask")),
            ("region_captions", LaunchConfiguration("captions")),
        ],
        on_exit=Shutdown(reason="finecaption_node exited"),
    )
    return LaunchDescription(arguments + [environment, OpaqueFunction(function=check_camera_installed)] + cameras +
                             [captioner])
