"""The region captioning node next to a camera driver and a segmenter.

    ros2 launch finecaption_ros finecaption.launch.py image:=/camera/image_raw mask:=/segmenter/instances
    ros2 launch finecaption_ros finecaption.launch.py camera:=v4l2_camera    # also start a USB camera driver

The segmenter (not started here) must publish an instance label image (mono8, mono16 or 32SC1) with the same header
stamp as the image it segmented (or within sync_slop seconds).
"""
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def _camera_is(name):
    return IfCondition(PythonExpression(["'", LaunchConfiguration("camera"), "' == '", name, "'"]))


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("mask", default_value="/segmentation/instances",
                              description="instance label image topic (mono8, mono16 or 32SC1; 0 = background)"),
        DeclareLaunchArgument("captions", default_value="/region_captions", description="output topic"),
        DeclareLaunchArgument("model", default_value="", description="model folder; empty = embedded default model"),
        DeclareLaunchArgument("backend", default_value="torch", description="torch, onnxruntime or tensorrt"),
        DeclareLaunchArgument("engine_dir", default_value="", description="exported engines (onnxruntime/tensorrt)"),
        DeclareLaunchArgument("task", default_value="dense", description="attribute, dense or global"),
        DeclareLaunchArgument("sync_slop", default_value="0.0",
                              description="seconds image and mask stamps may differ"),
        DeclareLaunchArgument("publish_annotated", default_value="false",
                              description="publish ~/annotated_image for RViz"),
        DeclareLaunchArgument("camera", default_value="none",
                              description="camera driver to start: none, v4l2_camera or usb_cam"),
        DeclareLaunchArgument("video_device", default_value="/dev/video0", description="camera device"),
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
        }],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("mask", LaunchConfiguration("mask")),
            ("region_captions", LaunchConfiguration("captions")),
        ],
    )
    v4l2_camera = Node(
        package="v4l2_camera",
        executable="v4l2_camera_node",
        name="camera",
        output="screen",
        parameters=[{"video_device": LaunchConfiguration("video_device")}],
        remappings=[("image_raw", LaunchConfiguration("image"))],
        condition=_camera_is("v4l2_camera"),
    )
    usb_cam = Node(
        package="usb_cam",
        executable="usb_cam_node_exe",
        name="camera",
        output="screen",
        parameters=[{"video_device": LaunchConfiguration("video_device")}],
        remappings=[("image_raw", LaunchConfiguration("image"))],
        condition=_camera_is("usb_cam"),
    )
    return LaunchDescription(arguments + [captioner, v4l2_camera, usb_cam])
