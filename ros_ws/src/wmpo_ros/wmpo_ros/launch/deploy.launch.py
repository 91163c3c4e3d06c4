"""Bring up the arm, the policy node and the recorder, to run a policy and record what it does.

    ros2 launch wmpo_ros deploy.launch.py robot:=so101_sim policy:=<checkpoint dir or spec> [dry_run:=true]
    ros2 launch wmpo_ros deploy.launch.py robot:=so101_sim learner_url:=https://host:8765 token_file:=<file>

The policy runs as soon as it is loaded (autostart); `ros2 service call <ns>/policy/enable
std_srvs/srv/SetBool "{data: true}"` starts a new episode, and `ros2 param set /policy_node policy
<dir>` stages a new checkpoint for the next one (`<ns>/policy/rollback` goes back to the previous).
With `learner_url` the sync node runs too, in its own process: it uploads every recorded episode
and stages the learner's deployed version in the policy node. The in-process equivalent, with an
automatic episode loop, is `wmpo deploy --robot <name> --policy <spec> [--learner URL] --episodes N`.
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
from wmpo_ros.graph import uses_sim_time
from wmpo_ros.params import POLICY, RECORDER, SIM_ARM, SYNC

from launch import LaunchDescription

ARGUMENTS = [
    (SIM_ARM, "robot"),
    (SIM_ARM, "seed"),
    (SIM_ARM, "real_time_factor"),
    (POLICY, "policy"),
    (POLICY, "dry_run"),
    (POLICY, "refill_threshold"),
    (POLICY, "watchdog_periods"),
    (POLICY, "swap_at"),
    (RECORDER, "store"),
    (RECORDER, "max_steps"),
    (SYNC, "learner_url"),
    (SYNC, "token_file"),
    (SYNC, "ca_file"),
]


def value(context, table, name):
    """A launch argument, parsed to the parameter's type."""
    return table[name].parse(LaunchConfiguration(name).perform(context))


def launch_setup(context):
    robot = LaunchConfiguration("robot").perform(context)
    config = load_robot_config(robot)
    sim_time = uses_sim_time(config)
    nodes = [
        Node(
            package="wmpo_ros",
            executable="policy_node",
            name="policy_node",
            output="screen",
            parameters=[
                {
                    "robot": robot,
                    "policy": value(context, POLICY, "policy"),
                    "dry_run": value(context, POLICY, "dry_run"),
                    "refill_threshold": value(context, POLICY, "refill_threshold"),
                    "watchdog_periods": value(context, POLICY, "watchdog_periods"),
                    "swap_at": value(context, POLICY, "swap_at"),
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
                    "source": "policy",
                    "use_sim_time": sim_time,
                }
            ],
        ),
    ]
    if value(context, SYNC, "learner_url"):
        nodes.append(
            Node(
                package="wmpo_ros",
                executable="sync_node",
                name="sync_node",
                output="screen",
                parameters=[
                    {
                        "robot": robot,
                        "learner_url": value(context, SYNC, "learner_url"),
                        "token_file": value(context, SYNC, "token_file"),
                        "ca_file": value(context, SYNC, "ca_file"),
                        "store": value(context, RECORDER, "store"),
                        "use_sim_time": sim_time,
                    }
                ],
            )
        )
    return nodes


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
