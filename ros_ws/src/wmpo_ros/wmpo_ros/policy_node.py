"""Policy node: camera frames + joint state + instruction in, one safe command per control tick out.

Control loop (a timer at the config's control rate, on the ROS clock, so sim time in simulation):
- Inference runs on a worker thread, never on the executor. A chunk computed from the newest
  observation at tick t holds the actions for ticks t, t+1, ...; when it arrives, entries for
  ticks already served are dropped. The next chunk is requested when `refill_threshold` or fewer
  actions remain queued.
- A tick with nothing queued is served late, as soon as its action arrives (never twice).
- In simulation (use_sim_time) a chunk is computed from the observation captured at its tick: the
  request waits for that observation to arrive (transport takes no simulated time), so a sim run
  acts on exactly the frames `wmpo eval` would. On a real arm the newest observation is used.
- Watchdog: when the newest frame of any camera, or the joint state, is `watchdog_periods` control
  periods old, the node holds (absolute dims keep the last command, delta dims 0) and drops the
  queued chunk; it never extrapolates. With no previous command it sends nothing. Ages are in ROS
  time, so sim time in simulation, where delivery takes no simulated time: /clock can overtake the
  frames published before it, so a tick that would hold while its own observation has not arrived
  waits for it instead, and holds only if the clock moves past it first (a lockstep sim never
  moves its clock without a command, so in lockstep the watchdog holds only for inputs that
  really stopped, never because the machine is busy).
- Every command passes `wmpo_core.safety.SafetyFilter` (limits, max step change, non-finite
  actions dropped).
- Dry run: the filtered actions go out on `<ns>/policy/dry_run_action`, and the node does not
  even advertise the command topic, so nothing can reach the arm and the arm's driver sees no
  commander (a lockstep sim then runs on the wall clock like an uncommanded real arm: the scene
  holds while time passes). Dry runs are not recorded (why: `wmpo_ros.session`). `dry_run` may
  change between episodes only, so an episode is all dry or all live: going live mid-episode
  would rate-limit the first real command against proposals the arm never executed (an absolute
  dim could jump); at every episode start the filter is reset to the measured joints instead.
- Episodes: `<ns>/policy/enable` (true) starts one (a staged policy is swapped in, the policy is
  reset), false stops.
- New policies: setting the `policy` parameter queues a load on the loader thread (never in the
  parameter callback: that shares the node's default callback group with the /clock
  subscription, so a slow load there would stop simulated time). The candidate is loaded into a
  second instance and verified; the outcome goes out on `<ns>/policy/loads` (JSON), a verified
  one is staged (`<ns>/policy/staged`) and becomes active (`<ns>/policy/version`) at the next
  episode start, or with `swap_at:=chunk` at the next inference request (the old chunk keeps
  serving ticks until the new one arrives, so no tick waits). `<ns>/policy/rollback` stages the
  previously active policy again (still loaded in memory).
- /diagnostics (1 Hz, wall clock): inference latency, queue depth, versions, watchdog state.
- The rules above are `wmpo_ros.policy_control.ControlLoop` (ROS-free, unit-tested); this node
  feeds it messages and clock ticks and publishes what it sends.
- Executor: one thread (`EXECUTOR_THREADS`). Inference and loading have threads of their own and
  every callback only copies inputs or flips state under the lock, so nothing waits on a pool;
  a pool hand-off cost each frame about 1.4 ms at p50 before the tick saw it
  (`bench/bench_policy_node.py`, docs/robot.md).
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from wmpo_core.policy import PolicyLoadError
from wmpo_core.robot_config import load_robot_config

from wmpo_ros.messages import LATCHED_QOS, STATE_QOS, CommandCodec, camera_subscription_qos, stamp_to_seconds
from wmpo_ros.names import graph_names
from wmpo_ros.node_inputs import subscribe_cameras, subscribe_joint_states
from wmpo_ros.node_utils import run_node, service_answer
from wmpo_ros.params import POLICY
from wmpo_ros.policy_control import ControlLoop
from wmpo_ros.policy_holder import PolicyHolder
from wmpo_ros.policy_loads import LoadOutcome, spec_refusal

EXECUTOR_THREADS = 1
"""The node process spins on one thread (module docstring: Executor)."""


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__(POLICY.node_name, **kwargs)
        p = POLICY.declare(self)
        self.config = load_robot_config(p["robot"])
        self.names = graph_names(self.config)
        self.dry_run = bool(p["dry_run"])
        self._autostart = bool(p["autostart"])
        self.holder = PolicyHolder(self.config)
        self._codec = CommandCodec(self.config)
        self._serving: str | None = None
        """Version whose actions the arm gets now (announced on <ns>/policy/version)."""
        self.control = ControlLoop(
            self.config,
            self.holder,
            refill=int(p["refill_threshold"]),
            watchdog_s=float(p["watchdog_periods"]) * self.config.control_period_s,
            sim_time=bool(self.get_parameter("use_sim_time").value),
            swap_at=p["swap_at"],
            send=self._publish_command,
            announce=self._announce,
            on_event=self._log_event,
        )
        self.swap_at = self.control.swap_at
        self._loads: queue.Queue[str | None] = queue.Queue()

        sensors = MutuallyExclusiveCallbackGroup()
        subscribe_cameras(
            self, self.config, self._on_frame, lambda cam: camera_subscription_qos(self, cam), lambda: sensors
        )
        subscribe_joint_states(self, self.config, self._on_joint_state, STATE_QOS, sensors)
        self.create_subscription(
            String, self.config.topics.instruction, self._on_instruction, LATCHED_QOS, callback_group=sensors
        )
        self._command_pub = (
            None
            if self.dry_run
            else self.create_publisher(self._codec.msg_type, self.config.topics.command, STATE_QOS)
        )
        self._dry_run_pub = self.create_publisher(
            Float64MultiArray, self.names.policy_dry_run_action, STATE_QOS
        )
        self._version_pub = self.create_publisher(String, self.names.policy_version, LATCHED_QOS)
        self._staged_pub = self.create_publisher(String, self.names.policy_staged, LATCHED_QOS)
        self._loads_pub = self.create_publisher(String, self.names.policy_loads, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(
            SetBool,
            self.names.policy_enable,
            service_answer(lambda request: self.enable(request.data), (PolicyLoadError,)),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_service(
            Trigger,
            self.names.policy_rollback,
            service_answer(lambda request: self.rollback(), (PolicyLoadError,)),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_timer(
            self.config.control_period_s, self._tick, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self.create_timer(
            1.0,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._loader = threading.Thread(target=self._load_loop, name="policy_loader", daemon=True)
        self._loader.start()
        if p["policy"]:
            self.holder.swap(self.holder.load(p["policy"]))
            self.get_logger().info(f"loaded policy {self.holder.active.version}")
            self._announce(self.holder.active.version)
            if p["autostart"]:
                self.enable(True)

    # ------------------------------------------------------------------ inputs

    def _on_frame(self, camera: str, frame: np.ndarray, msg: Image, info: MessageInfo) -> None:
        self.control.on_frame(camera, stamp_to_seconds(msg.header.stamp), frame, time.perf_counter())

    def _on_joint_state(self, state: np.ndarray, msg: JointState, info: MessageInfo) -> None:
        self.control.on_state(stamp_to_seconds(msg.header.stamp), state)

    def _on_instruction(self, msg: String) -> None:
        self.control.on_instruction(msg.data)

    @property
    def counters(self) -> dict[str, int]:
        return self.control.counters

    # ------------------------------------------------------------------ episodes and policies

    def enable(self, on: bool) -> str:
        """Start (on) or stop an episode; returns a human-readable summary. Also the service."""
        if not on:
            self.control.stop_episode()
            return "stopped"
        active = self.control.start_episode()
        self._tick()  # serve the episode's first tick now rather than up to a period later
        if self.dry_run:
            self.get_logger().info(
                f"dry run: episode started with policy {active.version}; actions go to "
                f"{self.names.policy_dry_run_action}, never to the arm"
            )
            return (
                f"dry-run episode started with policy {active.version} "
                f"(actions on {self.names.policy_dry_run_action})"
            )
        return f"episode started with policy {active.version}"

    def _announce(self, version: str) -> None:
        """The arm now gets this version's actions: say so on <ns>/policy/version (the recorder stamps it)."""
        if version != self._serving:
            self._serving = version
            self._version_pub.publish(String(data=version))

    def rollback(self) -> str:
        """Stage the previously active policy again (kept loaded in memory). Also the service."""
        previous = self.holder.rollback()
        self._staged_pub.publish(String(data=previous.version))
        self.get_logger().info(
            f"rollback: staged {previous.version} again; active from the next {self.swap_at}"
        )
        return f"staged {previous.version}; active from the next {self.swap_at}"

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "policy":
                spec = str(param.value)
                refused = spec_refusal(spec)
                if refused:
                    return SetParametersResult(successful=False, reason=refused)
                self._loads.put(spec)
                return SetParametersResult(
                    successful=True,
                    reason=f"loading {spec}; the outcome goes out on {self.names.policy_loads}",
                )
            if param.name == "dry_run":
                refused = self._set_dry_run(bool(param.value))
                if refused:
                    return SetParametersResult(successful=False, reason=refused)
            elif param.name in POLICY.names:
                return SetParametersResult(
                    successful=False, reason=f"'{param.name}' is read at start-up only"
                )
        return SetParametersResult(successful=True)

    def _set_dry_run(self, on: bool) -> str | None:
        """Switch dry run between episodes (module docstring); returns why not, or None."""
        with self.control.lock:  # commands go out under this lock: never on a publisher being destroyed
            if on == self.dry_run:
                return None
            if self.control.enabled:
                return (
                    "dry_run changes between episodes only: stop the episode first "
                    f"({self.names.policy_enable} false)"
                )
            self.dry_run = on
            if on:
                self.destroy_publisher(self._command_pub)
                self._command_pub = None
            else:
                self._command_pub = self.create_publisher(
                    self._codec.msg_type, self.config.topics.command, STATE_QOS
                )
        self.get_logger().info(
            f"dry run {'on: nothing will reach the arm' if on else 'off: the next episode commands the arm'}"
        )
        return None

    def _load_loop(self) -> None:
        """Load, verify and stage requested policies, one at a time, off every executor thread."""
        while (spec := self._loads.get()) is not None:
            try:
                candidate = self.holder.load(spec)
            except Exception as exc:  # any failure refuses the candidate; it must never take the node down
                running = self.holder.active.version if self.holder.active else "no policy"
                self.get_logger().warning(f"policy '{spec}' not loaded, still running {running}: {exc}")
                self._loads_pub.publish(String(data=LoadOutcome.refused(spec, str(exc)).to_json()))
                continue
            self.holder.stage(candidate)
            self._staged_pub.publish(String(data=candidate.version))
            self.get_logger().info(f"staged policy {candidate.version}; active from the next {self.swap_at}")
            self._loads_pub.publish(String(data=LoadOutcome.staged(spec, candidate.version).to_json()))
            if self._autostart and self.holder.active is None:
                self.enable(
                    True
                )  # started without a policy (e.g. waiting for the learner's): run the first one

    # ------------------------------------------------------------------ control loop

    def _tick(self) -> None:
        self.control.tick(self.get_clock().now().nanoseconds * 1e-9)

    def _publish_command(self, command: np.ndarray, hold: bool) -> None:
        """ControlLoop's output (called under its lock): to the arm, or in a dry run to the log topic."""
        if self._command_pub is None:  # dry run
            self._dry_run_pub.publish(Float64MultiArray(data=[float(v) for v in command]))
            self.get_logger().info(f"dry run: {np.round(command, 4).tolist()}", throttle_duration_sec=1.0)
        else:
            self._command_pub.publish(self._codec.encode(command, hold=hold))

    def _log_event(self, kind: str, message: str) -> None:
        if kind == "stale":
            self.get_logger().warning(message)
        elif kind == "inference_failed":
            self.get_logger().error(message, throttle_duration_sec=5.0)
        else:
            self.get_logger().warning(message, throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ diagnostics

    def diagnostics(self) -> DiagnosticStatus:
        control = self.control
        with control.lock:
            model_ms = [t.model_s * 1e3 for t in list(control.timings)[-100:]]
            active, staged = self.holder.active, self.holder.staged
            values = {
                "policy_version": active.version if active else "",
                "staged_version": staged.version if staged else "",
                "previous_version": self.holder.previous.version if self.holder.previous else "",
                "swap_at": self.swap_at,
                "enabled": str(control.enabled),
                "dry_run": str(self.dry_run),
                "watchdog": control.watchdog_state,
                "queue_depth": str(control.queue_depth),
                "inference_latency_ms_last": f"{model_ms[-1]:.2f}" if model_ms else "",
                "inference_latency_ms_p50": f"{np.percentile(model_ms, 50):.2f}" if model_ms else "",
                "inference_latency_ms_max": f"{max(model_ms):.2f}" if model_ms else "",
                **{k: str(v) for k, v in control.counters.items()},
            }
            if active is None:
                level, message = DiagnosticStatus.WARN, "no policy loaded"
            elif control.watchdog_state == "stale" and control.enabled:
                level, message = DiagnosticStatus.ERROR, "inputs stale: holding"
            else:
                level, message = (
                    DiagnosticStatus.OK,
                    ("dry run" if self.dry_run else "running") if control.enabled else "idle",
                )
        return DiagnosticStatus(
            level=level,
            name=f"wmpo/{self.get_name()}",
            message=message,
            hardware_id=self.config.name,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray(status=[self.diagnostics()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        self.control.close()
        self._loads.put(None)
        self._loader.join(timeout=1.0)  # a load in progress is not interruptible; the thread is a daemon
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args, threads=EXECUTOR_THREADS)
