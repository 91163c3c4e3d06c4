"""Joint states, commands and QoS profiles, in robot-config terms.

Joint order always comes from the config's `joints:` list, never from a message's order; the
command message type (Float64MultiArray or JointTrajectory) comes from `topics.command_type`.

A hold (the safe command a commander sends when it has nothing valid to send: stale inputs, a
non-finite proposal) is marked in the message itself, so whoever records the command topic can
tell it from an action the commander chose: Float64MultiArray's dimension label is "hold"
instead of "action", JointTrajectory's header.frame_id is "hold". Arms ignore both.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from wmpo_core.robot_config import CameraSpec, RobotConfig, Ros2ControlDriver

STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
"""Joint states, commands, success: reliable, a few messages deep."""
LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
)
"""Slow-changing values a late subscriber must still get (instruction, policy version, seed)."""


def camera_publisher_qos(camera: CameraSpec) -> QoSProfile:
    reliability = ReliabilityPolicy.BEST_EFFORT if camera.qos == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(depth=camera.qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST)


def camera_subscription_qos(node: Node, camera: CameraSpec) -> QoSProfile:
    """Adapt to the camera's publishers: reliable only if every publisher seen is reliable.

    A reliable subscription never matches a best-effort publisher and silently receives nothing;
    a best-effort subscription matches both, so it is the choice whenever in doubt.
    """
    publishers = node.get_publishers_info_by_topic(camera.topic)
    reliable = bool(publishers) and all(
        p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers
    )
    if not publishers:
        reliable = camera.qos == "reliable"
    reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=camera.qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST)


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def nanoseconds_to_stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class JointOrderError(ValueError):
    """A JointState that lacks joints the config needs."""


def joint_state_msg(config: RobotConfig, positions: np.ndarray, stamp: Time) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(config.joint_names)
    msg.position = [float(v) for v in positions]
    return msg


def joint_positions(msg: JointState, joint_names: list[str]) -> np.ndarray:
    """Positions of `joint_names`, in that order, from a JointState in any order."""
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise JointOrderError(f"joint state lacks joints {missing} (has {list(msg.name)})")
    if len(msg.position) != len(msg.name):
        raise JointOrderError(f"joint state has {len(msg.name)} names but {len(msg.position)} positions")
    return np.array([msg.position[index[n]] for n in joint_names], dtype=np.float64)


HOLD_MARK = "hold"


class CommandCodec:
    """Encodes actions as the configured command message and decodes them back (for the recorder)."""

    def __init__(self, config: RobotConfig):
        self.config = config
        self.msg_type = (
            JointTrajectory if config.topics.command_type == "JointTrajectory" else Float64MultiArray
        )
        driver = config.driver
        self._point_time_s = (
            driver.trajectory_point_time_s
            if isinstance(driver, Ros2ControlDriver)
            else config.control_period_s
        )

    def encode(self, action: np.ndarray, hold: bool = False) -> Float64MultiArray | JointTrajectory:
        values = [float(v) for v in np.asarray(action, dtype=np.float64).reshape(-1)]
        if len(values) != self.config.action.dim:
            raise ValueError(
                f"action has {len(values)} values, the action space has {self.config.action.dim}"
            )
        if self.msg_type is Float64MultiArray:
            msg = Float64MultiArray()
            msg.layout.dim = [
                MultiArrayDimension(
                    label=HOLD_MARK if hold else "action", size=len(values), stride=len(values)
                )
            ]
            msg.data = values
            return msg
        # Header stamp left zero: the controller starts the trajectory on receipt.
        msg = JointTrajectory()
        if hold:
            msg.header.frame_id = HOLD_MARK
        msg.joint_names = list(self.config.action.names)
        seconds = int(self._point_time_s)
        msg.points = [
            JointTrajectoryPoint(
                positions=values,
                time_from_start=Duration(sec=seconds, nanosec=round((self._point_time_s - seconds) * 1e9)),
            )
        ]
        return msg

    @staticmethod
    def is_hold(msg: Float64MultiArray | JointTrajectory) -> bool:
        """Whether the commander marked this command as a hold (see the module docstring)."""
        if isinstance(msg, JointTrajectory):
            return msg.header.frame_id == HOLD_MARK
        return bool(msg.layout.dim) and msg.layout.dim[0].label == HOLD_MARK

    def decode(self, msg: Float64MultiArray | JointTrajectory) -> np.ndarray:
        dim = self.config.action.dim
        if isinstance(msg, JointTrajectory):
            if not msg.points:
                raise ValueError("JointTrajectory command without points")
            index = {n: i for i, n in enumerate(msg.joint_names)}
            missing = [n for n in self.config.action.names if n not in index]
            if missing:
                raise ValueError(f"JointTrajectory command lacks joints {missing}")
            positions = msg.points[0].positions
            return np.array([positions[index[n]] for n in self.config.action.names], dtype=np.float64)
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (dim,):
            raise ValueError(f"command has {values.size} values, the action space has {dim}")
        return values
