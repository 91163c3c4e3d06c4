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
from rclpy.executors import Executor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64, String
from wmpo_core.policy import Observation
from wmpo_core.robot_config import RobotConfig
from wmpo_ros.image_conversion import image_to_msg
from wmpo_ros.messages import (
    LATCHED_QOS,
    STATE_QOS,
    CommandCodec,
    camera_publisher_qos,
    joint_state_msg,
    nanoseconds_to_stamp,
)
from wmpo_ros.names import graph_names
from wmpo_ros.node_utils import node_executor, parameter_overrides
from wmpo_ros.pausable_executor import PausableExecutor


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


class Graph:
    """rclpy initialised, a PausableExecutor spinning in a thread, nodes added and destroyed.

    `add(node, threads=n)` spins that node on an executor of its own instead, the one its process
    gets from `run_node` (`node_executor(n)`), so a node is tested as it is deployed."""

    def __init__(self):
        rclpy.init()
        self.executor = PausableExecutor()
        self.nodes: list[Node] = []
        self.own_executors: dict[Node, Executor] = {}
        self.executor.resume()

    def add(self, node: Node, threads: int | None = None) -> Node:
        self.nodes.append(node)
        if threads is None:
            self.executor.add(node)
            return node
        executor = node_executor(threads)
        executor.add_node(node)
        self.own_executors[node] = executor
        threading.Thread(target=executor.spin, daemon=True).start()
        return node

    def make(self, cls: type, threads: int | None = None, **params: Any) -> Any:
        return self.add(cls(parameter_overrides=parameter_overrides(params)), threads)

    def remove(self, node: Node) -> None:
        """Destroy `node` while the others keep running (they pause for a moment)."""
        self.nodes.remove(node)
        if node in self.own_executors:
            self.own_executors.pop(node).shutdown()
            node.destroy_node()
            return
        self.executor.pause()
        self.executor.forget(node)
        node.destroy_node()
        self.executor.resume()

    def close(self) -> None:
        self.executor.pause()
        for executor in self.own_executors.values():
            executor.shutdown()
        self.own_executors.clear()
        for node in reversed(self.nodes):
            node.destroy_node()
        self.nodes.clear()
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
        self._image_pubs = {
            c.name: self.create_publisher(Image, c.topic, camera_publisher_qos(c)) for c in config.cameras
        }
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

    def publish_observation(
        self, cameras: bool = True, state: bool = True, success: bool | None = None
    ) -> None:
        stamp = nanoseconds_to_stamp(self.now_ns)
        if cameras:
            for cam in self.config.cameras:
                self._image_pubs[cam.name].publish(
                    image_to_msg(self.frame()[cam.name], stamp, cam.name, cam.encoding)
                )
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
        """Advance one control period: observation at the new time, then /clock; returns the command
        answering it.

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
        self.action = np.array(
            [
                0.5 * d.max_step_change if d.kind == "delta" else (d.low + d.high) / 2
                for d in config.action.dims
            ]
        )
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
        kind = (
            self.PATTERN[self.calls % len(self.PATTERN)] if self.calls > 0 else "ok"
        )  # verification probe gets a sane action
        self.calls += 1
        mid = np.array([(d.low + d.high) / 2 for d in self.config.action.dims])
        action = {
            "nan": np.full_like(mid, np.nan),
            "inf": np.full_like(mid, np.inf),
            "high": mid + 1e3,
            "low": mid - 1e3,
            "ok": mid,
        }[kind]
        if kind == "nan":
            action = mid.copy()
            action[0] = np.nan
        return action[None]


# ------------------------------------------------------------------ a tiny gymnasium env for the sim arm


class TinyReachEnv:
    """A 1-D reach task with image observations, a Box action [dx, gripper] and a success flag.

    Plugs into the sim arm node through a robot config alone (no code change), like any
    gymnasium env: observation {"pixels": {"cam": (16, 16, 3) uint8}, "agent_pos": [x, gripper]}.
    """

    def __new__(cls, **kwargs):
        import gymnasium as gym

        class _Env(gym.Env):
            observation_space = gym.spaces.Dict(
                {
                    "pixels": gym.spaces.Dict({"cam": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)}),
                    "agent_pos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
                }
            )
            action_space = gym.spaces.Box(
                np.array([-1.0, 0.0], np.float32), np.array([1.0, 1.0], np.float32), dtype=np.float32
            )

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.x, self.gripper = float(self.np_random.uniform(-0.4, 0.0)), 0.5
                return self._obs(), {}

            def step(self, action):
                self.x += 0.1 * float(action[0])
                self.gripper = float(action[1])
                success = self.x > 0.5
                return self._obs(), float(success), success, False, {"succeed": success}

            def _obs(self):
                image = np.full((16, 16, 3), int(128 + 100 * np.clip(self.x, -1, 1)), np.uint8)
                return {"pixels": {"cam": image}, "agent_pos": np.array([self.x, self.gripper])}

        return _Env()


def tiny_reach_config(directory) -> str:
    """Write the robot config of the tiny env; returns its path."""
    import gymnasium as gym
    import yaml

    if "TinyReach-v0" not in gym.registry:
        gym.register("TinyReach-v0", entry_point=TinyReachEnv, max_episode_steps=1000)
    data = {
        "name": "tiny_reach",
        "robot_type": "tiny",
        "control_rate_hz": 10,
        "episode_time_limit_s": 5,
        "joints": [
            {"name": "x", "unit": "m", "lower": -2, "upper": 2},
            {"name": "grip", "unit": "normalized", "lower": 0, "upper": 1},
        ],
        "action": {
            "space": "ee_delta_gripper",
            "dims": [
                {"name": "dx", "kind": "delta", "low": -1, "high": 1, "max_step_change": 1},
                {"name": "gripper", "kind": "absolute", "low": 0, "high": 1, "max_step_change": 1},
            ],
        },
        "cameras": [{"name": "cam", "topic": "/tiny/cam", "width": 16, "height": 16}],
        "topics": {
            "joint_states": "/tiny/joint_states",
            "command": "/tiny/command",
            "instruction": "/tiny/instruction",
        },
        "driver": {
            "kind": "gym_sim",
            "env_id": "ros_harness:TinyReach-v0",
            "image_keys": {"cam": "pixels/cam"},
            "state_key": "agent_pos",
        },
        "tasks": ["reach"],
    }
    path = f"{directory}/tiny_reach.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path
