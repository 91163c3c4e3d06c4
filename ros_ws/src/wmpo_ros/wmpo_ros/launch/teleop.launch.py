"""Bring up the arm, a teleop device and the recorder, to record demonstrations.

    ros2 launch wmpo_ros teleop.launch.py robot:=so101_sim [device:=auto] [store:=data/demos]

device:=auto relays the simulator's scripted expert in simulation (recorded as source=scripted)
and reads the keyboard on a real arm (source=teleop). Record with the keyboard helper in another
terminal: `ros2 run wmpo_ros record_keys --ros-args -p robot:=<name>`. The in-process equivalent,
with an automatic episode loop, is `wmpo teleop --robot <name> --episodes N`.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    SetEnvironmentVariable,
)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.dds import PROFILE_ENV, large_frames_profile
from wmpo_ros.graph import recorder_source, uses_sim_time
from wmpo_ros.params import RECORDER, SIM_ARM, TELEOP

from launch import LaunchDescription

ARGUMENTS = [
    (SIM_ARM, "robot"),
    (SIM_ARM, "seed"),
    (SIM_ARM, "real_time_factor"),
    (TELEOP, "device"),
    (TELEOP, "device_port"),
    (TELEOP, "device_id"),
    (RECORDER, "store"),
    (RECORDER, "max_steps"),
]


def value(context, table, name):
    """A launch argument, parsed to the parameter's type."""
    return table[name].parse(LaunchConfiguration(name).perform(context))


def launch_setup(context):
    robot = LaunchConfiguration("robot").perform(context)
    config = load_robot_config(robot)
    device = value(context, TELEOP, "device")
    sim_time = uses_sim_time(config)
    return [
        Node(
            package="wmpo_ros",
            executable="teleop",
            name="teleop",
            output="screen",
            emulate_tty=True,
            parameters=[
                {
                    "robot": robot,
                    "device": device,
                    "device_port": value(context, TELEOP, "device_port"),
                    "device_id": value(context, TELEOP, "device_id"),
                    "use_sim_time": sim_time,
                }
            ],
        ),
        Node(
            package="wmpo_ros",
            executable="recorder",
            name="recorder",
            output="screen",
            parameters=[
                {
                    "robot": robot,
                    "store": value(context, RECORDER, "store"),
                    "max_steps": value(context, RECORDER, "max_steps"),
                    "source": recorder_source("teleop", config, device),
                    "use_sim_time": sim_time,
                }
            ],
        ),
    ]


def generate_launch_description():
    declared = [
        DeclareLaunchArgument(
            name, default_value=table[name].launch_default, description=table[name].description
        )
        for table, name in ARGUMENTS
    ]
    arm = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            os.path.join(get_package_share_directory("wmpo_ros"), "launch", "robot.launch.py")
        ),
        launch_arguments={
            name: LaunchConfiguration(name) for name in ("robot", "seed", "real_time_factor")
        }.items(),
    )
    # Camera frames over shared memory (wmpo_ros/fastdds_large_frames.xml) unless the user chose a profile.
    dds = SetEnvironmentVariable(PROFILE_ENV, os.environ.get(PROFILE_ENV, large_frames_profile()))
    return LaunchDescription([dds, *declared, arm, OpaqueFunction(function=launch_setup)])
