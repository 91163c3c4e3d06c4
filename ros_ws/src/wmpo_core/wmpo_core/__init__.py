"""Shared core of the WMPO stack: robot config schema, episode store and policy I/O.

Imported by the ROS 2 nodes (robot side) and by the learner; nothing here depends on rclpy.
"""

__version__ = "0.1.0"
