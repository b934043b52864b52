"""ROS test settings: DDS traffic stays on this machine, and every run gets its own ROS domain."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Set before rclpy is first imported (and inherited by the node processes the tests start).
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("FINECAPTION_TEST_DOMAIN_ID") or str(1 + os.getpid() % 230)
os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ.pop("ROS_LOCALHOST_ONLY", None)
# Camera-sized frames from this (publishing) process need the node's Fast DDS profile too (ros_support/dds.py).
from finecaption_ros.ros_support.dds import use_large_frame_transport  # noqa: E402

use_large_frame_transport()

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tests/ros/fakes.py, tests/ros/rosharness.py


@pytest.fixture(scope="session")
def ros():
    """rclpy for the test process (the client side); the nodes under test run in their own processes."""
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()
