"""Simulated arm: a gymnasium env behind the same topics as a real arm.

Publishes each camera (sensor_msgs/Image, header stamp = capture time), the joint state in config
order, the env's success signal and, when the config names a scripted expert, the expert's
suggested action for the current state (the scripted teleop device relays it like a human would).
Executes commands from the configured command topic; `<ns>/sim/reset` resets the scene with the
next seed of a deterministic sequence (`seed`, `seed + 1`, ...; a scene no command has moved yet
keeps its seed), reported in the response and on `<ns>/sim/env_seed`.

Time. Rendering costs ~0.1-0.3 s per step on a CPU, so the sim cannot promise real time. It is
the ROS clock instead: it publishes /clock (one control period per step, starting at the wall time
when it starts, so stamps read like unix times) and every other node runs with use_sim_time, so
their control timers tick once per simulated step however slow the machine.

Lockstep (default): every simulated step is caused by exactly one command, in the order the
commands arrive, and simulated time advances only with steps. The wall clock never changes what
is simulated: with no command the sim waits as long as it takes (a warning after
`stall_warning_s`), and while it waits it re-publishes the current observation unchanged (same
stamps, no /clock advance) once per control period, so a frame lost in transport arrives again
and a node that starts late gets the scene; consumers treat a repeated stamp as the same
observation. So a run gives the same result on a loaded 2-core laptop as on a workstation;
`real_time_factor` caps the speed. Inference latency is therefore not simulated; set
lockstep:=false to step on the wall clock instead (the newest command each period, the hold
action when none came; before the first command of an episode the scene is frozen, re-published
with new stamps: there is no safe "hold" for absolute dims before any command).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64
from std_srvs.srv import Trigger
from wmpo_core.robot_config import GymSimDriver, load_robot_config
from wmpo_core.safety import SafetyFilter

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
from wmpo_ros.node_inputs import subscribe_commands
from wmpo_ros.node_utils import run_node
from wmpo_ros.params import SIM_ARM
from wmpo_ros.sim_seeds import SeedSequence

CLOCK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class SimArmNode(Node):
    def __init__(self, **kwargs):
        super().__init__(SIM_ARM.node_name, **kwargs)
        if self.get_parameter("use_sim_time").value:
            raise ValueError("the sim arm publishes /clock; run it with use_sim_time:=false")
        p = SIM_ARM.declare(self)
        self.config = load_robot_config(p["robot"])
        if not isinstance(self.config.driver, GymSimDriver):
            raise ValueError(
                f"robot config '{self.config.name}' is not simulated (driver.kind={self.config.driver.kind})"
            )
        if p["real_time_factor"] < 0 or (p["real_time_factor"] == 0 and not p["lockstep"]):
            raise ValueError("real_time_factor must be > 0, or 0 (unpaced) with lockstep:=true")
        self._rtf = float(p["real_time_factor"])
        self._lockstep = bool(p["lockstep"])
        self._stall_warning_s = float(p["stall_warning_s"])
        self._seeds = SeedSequence(int(p["seed"]))
        self._period_ns = round(self.config.control_period_s * 1e9)
        self._sim_ns = (time.time_ns() // self._period_ns) * self._period_ns
        self.names = graph_names(self.config)
        self._codec = CommandCodec(self.config)
        self._has_expert = self.config.driver.scripted_expert is not None

        self._image_pubs = {
            c.name: self.create_publisher(Image, c.topic, camera_publisher_qos(c))
            for c in self.config.cameras
        }
        self._state_pub = self.create_publisher(JointState, self.config.topics.joint_states, STATE_QOS)
        self._success_pub = self.create_publisher(Bool, self.names.success, STATE_QOS)
        self._seed_pub = self.create_publisher(Int64, self.names.env_seed, LATCHED_QOS)
        self._expert_pub = (
            self.create_publisher(JointState, self.names.expert_action, STATE_QOS)
            if self._has_expert
            else None
        )
        self._clock_pub = self.create_publisher(Clock, "/clock", CLOCK_QOS)

        self._cond = threading.Condition()
        self._commands: deque[np.ndarray] = deque()
        """Received and not yet executed, oldest first (lockstep executes each; wall clock the newest)."""
        self._reset_request: threading.Event | None = None
        self._reset_reply: tuple[bool, str] = (False, "")
        self._stop = threading.Event()
        self.steps = 0
        self.republished = 0
        """Lockstep: times the current observation was re-published while waiting for a command."""
        subscribe_commands(self, self.config, self._codec, self._queue_command, STATE_QOS)
        self.create_service(
            Trigger, self.names.sim_reset, self._on_reset, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sim_arm", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"simulator failed to start: {self._failure}") from self._failure

    # ------------------------------------------------------------------ ROS callbacks

    def _queue_command(self, action: np.ndarray) -> None:
        with self._cond:
            self._commands.append(action)
            self._cond.notify_all()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        done = threading.Event()
        with self._cond:
            self._reset_request = done
            self._cond.notify_all()
        if not done.wait(timeout=120.0) or self._stop.is_set():
            response.success, response.message = False, "simulator did not reset within 120 s"
        else:
            response.success, response.message = self._reset_reply
        return response

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "seed":
                with self._cond:
                    self._seeds.restart(int(param.value))
            elif param.name in SIM_ARM.names:
                return SetParametersResult(
                    successful=False, reason=f"'{param.name}' is read at start-up only"
                )
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ simulation thread

    def _run(self) -> None:
        from wmpo_core.sim_env import (
            SimArm,  # heavy (MuJoCo, gymnasium); the GL context belongs to this thread
        )

        try:
            self._arm = SimArm(self.config)
            self._hold = SafetyFilter(
                self.config.action
            )  # used for its hold rule only: the arm executes what it is told
            self._reset_scene()
        except BaseException as exc:  # reported by the constructor
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        finally:
            self._arm.close()

    def _loop(self) -> None:
        last_step_wall = time.monotonic()
        while not self._stop.is_set():
            event, command = self._wait(last_step_wall)
            if event == "stop":
                break
            if event == "reset":
                with self._cond:
                    reset, self._reset_request = self._reset_request, None
                try:
                    self._reset_reply = (True, self._reset_scene())
                except Exception as exc:  # keep serving; the service reports the failure
                    self._reset_reply = (False, f"reset failed: {exc}")
                    self.get_logger().error(self._reset_reply[1])
                reset.set()
                last_step_wall = time.monotonic()
                continue
            if event == "idle":  # lockstep, no command: time stands still, the observation goes out again
                self.republished += 1
                self._publish(self._last_obs)
                continue
            last_step_wall = time.monotonic()
            self._sim_ns += self._period_ns
            if command is not None:
                self._hold.last_command = command
                self._episode_started = True
                with self._cond:
                    self._seeds.touch()
            elif self._episode_started:
                command = self._hold.hold()
            else:
                self._publish(self._last_obs)  # wall clock: frozen until the first command, time passes
                continue
            self._last_obs = self._arm.step(command)
            self._expert = self._arm.expert_action() if self._has_expert else None
            self.steps += 1
            self._publish(self._last_obs)

    def _wait(self, last_step_wall: float) -> tuple[str, np.ndarray | None]:
        """Block until the loop has something to do: ("step", command or None), ("idle", None),
        ("reset", None) or ("stop", None)."""
        period = self.config.control_period_s
        with self._cond:
            # Without a commander (`wmpo robot` alone) there is nothing to wait for: wall clock.
            lockstep = self._lockstep and self.count_publishers(self.config.topics.command) > 0
            if lockstep:
                while not self._commands and not self._interrupted():
                    if not self._cond.wait(timeout=period):
                        self._warn_if_stalled()
                        return "idle", None
                paced = period / self._rtf if self._rtf > 0 else 0.0
            else:
                paced = period / self._rtf if self._rtf > 0 else period
            while not self._interrupted() and time.monotonic() < last_step_wall + paced:
                self._cond.wait(timeout=last_step_wall + paced - time.monotonic())
            if self._stop.is_set():
                return "stop", None
            if self._reset_request is not None:
                return "reset", None
            self._last_command_wall = time.monotonic()
            if lockstep:
                return "step", self._commands.popleft()
            newest = self._commands[-1] if self._commands else None
            self._commands.clear()
            return "step", newest

    def _warn_if_stalled(self) -> None:
        waited = time.monotonic() - self._last_command_wall
        if self._episode_started and waited >= self._stall_warning_s:
            self.get_logger().warning(
                f"lockstep: no command for {waited:.1f} s; simulated time stands still until the next one "
                "(is the policy node or teleop enabled?)",
                throttle_duration_sec=10.0,
            )

    def _interrupted(self) -> bool:
        return self._stop.is_set() or self._reset_request is not None

    def _reset_scene(self) -> str:
        with self._cond:
            seed = self._seeds.next_seed()
        self._last_obs = self._arm.reset(seed=seed)
        self._expert = self._arm.expert_action() if self._has_expert else None
        self._hold.reset()
        self._episode_started = False
        with self._cond:  # commands sent before the reset finished belong to the old scene
            self._commands.clear()
            self._last_command_wall = time.monotonic()
        self._sim_ns += self._period_ns
        self._seed_pub.publish(Int64(data=seed))
        self._publish(self._last_obs)
        return f"seed {seed}"

    def _publish(self, obs) -> None:
        stamp = nanoseconds_to_stamp(self._sim_ns)
        for cam in self.config.cameras:
            self._image_pubs[cam.name].publish(
                image_to_msg(obs.images[cam.name], stamp, f"{cam.name}_camera_optical_frame", cam.encoding)
            )
        self._state_pub.publish(joint_state_msg(self.config, obs.state, stamp))
        self._success_pub.publish(Bool(data=bool(obs.success)))
        if self._expert_pub is not None and self._expert is not None:
            suggestion = JointState(
                name=list(self.config.action.names), position=[float(v) for v in self._expert]
            )
            suggestion.header.stamp = stamp  # the observation it answers
            self._expert_pub.publish(suggestion)
        self._clock_pub.publish(Clock(clock=stamp))

    def destroy_node(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(SimArmNode, args)
