"""Which nodes each bring-up runs, with which parameters, for a given robot config.

`wmpo robot|teleop|deploy` instantiates exactly this graph in one process; the launch files
(package data, `launch_file()`) spell out the same nodes for `ros2 launch`, and
tests/test_launch_files.py runs them against this graph for every robot config: same nodes, same
parameter values. Parameter names and defaults come from `wmpo_ros.params`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from wmpo_core.robot_config import GymSimDriver, LeRobotDriver, RobotConfig

from wmpo_ros.params import LEROBOT_BRIDGE, POLICY, RECORDER, SIM_ARM, SYNC, TELEOP, NodeParams
from wmpo_ros.teleop_devices import resolve_device

Bringup = Literal["robot", "teleop", "deploy"]
BRINGUPS: tuple[Bringup, ...] = ("robot", "teleop", "deploy")


def launch_file(bringup: Bringup) -> Path:
    """The `ros2 launch` file of `bringup`, shipped inside this package (installed into
    share/wmpo_ros/launch too, where `ros2 launch wmpo_ros <bringup>.launch.py` finds it)."""
    if bringup not in BRINGUPS:
        raise ValueError(f"unknown bring-up '{bringup}' (choose from {BRINGUPS})")
    return Path(str(resources.files("wmpo_ros").joinpath("launch", f"{bringup}.launch.py")))


@dataclass(frozen=True)
class NodeSpec:
    executable: str
    parameters: dict[str, Any]


def _spec(node: NodeParams, values: Mapping[str, Any], **fixed: Any) -> NodeSpec:
    """Node parameters: defaults, overridden by any `values` entry the node declares, then `fixed`."""
    params = {p.name: p.parse(values[p.name]) if p.name in values else p.default for p in node.params}
    params.update(fixed)
    return NodeSpec(node.executable, params)


def driver_node(config: RobotConfig, values: Mapping[str, Any]) -> NodeSpec | None:
    """The node that makes the arm speak our topics; None for ros2_control arms (their own driver)."""
    if isinstance(config.driver, GymSimDriver):
        return _spec(SIM_ARM, values)
    if isinstance(config.driver, LeRobotDriver):
        return _spec(LEROBOT_BRIDGE, values)
    return None


def uses_sim_time(config: RobotConfig) -> bool:
    """In simulation every node but the sim arm (the clock source) runs on /clock."""
    return isinstance(config.driver, GymSimDriver)


def recorder_source(bringup: Bringup, config: RobotConfig, device: str) -> str:
    if bringup == "deploy":
        return "policy"
    return "scripted" if resolve_device(device, config) == "scripted" else "teleop"


def bringup_graph(bringup: Bringup, config: RobotConfig, values: Mapping[str, Any]) -> list[NodeSpec]:
    """The nodes of `bringup` for `config`. `values` holds parameter values by name (strings are parsed).

    deploy also runs the sync node when `values` names a `learner_url`: it uploads the recorder's
    episodes and stages the learner's deployed versions in the policy node.
    """
    if bringup not in BRINGUPS:
        raise ValueError(f"unknown bring-up '{bringup}' (choose from {BRINGUPS})")
    values = {**values, "robot": values.get("robot", config.name)}
    nodes = [n for n in [driver_node(config, values)] if n is not None]
    if bringup == "robot":
        return nodes
    sim_time = {"use_sim_time": True} if uses_sim_time(config) else {}
    if bringup == "teleop":
        device = str(values.get("device", TELEOP["device"].default))
        nodes.append(_spec(TELEOP, values, **sim_time))
        nodes.append(_spec(RECORDER, values, source=recorder_source(bringup, config, device), **sim_time))
    else:
        nodes.append(_spec(POLICY, values, **sim_time))
        nodes.append(_spec(RECORDER, values, source="policy", **sim_time))
        if values.get("learner_url"):
            nodes.append(_spec(SYNC, values, **sim_time))
    return nodes
