"""The Fast DDS profile that lets camera-sized frames cross processes on one machine (no rclpy: launch files use
it too). It must be in the environment before a process creates its first ROS node, and it matters most in the
processes that *publish* frames (camera drivers, the demo source, test clients): see fastdds_large_frames.xml."""
from __future__ import annotations

import os
from pathlib import Path

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
LARGE_FRAMES_PROFILE = Path(__file__).with_name("fastdds_large_frames.xml")


def use_large_frame_transport(env=os.environ) -> str:
    """Point Fast DDS at our profile unless the user chose one; returns the profile in effect."""
    return env.setdefault(PROFILE_VARIABLE, str(LARGE_FRAMES_PROFILE))
