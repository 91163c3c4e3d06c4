"""LeRobot bridge: a real LeRobot arm (e.g. so101_follower) and its cameras behind the standard topics.

Drives the arm through LeRobot's Robot API (`make_robot_from_config`), configured from the robot
config's `driver` section (kind: lerobot). Every control tick it reads the observation and
publishes each camera and the joint state (config order and units: LeRobot's degrees and 0..100
gripper are converted explicitly by `wmpo_core.lerobot_units`); a command is sent to the arm as
soon as it arrives. All bus access happens on one thread (the Feetech bus is not thread-safe).

Not tested against hardware in this repository's CI (there is none); the unit conversion and
joint mapping it relies on are unit-tested.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from wmpo_core.lerobot_units import check_convertible, from_lerobot, to_lerobot
from wmpo_core.robot_config import LeRobotDriver, RobotConfig, load_robot_config

from wmpo_ros.image_conversion import image_to_msg
from wmpo_ros.messages import STATE_QOS, CommandCodec, camera_publisher_qos, joint_state_msg
from wmpo_ros.node_inputs import subscribe_commands
from wmpo_ros.node_utils import run_node
from wmpo_ros.params import LEROBOT_BRIDGE


def lerobot_robot_config(config: RobotConfig):
    """The LeRobot `RobotConfig` (e.g. SO101FollowerConfig) the robot config's driver section describes."""
    import importlib
    import pkgutil

    import lerobot.cameras
    import lerobot.robots
    from lerobot.cameras import CameraConfig
    from lerobot.robots.config import RobotConfig as LeRobotRobotConfig

    # LeRobot registers robot and camera types when their modules are imported; import them all,
    # as LeRobot's own scripts do (types whose optional dependencies are missing are skipped).
    for package in (lerobot.robots, lerobot.cameras):
        for module in pkgutil.iter_modules(package.__path__):
            if module.ispkg:
                with contextlib.suppress(ImportError):
                    importlib.import_module(f"{package.__name__}.{module.name}")
    driver = config.driver
    if not isinstance(driver, LeRobotDriver):
        raise ValueError(
            f"robot config '{config.name}' has no lerobot driver section (driver.kind={driver.kind})"
        )
    if driver.robot_type not in LeRobotRobotConfig.get_known_choices():
        raise ValueError(
            f"LeRobot has no robot type '{driver.robot_type}' "
            f"(known: {sorted(LeRobotRobotConfig.get_known_choices())})"
        )
    cameras = {}
    for name, spec in driver.cameras.items():
        spec = dict(spec)
        camera_type = spec.pop("type", "opencv")
        if camera_type not in CameraConfig.get_known_choices():
            raise ValueError(f"camera '{name}': LeRobot has no camera type '{camera_type}'")
        cameras[name] = CameraConfig.get_choice_class(camera_type)(**spec)
    config_class = LeRobotRobotConfig.get_choice_class(driver.robot_type)
    return config_class(port=driver.port, id=driver.robot_id, cameras=cameras, **driver.robot_kwargs)


class LeRobotBridgeNode(Node):
    def __init__(self, **kwargs):
        super().__init__(LEROBOT_BRIDGE.node_name, **kwargs)
        p = LEROBOT_BRIDGE.declare(self)
        self.config = load_robot_config(p["robot"])
        check_convertible(self.config)
        if self.config.action.space != "joint_position":
            raise ValueError(
                f"a LeRobot arm takes joint positions; robot config '{self.config.name}' has "
                f"{self.config.action.space}"
            )
        from lerobot.robots.utils import make_robot_from_config

        self._robot = make_robot_from_config(lerobot_robot_config(self.config))
        self._robot.connect(calibrate=bool(p["calibrate"]))
        self._codec = CommandCodec(self.config)
        self._image_pubs = {
            c.name: self.create_publisher(Image, c.topic, camera_publisher_qos(c))
            for c in self.config.cameras
        }
        self._state_pub = self.create_publisher(JointState, self.config.topics.joint_states, STATE_QOS)
        self._commands: queue.Queue[np.ndarray] = queue.Queue(maxsize=1)
        subscribe_commands(self, self.config, self._codec, self._queue_command, STATE_QOS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lerobot_bus", daemon=True)
        self._thread.start()

    def _queue_command(self, action: np.ndarray) -> None:
        with contextlib.suppress(queue.Empty):
            self._commands.get_nowait()  # only the newest command matters
        self._commands.put_nowait(action)

    def _run(self) -> None:
        period = self.config.control_period_s
        next_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                action = self._commands.get(timeout=max(0.0, next_tick - time.monotonic()))
                self._robot.send_action(to_lerobot(action, self.config))
                continue
            except queue.Empty:
                pass
            stamp = self.get_clock().now().to_msg()
            observation = self._robot.get_observation()
            self._state_pub.publish(
                joint_state_msg(self.config, from_lerobot(observation, self.config), stamp)
            )
            for cam in self.config.cameras:
                self._image_pubs[cam.name].publish(
                    image_to_msg(
                        observation[cam.name], stamp, f"{cam.name}_camera_optical_frame", cam.encoding
                    )
                )
            next_tick += period
            if next_tick < time.monotonic() - period:
                self.get_logger().warning(
                    "control tick overran by more than a period", throttle_duration_sec=5.0
                )
                next_tick = time.monotonic()

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._robot.disconnect()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(LeRobotBridgeNode, args)
