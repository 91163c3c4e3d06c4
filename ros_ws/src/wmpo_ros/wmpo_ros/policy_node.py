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
- Executor: one thread (`EXECUTOR_THREADS`). Inference and loading have threads of their own and
  every callback only copies inputs or flips state under the lock, so nothing waits on a pool;
  a pool hand-off cost each frame about 1.4 ms at p50 before the tick saw it
  (`bench/bench_policy_node.py`, docs/robot.md).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

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
from wmpo_core.policy import Observation, PolicyLoadError
from wmpo_core.robot_config import load_robot_config
from wmpo_core.safety import SafetyFilter

from wmpo_ros.messages import LATCHED_QOS, STATE_QOS, CommandCodec, camera_subscription_qos, stamp_to_seconds
from wmpo_ros.names import graph_names
from wmpo_ros.node_inputs import subscribe_cameras, subscribe_joint_states
from wmpo_ros.node_utils import run_node
from wmpo_ros.params import POLICY
from wmpo_ros.policy_holder import LoadedPolicy, PolicyHolder
from wmpo_ros.policy_loads import LoadOutcome, spec_refusal
from wmpo_ros.policy_timing import ChunkQueue, InferenceTiming, captured_at, stale_input

SWAP_POINTS = ("episode", "chunk")

EXECUTOR_THREADS = 1
"""The node process spins on one thread (module docstring: Executor)."""


@dataclass
class _Request:
    token: int
    tick_time: float
    observation: Observation
    loaded: LoadedPolicy
    timing: InferenceTiming


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__(POLICY.node_name, **kwargs)
        p = POLICY.declare(self)
        self.config = load_robot_config(p["robot"])
        self.names = graph_names(self.config)
        self._period = self.config.control_period_s
        self._refill = int(p["refill_threshold"])
        self._watchdog_s = float(p["watchdog_periods"]) * self._period
        self.dry_run = bool(p["dry_run"])
        if self._refill < 0 or p["watchdog_periods"] <= 0:
            raise ValueError("refill_threshold must be >= 0 and watchdog_periods > 0")
        if p["swap_at"] not in SWAP_POINTS:
            raise ValueError(f"swap_at must be one of {SWAP_POINTS}, got '{p['swap_at']}'")
        self.swap_at: str = p["swap_at"]
        self._autostart = bool(p["autostart"])
        self.holder = PolicyHolder(self.config)
        self._codec = CommandCodec(self.config)
        self._safety = SafetyFilter(self.config.action)

        self._lock = threading.RLock()
        self._frames: dict[str, tuple[float, np.ndarray, float]] = {}
        self._state: tuple[float, np.ndarray] | None = None
        self._instruction = self.config.tasks[0]
        self._enabled = False
        self._token = 0
        self._inflight = False
        self._queue = ChunkQueue(self._period)
        self._pending_tick: float | None = None
        self._request_due: float | None = None
        self._last_tick: float = -np.inf
        self._awaiting: float | None = None
        """Sim time: a tick waiting for its own observation before the watchdog judges it."""
        self._serving: str | None = None
        """Version whose actions the arm gets now (announced on <ns>/policy/version)."""
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self.watchdog_state = "no_input"
        self.counters = {
            "ticks": 0,
            "commands": 0,
            "holds": 0,
            "late_ticks": 0,
            "dropped_non_finite": 0,
            "clamped": 0,
            "rate_limited": 0,
        }
        self.timings: deque[InferenceTiming] = deque(maxlen=1000)
        self._requests: queue.Queue[_Request | None] = queue.Queue()
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
            self._on_enable,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_service(
            Trigger,
            self.names.policy_rollback,
            self._on_rollback,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_timer(self._period, self._tick, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(
            1.0,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._inference_loop, name="policy_inference", daemon=True)
        self._worker.start()
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
        with self._lock:
            self._frames[camera] = (stamp_to_seconds(msg.header.stamp), frame, time.perf_counter())
            self._request_if_inputs_arrived()

    def _on_joint_state(self, state: np.ndarray, msg: JointState, info: MessageInfo) -> None:
        with self._lock:
            self._state = (stamp_to_seconds(msg.header.stamp), state)
            self._request_if_inputs_arrived()

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self._instruction = msg.data

    # ------------------------------------------------------------------ episodes and policies

    def enable(self, on: bool) -> str:
        """Start (on) or stop an episode; returns a human-readable summary. Also the service."""
        with self._lock:
            self._token += 1
            self._queue.clear()
            self._pending_tick = self._request_due = self._awaiting = None
            self._inflight = False
            if not on:
                self._enabled = False
                return "stopped"
            active = self.holder.begin_episode()
            if active is None:
                self._enabled = False
                raise PolicyLoadError("no policy loaded: set the 'policy' parameter")
            reference = None
            if self.config.action.space == "joint_position" and self._state is not None:
                reference = self._state[1]
            self._safety.reset(reference)
            self._enabled = True  # _last_tick is kept: a tick already served is never served twice
            self._announce(active.version)
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

    def _on_rollback(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            response.success, response.message = True, self.rollback()
        except PolicyLoadError as exc:
            response.success, response.message = False, str(exc)
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        try:
            response.message = self.enable(request.data)
            response.success = True
        except PolicyLoadError as exc:
            response.success, response.message = False, str(exc)
        return response

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
        with self._lock:  # _send publishes under this lock: never on a publisher being destroyed
            if on == self.dry_run:
                return None
            if self._enabled:
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

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _tick(self) -> None:
        with self._lock:
            if not self._enabled:
                return
            now = self._now()
            if now <= self._last_tick + 1e-6:
                return  # this tick was already served (the enable call and the timer can both fire)
            if self._awaiting is not None:  # the clock moved on before that tick's observation came
                self._serve(self._awaiting, may_wait=False)
            self._last_tick = now
            self.counters["ticks"] += 1
            # Wait only while the inputs were fresh: once the clock has moved past a tick without its
            # observation, they really stopped, and the next ticks hold at once until they are back.
            self._serve(now, may_wait=self._sim_time and self.watchdog_state != "stale")

    def _serve(self, now: float, may_wait: bool) -> None:
        """Answer the tick at `now`: a hold if inputs are stale, else its queued action (or request one)."""
        self._awaiting = None
        stale = stale_input(self._frames, self._state, self.config.camera_names, now, self._watchdog_s)
        if stale is not None and may_wait and not self._inputs_at(now):
            self._awaiting = now  # served when its observation arrives (_request_if_inputs_arrived)
            return
        if stale is not None:
            if self.watchdog_state != "stale":
                self.get_logger().warning(f"watchdog: {stale}; holding")
            self.watchdog_state = "stale"
            self._queue.clear()
            self._pending_tick = self._request_due = None
            self._send(self._safety.hold(), hold=True)
            return
        self.watchdog_state = "ok"
        action = self._queue.take_for(now)
        if action is not None:
            self._send_proposal(action)
        else:
            self._pending_tick = now
        if len(self._queue) <= self._refill and not self._inflight:
            if self._sim_time and not self._inputs_at(now):
                self._request_due = now  # requested when this tick's observation arrives
            else:
                self._request_due = None
                self._request(now)

    def _inputs_at(self, tick_time: float) -> bool:
        return captured_at(self._frames, self._state, self.config.camera_names, tick_time)

    def _request_if_inputs_arrived(self) -> None:
        if self._enabled and self._awaiting is not None and self._inputs_at(self._awaiting):
            self._serve(self._awaiting, may_wait=False)
        if (
            self._enabled
            and self._request_due is not None
            and not self._inflight
            and self._inputs_at(self._request_due)
        ):
            tick_time, self._request_due = self._request_due, None
            self._request(tick_time)

    def _request(self, tick_time: float) -> None:
        if self.swap_at == "chunk" and self.holder.staged is not None:
            # A chunk boundary is a policy boundary like an episode start: swap the staged policy in
            # (already loaded and verified) and reset it. The queued chunk of the old one keeps
            # serving ticks until this request's chunk arrives, so no tick waits for the swap.
            self.holder.begin_episode()
        loaded = self.holder.active
        frames = {cam: self._frames[cam] for cam in self.config.camera_names}
        observation = Observation(
            images={cam: f[1] for cam, f in frames.items()},
            state=self._state[1].copy(),
            instruction=self._instruction,
            stamp=max(f[0] for f in frames.values()),
            extra={"tick_time": tick_time},
        )
        timing = InferenceTiming(
            frame_arrival=max(f[2] for f in frames.values()), requested=time.perf_counter()
        )
        self._inflight = True
        self._requests.put(_Request(self._token, tick_time, observation, loaded, timing))

    def _inference_loop(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            if request.token != self._token:
                continue  # the episode it was for is over
            request.timing.model_start = time.perf_counter()
            try:
                chunk = np.asarray(request.loaded.policy.predict_chunk(request.observation), dtype=np.float64)
                if chunk.ndim != 2 or chunk.shape[1] != self.config.action.dim or chunk.shape[0] < 1:
                    raise ValueError(
                        f"predict_chunk returned shape {chunk.shape}, expected (K, {self.config.action.dim})"
                    )
            except Exception as exc:  # a failing policy must not kill the node: hold instead
                self.get_logger().error(
                    f"inference failed ({request.loaded.version}): {exc}", throttle_duration_sec=5.0
                )
                chunk = np.full((1, self.config.action.dim), np.nan)
            request.timing.model_end = time.perf_counter()
            self._on_chunk(request, chunk)

    def _on_chunk(self, request: _Request, chunk: np.ndarray) -> None:
        with self._lock:
            if request.token != self._token:
                return
            self._inflight = False
            self.timings.append(request.timing)
            self._announce(request.loaded.version)
            self._queue.load(request.tick_time, chunk)
            if self._pending_tick is not None:
                action = self._queue.take_for(self._pending_tick)
                if action is not None:
                    self._pending_tick = None
                    self.counters["late_ticks"] += 1
                    self._send_proposal(action)
                    request.timing.published = time.perf_counter()

    def _send_proposal(self, proposal: np.ndarray) -> None:
        command, events = self._safety.filter(proposal)
        if events.dropped_non_finite:
            self.counters["dropped_non_finite"] += 1
            self.get_logger().warning("dropped a non-finite action; holding", throttle_duration_sec=5.0)
        self.counters["clamped"] += bool(events.clamped_dims)
        self.counters["rate_limited"] += bool(events.rate_limited_dims)
        self._send(command, hold=events.dropped_non_finite)

    def _send(self, command: np.ndarray | None, hold: bool) -> None:
        if command is None:
            return
        self.counters["holds" if hold else "commands"] += 1
        if self._command_pub is None:  # dry run
            self._dry_run_pub.publish(Float64MultiArray(data=[float(v) for v in command]))
            self.get_logger().info(f"dry run: {np.round(command, 4).tolist()}", throttle_duration_sec=1.0)
        else:
            self._command_pub.publish(self._codec.encode(command, hold=hold))

    # ------------------------------------------------------------------ diagnostics

    def diagnostics(self) -> DiagnosticStatus:
        with self._lock:
            model_ms = [t.model_s * 1e3 for t in list(self.timings)[-100:]]
            active, staged = self.holder.active, self.holder.staged
            values = {
                "policy_version": active.version if active else "",
                "staged_version": staged.version if staged else "",
                "previous_version": self.holder.previous.version if self.holder.previous else "",
                "swap_at": self.swap_at,
                "enabled": str(self._enabled),
                "dry_run": str(self.dry_run),
                "watchdog": self.watchdog_state,
                "queue_depth": str(len(self._queue)),
                "inference_latency_ms_last": f"{model_ms[-1]:.2f}" if model_ms else "",
                "inference_latency_ms_p50": f"{np.percentile(model_ms, 50):.2f}" if model_ms else "",
                "inference_latency_ms_max": f"{max(model_ms):.2f}" if model_ms else "",
                **{k: str(v) for k, v in self.counters.items()},
            }
            if active is None:
                level, message = DiagnosticStatus.WARN, "no policy loaded"
            elif self.watchdog_state == "stale" and self._enabled:
                level, message = DiagnosticStatus.ERROR, "inputs stale: holding"
            else:
                level, message = (
                    DiagnosticStatus.OK,
                    ("dry run" if self.dry_run else "running") if self._enabled else "idle",
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
        with self._lock:
            self._token += 1
        self._requests.put(None)
        self._loads.put(None)
        self._worker.join(timeout=10.0)
        self._loader.join(timeout=1.0)  # a load in progress is not interruptible; the thread is a daemon
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args, threads=EXECUTOR_THREADS)
