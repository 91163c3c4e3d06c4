"""Teleop node: a teleoperation device -> the command topic, through the same safety filter as a policy.

Polled devices (leader arm, gamepad, keyboard) are read once per control tick. The `scripted`
device (simulation only) relays each expert suggestion the sim arm publishes as it arrives, once
per observation (a lockstep sim waiting for a command re-publishes the same observation and
suggestion with the same stamp; relaying it again would be a second command for one step): the
suggestion answers the observation published with it, so the demonstration is exactly the
expert's. `<ns>/teleop/enable` starts and stops relaying (episode boundaries).
"""

from __future__ import annotations

import threading

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from wmpo_core.robot_config import load_robot_config
from wmpo_core.safety import SafetyFilter

from wmpo_ros.messages import STATE_QOS, CommandCodec, JointOrderError, joint_positions, stamp_to_seconds
from wmpo_ros.names import graph_names
from wmpo_ros.node_inputs import subscribe_joint_states
from wmpo_ros.node_utils import run_node, service_answer
from wmpo_ros.params import TELEOP
from wmpo_ros.teleop_devices import TeleopDevice, make_device, resolve_device


class TeleopNode(Node):
    def __init__(self, **kwargs):
        super().__init__(TELEOP.node_name, **kwargs)
        p = TELEOP.declare(self)
        self.config = load_robot_config(p["robot"])
        self.names = graph_names(self.config)
        self.device = resolve_device(p["device"], self.config)
        self._codec = CommandCodec(self.config)
        self._safety = SafetyFilter(self.config.action)
        self._lock = threading.Lock()
        self._state: np.ndarray | None = None
        self._enabled = False
        self.commands_sent = 0
        self._relayed_stamp = float("-inf")
        """Stamp of the newest observation whose expert suggestion was relayed."""
        self._device: TeleopDevice | None = None

        self._command_pub = self.create_publisher(self._codec.msg_type, self.config.topics.command, STATE_QOS)
        inputs = MutuallyExclusiveCallbackGroup()
        subscribe_joint_states(self, self.config, self._on_joint_state, STATE_QOS, inputs)
        if self.device == "scripted":
            self.create_subscription(
                JointState, self.names.expert_action, self._on_expert, STATE_QOS, callback_group=inputs
            )
        else:
            self._device = make_device(self.device, self.config, p["device_port"], p["device_id"])
            self._device.connect()
            self.create_timer(self.config.control_period_s, self._tick, callback_group=inputs)
        self.create_service(
            SetBool,
            self.names.teleop_enable,
            service_answer(lambda request: self.enable(request.data)),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.get_logger().info(f"teleop device: {self.device}")
        if p["autostart"]:
            self.enable(True)

    @property
    def source(self) -> str:
        """What the recorder stamps: a scripted expert is not a human teleoperator."""
        return "scripted" if self.device == "scripted" else "teleop"

    def enable(self, on: bool) -> str:
        with self._lock:
            self._enabled = on
            if on:
                reference = self._state if self.config.action.space == "joint_position" else None
                self._safety.reset(reference)
        return f"{'relaying' if on else 'stopped'} {self.device}"

    def _on_joint_state(self, state: np.ndarray, msg: JointState, info: MessageInfo) -> None:
        with self._lock:
            self._state = state

    def _on_expert(self, msg: JointState) -> None:
        try:
            action = joint_positions(msg, self.config.action.names)
        except JointOrderError as exc:
            self.get_logger().error(f"expert suggestion: {exc}", throttle_duration_sec=5.0)
            return
        stamp = stamp_to_seconds(msg.header.stamp)
        with self._lock:
            if stamp <= self._relayed_stamp:
                return  # this observation was answered already (re-published), or an older one
            if self._send_locked(action):
                self._relayed_stamp = stamp

    def _tick(self) -> None:
        with self._lock:
            state, last = self._state, self._safety.last_command
        action = self._device.action(state, last)
        if action is not None:
            with self._lock:
                self._send_locked(action)

    def _send_locked(self, proposal: np.ndarray) -> bool:
        """Filter and publish a proposal if relaying is enabled; returns whether a command went out."""
        if not self._enabled:
            return False
        command, events = self._safety.filter(proposal)
        if events.dropped_non_finite:
            self.get_logger().warning(
                "teleop device produced a non-finite action; holding", throttle_duration_sec=5.0
            )
        if command is None:
            return False
        self._command_pub.publish(self._codec.encode(command, hold=events.dropped_non_finite))
        self.commands_sent += 1
        return True

    def destroy_node(self) -> None:
        if self._device is not None:
            self._device.disconnect()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(TeleopNode, args)
