"""ament_python package of the WMPO stack's ROS 2 nodes (build with colcon).

The launch files are package data (wmpo_ros/launch/, found in code through importlib.resources)
and are installed into share/wmpo_ros/launch for `ros2 launch`; the robot configs are package data
of wmpo_core. The repository's top-level launch/ and robot_configs/ are symlinks to them.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "wmpo_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    # The Fast DDS profile for large camera frames, and the launch files.
    package_data={PACKAGE: ["*.xml", "launch/*.launch.py"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob(f"{PACKAGE}/launch/*.launch.py"))),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="WMPO stack developers",
    maintainer_email="wmpo-stack@users.noreply.github.com",
    description=(
        "ROS 2 nodes of the WMPO stack: sim and LeRobot arm drivers, policy runner, recorder, teleop, "
        "learner sync."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_arm = wmpo_ros.sim_arm_node:main",
            "lerobot_bridge = wmpo_ros.lerobot_bridge_node:main",
            "policy_node = wmpo_ros.policy_node:main",
            "recorder = wmpo_ros.recorder_node:main",
            "teleop = wmpo_ros.teleop_node:main",
            "record_keys = wmpo_ros.record_keys:main",
            "sync_node = wmpo_ros.sync_node:main",
        ],
        "wmpo.commands": ["wmpo_ros = wmpo_ros.commands:COMMANDS"],
    },
)
