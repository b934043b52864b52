"""The demo: the synthetic demo camera (frames + instance masks) -> finecaption_node -> caption_listener.

    ros2 launch finecaption_ros demo.launch.py
    ros2 launch finecaption_ros demo.launch.py task:=attribute rate:=1.0 save_dir:=/tmp/finecaption_demo

Without `ros2 launch`, scripts/run_demo.sh starts the same three nodes. The captioner comes from
finecaption.launch.py: when it exits (a bad model path, Ctrl-C), the whole launch shuts down.
"""
import os
from pathlib import Path

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from finecaption_ros.ros_support.dds import LARGE_FRAMES_PROFILE, PROFILE_VARIABLE
from finecaption_ros.ros_support.params import BACKENDS
from finecaption_ros.tasks import TASKS
from launch import LaunchDescription


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("model", default_value="", description="model folder; empty = embedded default model"),
        DeclareLaunchArgument("backend", default_value="torch", choices=list(BACKENDS),
                              description="inference backend"),
        DeclareLaunchArgument("engine_dir", default_value="", description="exported engines (onnxruntime/tensorrt)"),
        DeclareLaunchArgument("task", default_value="dense", choices=list(TASKS), description="what to caption"),
        DeclareLaunchArgument("rate", default_value="2.0", description="demo camera frames per second"),
        DeclareLaunchArgument("seed", default_value="0", description="demo scene seed"),
        DeclareLaunchArgument("save_dir", default_value="", description="folder for annotated frames (listener)"),
    ]
    environment = SetEnvironmentVariable(PROFILE_VARIABLE, os.environ.get(PROFILE_VARIABLE) or
                                         str(LARGE_FRAMES_PROFILE))
    source = Node(
        package="finecaption_ros",
        executable="finecaption_source",
        name="finecaption_source",
        output="screen",
        parameters=[{
            "source": "synthetic",
            "rate": ParameterValue(LaunchConfiguration("rate"), value_type=float),
            "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
        }],
        remappings=[("image", "/demo/image"), ("mask", "/demo/mask")],
    )
    captioner = IncludeLaunchDescription(  # finecaption.launch.py is the one place the captioner is launched
        PythonLaunchDescriptionSource(str(Path(__file__).with_name("finecaption.launch.py"))),
        launch_arguments={"image": "/demo/image", "mask": "/demo/mask", "publish_annotated": "true",
                          **{name: LaunchConfiguration(name) for name in ("model", "backend", "engine_dir", "task")}
                          }.items(),
    )
    listener = Node(
        package="finecaption_ros",
        executable="caption_listener",
        name="caption_listener",
        output="screen",
        parameters=[{"save_dir": ParameterValue(LaunchConfiguration("save_dir"), value_type=str)}],
        remappings=[("annotated_image", "/finecaption_node/annotated_image"),
                    ("ground_truth", "/finecaption_source/ground_truth")],
    )
    return LaunchDescription(arguments + [environment, source, captioner, listener])
