"""Names of the topics and services our nodes add to a robot config's own topics.

The config names the arm's topics (cameras, joint states, command, instruction); everything the
stack adds lives under the robot namespace, the parent of the instruction topic
(`/so101/instruction` -> `/so101`). One function here, so no node spells a name on its own.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from wmpo_core.robot_config import RobotConfig


@dataclass(frozen=True)
class GraphNames:
    namespace: str
    # sim arm
    sim_reset: str
    """std_srvs/Trigger: reset the simulated scene with the next seed; the message reports the seed."""
    success: str
    """std_msgs/Bool per control step: the simulator's success signal."""
    env_seed: str
    """std_msgs/Int64, latched: seed of the current simulated episode."""
    expert_action: str
    """sensor_msgs/JointState per control step (names = action dims, stamp = the observation it
    answers): the scripted expert's suggested action (sim only)."""
    # policy node
    policy_enable: str
    """std_srvs/SetBool: true starts an episode (swaps in a staged policy, resets it), false stops."""
    policy_version: str
    """std_msgs/String, latched: version of the active policy."""
    policy_staged: str
    """std_msgs/String, latched: version of a loaded and verified policy waiting for the next episode
    (rclpy drops the reason of a successful parameter set, so the version is reported here)."""
    policy_dry_run_action: str
    """std_msgs/Float64MultiArray: the command the policy would send, in dry-run mode."""
    policy_loads: str
    """std_msgs/String (JSON {spec, ok, version, reason}): the outcome of every load the `policy`
    parameter asked for (the parameter set itself only queues the load)."""
    policy_rollback: str
    """std_srvs/Trigger: stage the previously active policy again (kept loaded in memory)."""
    # teleop node
    teleop_enable: str
    """std_srvs/SetBool: start / stop relaying the teleop device to the command topic."""
    # recorder node
    recorder_start: str
    recorder_stop: str
    recorder_discard: str
    recorder_label_success: str
    """std_srvs/SetBool: label the current (or last committed) episode a success or a failure."""
    recorder_episodes: str
    """std_msgs/String (JSON): one message per committed episode (metadata and cadence report)."""
    # sync node
    sync_status: str
    """std_msgs/String (JSON), latched: the learner link (deployment followed, staged, rejected,
    upload backlog)."""


def robot_namespace(config: RobotConfig) -> str:
    parent = posixpath.dirname("/" + config.topics.instruction.lstrip("/"))
    return "/wmpo" if parent == "/" else parent


def graph_names(config: RobotConfig) -> GraphNames:
    ns = robot_namespace(config)
    return GraphNames(
        namespace=ns,
        sim_reset=f"{ns}/sim/reset",
        success=f"{ns}/sim/success",
        env_seed=f"{ns}/sim/env_seed",
        expert_action=f"{ns}/sim/expert_action",
        policy_enable=f"{ns}/policy/enable",
        policy_version=f"{ns}/policy/version",
        policy_staged=f"{ns}/policy/staged",
        policy_dry_run_action=f"{ns}/policy/dry_run_action",
        policy_loads=f"{ns}/policy/loads",
        policy_rollback=f"{ns}/policy/rollback",
        teleop_enable=f"{ns}/teleop/enable",
        recorder_start=f"{ns}/recorder/start",
        recorder_stop=f"{ns}/recorder/stop",
        recorder_discard=f"{ns}/recorder/discard",
        recorder_label_success=f"{ns}/recorder/label_success",
        recorder_episodes=f"{ns}/recorder/episodes",
        sync_status=f"{ns}/sync/status",
    )
