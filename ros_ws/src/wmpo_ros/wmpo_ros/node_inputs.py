"""Decoding subscriptions the nodes share: camera frames, joint states and arm commands.

Each turns a message into the value a node works with (an RGB frame of the configured shape,
joint positions in config order, a finite action), or logs why not (throttled) and drops the
message, so every node refuses bad input the same way and its own callbacks see good values only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from wmpo_core.robot_config import CameraSpec, RobotConfig

from wmpo_ros.image_conversion import ImageEncodingError, msg_to_image
from wmpo_ros.messages import CommandCodec, JointOrderError, joint_positions

LOG_EVERY_S = 5.0
"""A bad input stream is logged at most once per this many seconds."""

FrameCallback = Callable[[str, np.ndarray, Image, MessageInfo], None]
"""(camera name, RGB frame, the message, its MessageInfo)."""
StateCallback = Callable[[np.ndarray, JointState, MessageInfo], None]
"""(joint positions in config order, the message, its MessageInfo)."""


def subscribe_cameras(
    node: Node,
    config: RobotConfig,
    on_frame: FrameCallback,
    qos: Callable[[CameraSpec], QoSProfile],
    group: Callable[[], CallbackGroup],
) -> None:
    """Subscribe to every camera of `config`; `qos(camera)` and `group()` are asked once per camera."""
    for cam in config.cameras:
        node.create_subscription(
            Image, cam.topic, _frame_handler(node, cam, on_frame), qos(cam), callback_group=group()
        )


def _frame_handler(node: Node, camera: CameraSpec, on_frame: FrameCallback) -> Callable:
    def handle(msg: Image, info: MessageInfo) -> None:
        try:
            frame = msg_to_image(msg)
        except ImageEncodingError as exc:
            node.get_logger().error(f"camera '{camera.name}': {exc}", throttle_duration_sec=LOG_EVERY_S)
            return
        if frame.shape != camera.shape:
            node.get_logger().error(
                f"camera '{camera.name}' sends {frame.shape}, config says {camera.shape}",
                throttle_duration_sec=LOG_EVERY_S,
            )
            return
        on_frame(camera.name, frame, msg, info)

    return handle


def subscribe_joint_states(
    node: Node, config: RobotConfig, on_state: StateCallback, qos: QoSProfile, group: CallbackGroup | None
) -> None:
    """Subscribe to the arm's joint states, reordered to the config's joints (never the message's order)."""

    def handle(msg: JointState, info: MessageInfo) -> None:
        try:
            state = joint_positions(msg, config.joint_names)
        except JointOrderError as exc:
            node.get_logger().error(str(exc), throttle_duration_sec=LOG_EVERY_S)
            return
        on_state(state, msg, info)

    node.create_subscription(JointState, config.topics.joint_states, handle, qos, callback_group=group)


def subscribe_commands(
    node: Node,
    config: RobotConfig,
    codec: CommandCodec,
    on_action: Callable[[np.ndarray], None],
    qos: QoSProfile,
) -> None:
    """Subscribe to the arm's command topic, as an arm driver: malformed and non-finite commands are
    dropped (an arm never executes them), the rest go to `on_action` in config order and units."""

    def handle(msg) -> None:
        try:
            action = codec.decode(msg)
        except ValueError as exc:
            node.get_logger().error(f"ignoring command: {exc}", throttle_duration_sec=LOG_EVERY_S)
            return
        if not np.all(np.isfinite(action)):
            node.get_logger().error("ignoring a non-finite command", throttle_duration_sec=LOG_EVERY_S)
            return
        on_action(action)

    node.create_subscription(codec.msg_type, config.topics.command, handle, qos)
