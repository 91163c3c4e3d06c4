"""Test harness for the ROS 2 node tests: a real rclpy executor and a scripted stand-in arm.

`FakeArm` is a real node on the loopback DDS network that plays the arm's side of the topics and
owns the ROS clock: each `tick()` publishes frames and joint state stamped with the new time,
then /clock, so nodes under test (use_sim_time) run one control tick per call, deterministically,
however loaded the machine is. Nothing here replaces a ROS API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64, String

from wmpo_core.policy import Observation
from wmpo_core.robot_config import RobotConfig
from wmpo_ros.image_conversion import image_to_msg
from wmpo_ros.messages import LATCHED_QOS, STATE_QOS, CommandCodec, camera_publisher_qos, joint_state_msg, nanoseconds_to_stamp
from wmpo_ros.names import graph_names
from wmpo_ros.node_utils import parameter_overrides


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


class Graph:
    """rclpy initialised, a MultiThreadedExecutor spinning in a thread, nodes added and destroyed."""

    def __init__(self):
        rclpy.init()
        self.executor = MultiThreadedExecutor(num_threads=6)
        self.nodes: list[Node] = []
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def make(self, cls: type, **params: Any) -> Any:
        return self.add(cls(parameter_overrides=parameter_overrides(params)))

    def remove(self, node: Node) -> None:
        self.nodes.remove(node)
        self.executor.remove_node(node)
        node.destroy_node()

    def close(self) -> None:
        for node in reversed(list(self.nodes)):
            self.remove(node)
        self.executor.shutdown(timeout_sec=5.0)
        rclpy.shutdown()


class FakeArm(Node):
    """Publishes an arm's frames, joint state, success and /clock; records commands it receives."""

    def __init__(self, config: RobotConfig, name: str = "fake_arm"):
        super().__init__(name)
        self.config = config
        self.names = graph_names(config)
        self.period_ns = round(config.control_period_s * 1e9)
        self.now_ns = (time.time_ns() // self.period_ns) * self.period_ns
        self.codec = CommandCodec(config)
        self._image_pubs = {c.name: self.create_publisher(Image, c.topic, camera_publisher_qos(c)) for c in config.cameras}
        self._state_pub = self.create_publisher(JointState, config.topics.joint_states, STATE_QOS)
        self._clock_pub = self.create_publisher(Clock, "/clock", 10)
        self._success_pub = self.create_publisher(Bool, self.names.success, STATE_QOS)
        self._seed_pub = self.create_publisher(Int64, self.names.env_seed, LATCHED_QOS)
        self._instruction_pub = self.create_publisher(String, config.topics.instruction, LATCHED_QOS)
        self._lock = threading.Lock()
        self.commands: list[tuple[int, np.ndarray, Any]] = []
        """(this node's sim time when received, decoded action, raw message)."""
        self.create_subscription(self.codec.msg_type, config.topics.command, self._on_command, STATE_QOS)
        self.state = np.array([(j.lower + j.upper) / 2 for j in config.joints])
        self.frame_value = 0

    def _on_command(self, msg) -> None:
        with self._lock:
            self.commands.append((self.now_ns, self.codec.decode(msg), msg))

    @property
    def num_commands(self) -> int:
        with self._lock:
            return len(self.commands)

    def frame(self) -> dict[str, np.ndarray]:
        """Frames whose pixel value encodes the tick, so a test can tell which frame was recorded."""
        return {c.name: np.full(c.shape, self.frame_value % 256, dtype=np.uint8) for c in self.config.cameras}

    def publish_observation(self, cameras: bool = True, state: bool = True, success: bool | None = None) -> None:
        stamp = nanoseconds_to_stamp(self.now_ns)
        if cameras:
            for cam in self.config.cameras:
                self._image_pubs[cam.name].publish(image_to_msg(self.frame()[cam.name], stamp, cam.name, cam.encoding))
        if state:
            self._state_pub.publish(joint_state_msg(self.config, self.state, stamp))
        if success is not None:
            self._success_pub.publish(Bool(data=success))

    def publish_clock(self) -> None:
        self._clock_pub.publish(Clock(clock=nanoseconds_to_stamp(self.now_ns)))

    def tick(
        self,
        cameras: bool = True,
        state: bool = True,
        success: bool | None = None,
        wait_command: bool = True,
        delivered: Callable[[float], bool] | None = None,
        timeout: float = 20.0,
    ) -> np.ndarray | None:
        """Advance one control period: observation at the new time, then /clock; returns the command answering it.

        `delivered(t)`, if given, is polled until true before /clock is published: a camera frame
        takes time to render and arrive, so a real clock never runs ahead of delivery the way an
        instant test harness can.
        """
        before = self.num_commands
        self.now_ns += self.period_ns
        self.frame_value += 1
        self.publish_observation(cameras, state, success)
        if delivered is not None:
            wait_until(lambda: delivered(self.now_ns * 1e-9), timeout, "the observation to arrive")
        self.publish_clock()
        if not wait_command:
            return None
        wait_until(lambda: self.num_commands > before, timeout, "a command")
        with self._lock:
            return self.commands[-1][1]

    def publish_seed(self, seed: int) -> None:
        self._seed_pub.publish(Int64(data=seed))

    def publish_instruction(self, text: str) -> None:
        self._instruction_pub.publish(String(data=text))


# ------------------------------------------------------------------ policies for `scripted:` specs

class ConstantPolicy:
    """Always proposes the same action (chunks of 3): delta dims 0.5 x max step, absolute dims mid-range."""

    chunk_size = 3
    version = "constant-v1"

    def __init__(self, config: RobotConfig):
        self.action = np.array([0.5 * d.max_step_change if d.kind == "delta" else (d.low + d.high) / 2 for d in config.action.dims])
        self.calls = 0

    def reset(self) -> None:
        pass

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        self.calls += 1
        return np.repeat(self.action[None], self.chunk_size, axis=0)


class WildPolicy:
    """Proposes NaN, inf, far out-of-limit and huge-jump actions, in turn, one per chunk."""

    chunk_size = 1
    version = "wild-v1"
    PATTERN = ("nan", "inf", "high", "low", "ok")

    def __init__(self, config: RobotConfig):
        self.config = config
        self.calls = 0

    def reset(self) -> None:
        pass

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        kind = self.PATTERN[self.calls % len(self.PATTERN)] if self.calls > 0 else "ok"  # verification probe gets a sane action
        self.calls += 1
        mid = np.array([(d.low + d.high) / 2 for d in self.config.action.dims])
        action = {"nan": np.full_like(mid, np.nan), "inf": np.full_like(mid, np.inf), "high": mid + 1e3, "low": mid - 1e3, "ok": mid}[kind]
        if kind == "nan":
            action = mid.copy()
            action[0] = np.nan
        return action[None]
