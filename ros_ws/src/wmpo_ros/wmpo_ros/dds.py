"""DDS settings our processes apply before creating nodes: large camera frames over shared memory.

See fastdds_large_frames.xml for why. A profile the user set (FASTDDS_DEFAULT_PROFILES_FILE) or
another RMW implementation is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"


def large_frames_profile() -> str:
    return str(Path(__file__).with_name("fastdds_large_frames.xml"))


def use_large_frames_profile() -> None:
    """Call before rclpy.init(): Fast DDS reads the profile when the participant is created."""
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp":
        os.environ.setdefault(PROFILE_ENV, large_frames_profile())
