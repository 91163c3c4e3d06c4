"""Bring up an arm behind the standard topics (camera images, joint states, command).

    ros2 launch wmpo_ros robot.launch.py robot:=so101_sim [seed:=0] [real_time_factor:=1.0]

Simulated arms (driver kind gym_sim) run the sim arm node, LeRobot arms the LeRobot bridge;
ros2_control arms need nothing from us (their controller manager already speaks the topics).
The in-process equivalent is `wmpo robot --robot <name>`; both read the same robot config and
take parameter defaults from wmpo_ros.params.
"""

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from wmpo_core.robot_config import GymSimDriver, LeRobotDriver, load_robot_config
from wmpo_ros.dds import PROFILE_ENV, large_frames_profile
from wmpo_ros.params import LEROBOT_BRIDGE, SIM_ARM

from launch import LaunchDescription

# Launch arguments: (node parameters table, parameter name); default and help come from the table.
ARGUMENTS = [
    (SIM_ARM, "robot"),
    (SIM_ARM, "seed"),
    (SIM_ARM, "real_time_factor"),
    (SIM_ARM, "lockstep"),
    (SIM_ARM, "stall_warning_s"),
    (LEROBOT_BRIDGE, "calibrate"),
]


def value(context, table, name):
    """A launch argument, parsed to the parameter's type."""
    return table[name].parse(LaunchConfiguration(name).perform(context))


def launch_setup(context):
    robot = LaunchConfiguration("robot").perform(context)
    config = load_robot_config(robot)
    if isinstance(config.driver, GymSimDriver):
        return [
            Node(
                package="wmpo_ros",
                executable="sim_arm",
                name="sim_arm",
                output="screen",
                parameters=[
                    {
                        "robot": robot,
                        "seed": value(context, SIM_ARM, "seed"),
                        "real_time_factor": value(context, SIM_ARM, "real_time_factor"),
                        "lockstep": value(context, SIM_ARM, "lockstep"),
                        "stall_warning_s": value(context, SIM_ARM, "stall_warning_s"),
                    }
                ],
            )
        ]
    if isinstance(config.driver, LeRobotDriver):
        return [
            Node(
                package="wmpo_ros",
                executable="lerobot_bridge",
                name="lerobot_bridge",
                output="screen",
                emulate_tty=True,
                parameters=[{"robot": robot, "calibrate": value(context, LEROBOT_BRIDGE, "calibrate")}],
            )
        ]
    return []


def generate_launch_description():
    declared = [
        DeclareLaunchArgument(
            name, default_value=table[name].launch_default, description=table[name].description
        )
        for table, name in ARGUMENTS
    ]
    # Camera frames over shared memory (wmpo_ros/fastdds_large_frames.xml) unless the user chose a profile.
    dds = SetEnvironmentVariable(PROFILE_ENV, os.environ.get(PROFILE_ENV, large_frames_profile()))
    return LaunchDescription([dds, *declared, OpaqueFunction(function=launch_setup)])
