"""Recorder node: synchronized (frames, joint state, commanded action) steps into the episode store.

One step per command on the command topic (so exactly at control rate, and exactly what the arm
was told after the safety filter), paired with the frames and joint state the command answered:
the newest ones published before it (`wmpo_ros.step_sync`). Timestamps in the store are the
real capture times from the message headers. A hold (stale inputs, a non-finite proposal) is what
the arm was told, so it is recorded like any command, but it is not an action the policy or the
operator chose: the indices of such steps go into the episode's `extra["hold_steps"]` (from the
hold mark in the command message, `wmpo_ros.messages`), so training can leave them out.

Never blocks the control loop: callbacks only copy references into a synchronizer; a writer
thread owns the store and drains a queue. Never loses a finished episode: an episode that ended
(stop, success, time limit) is committed even if the node shuts down right after; only an
unfinished episode is discarded at shutdown (and logged).

Services (std_srvs): start, stop (commit), discard (the episode being recorded; nothing committed
is ever touched), label_success (SetBool; the current episode, else the last committed one,
`success_labeled_by="human"`). In simulation the env's success signal labels episodes
(`success_labeled_by="env"`) and, with end_on_success, ends them at the first successful step.
Each committed episode is announced on `<ns>/recorder/episodes` (JSON metadata + cadence report).

A dry run of the policy node sends the arm nothing, so there is nothing to record: dry runs are not
recorded (why: `wmpo_ros.session`). An episode recording while dry-run actions come in gets no
steps; the recorder says so once per episode.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Int64, String
from std_srvs.srv import SetBool, Trigger
from wmpo_core.episode_store import EpisodeStore, StoreError
from wmpo_core.robot_config import CameraSpec, load_robot_config

from wmpo_ros.messages import LATCHED_QOS, CommandCodec, camera_subscription_qos, stamp_to_seconds
from wmpo_ros.names import graph_names
from wmpo_ros.node_inputs import subscribe_cameras, subscribe_joint_states
from wmpo_ros.node_utils import run_node, service_answer
from wmpo_ros.params import RECORDER
from wmpo_ros.recording import EpisodeInProgress
from wmpo_ros.step_sync import StepSynchronizer, SyncedStep
from wmpo_ros.store_writer import StoreWriterThread

SOURCES = ("teleop", "policy", "scripted")
RECORDER_QUEUE_S = 1.0
"""The recorder's camera subscriptions hold this much of a stream at control rate (at least the
config's depth): measured, a 10-frame queue lost ~1% of 2 x 30 Hz 480x640 frames on a loaded
2-core machine, a 1-second one none (docs/robot.md)."""


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__(RECORDER.node_name, **kwargs)
        p = RECORDER.declare(self)
        self.config = load_robot_config(p["robot"])
        self.names = graph_names(self.config)
        if p["source"] not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got '{p['source']}'")
        self.source = p["source"]
        self.max_steps = int(p["max_steps"]) or self.config.max_episode_steps
        self.end_on_success = bool(p["end_on_success"])
        self._period = self.config.control_period_s
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self.store = EpisodeStore.open(p["store"], mode="a")
        self._codec = CommandCodec(self.config)
        self._sync = StepSynchronizer(self.config.camera_names, settle_s=float(p["settle_s"]))

        self._lock = threading.Lock()
        self._episode: EpisodeInProgress | None = None
        self._episodes_started = 0
        self._success_available = False
        self._env_seed: int | None = None
        self._policy_version: str | None = None
        self._instruction = self.config.tasks[0]
        self._frames_received = {cam: 0 for cam in self.config.camera_names}

        self._writer = StoreWriterThread(self.store, self.config, self.get_logger(), self._publish_committed)

        # Each camera on its own callback group (frames are copied in parallel with everything else),
        # and queues deeper than a live consumer's: a recorder must ride out a slow moment, not drop.
        subscribe_cameras(self, self.config, self._on_frame, self._camera_qos, MutuallyExclusiveCallbackGroup)
        inputs = MutuallyExclusiveCallbackGroup()
        deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        subscribe_joint_states(self, self.config, self._on_joint_state, deep, inputs)
        self.create_subscription(
            self._codec.msg_type, self.config.topics.command, self._on_command, deep, callback_group=inputs
        )
        self.create_subscription(Bool, self.names.success, self._on_success, deep, callback_group=inputs)
        self.create_subscription(
            Int64, self.names.env_seed, self._on_seed, LATCHED_QOS, callback_group=inputs
        )
        self.create_subscription(
            String, self.names.policy_version, self._on_version, LATCHED_QOS, callback_group=inputs
        )
        self.create_subscription(
            String, self.config.topics.instruction, self._on_instruction, LATCHED_QOS, callback_group=inputs
        )
        self.create_subscription(
            Float64MultiArray,
            self.names.policy_dry_run_action,
            self._on_dry_run_action,
            10,
            callback_group=inputs,
        )
        self.create_timer(
            0.05, self._drain, clock=Clock(clock_type=ClockType.STEADY_TIME), callback_group=inputs
        )
        self._episodes_pub = self.create_publisher(String, self.names.recorder_episodes, 10)
        services = MutuallyExclusiveCallbackGroup()
        for srv_type, name, action in (
            (Trigger, self.names.recorder_start, lambda request: self.start()),
            (Trigger, self.names.recorder_stop, lambda request: self._stop_message()),
            (Trigger, self.names.recorder_discard, lambda request: self.discard()),
            (SetBool, self.names.recorder_label_success, lambda request: self.label(bool(request.data))),
        ):
            answer = service_answer(action, (StoreError,))
            self.create_service(srv_type, name, answer, callback_group=services)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if p["autostart"]:
            self.start()

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """`source` may change between episodes (one session recording demonstrations, then rollouts)."""
        for param in params:
            if param.name == "source":
                if param.value not in SOURCES:
                    return SetParametersResult(
                        successful=False, reason=f"source must be one of {SOURCES}, got '{param.value}'"
                    )
                with self._lock:
                    if self._episode is not None:
                        return SetParametersResult(
                            successful=False, reason="cannot change the source while recording an episode"
                        )
                    self.source = str(param.value)
            elif param.name in RECORDER.names:
                return SetParametersResult(
                    successful=False, reason=f"'{param.name}' is read at start-up only"
                )
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ inputs

    def _camera_qos(self, camera: CameraSpec) -> QoSProfile:
        """Deeper than a live consumer's queue: a recorder must ride out a slow moment, not drop."""
        qos = camera_subscription_qos(self, camera)
        qos.depth = max(qos.depth, math.ceil(RECORDER_QUEUE_S * self.config.control_rate_hz))
        return qos

    def _on_frame(self, camera: str, frame: np.ndarray, msg: Image, info: MessageInfo) -> None:
        with self._lock:
            self._sync.add_frame(camera, info["source_timestamp"], stamp_to_seconds(msg.header.stamp), frame)
            if self._episode is not None:
                self._episode.cadence.frames_received[camera] += 1
        self._drain()

    def _on_joint_state(self, state: np.ndarray, msg: JointState, info: MessageInfo) -> None:
        with self._lock:
            self._sync.add_state(info["source_timestamp"], stamp_to_seconds(msg.header.stamp), state)
        self._drain()

    def _on_command(self, msg, info: MessageInfo) -> None:
        try:
            action = self._codec.decode(msg)
        except ValueError as exc:
            self.get_logger().error(f"command: {exc}", throttle_duration_sec=5.0)
            return
        with self._lock:
            if self._episode is None or info["source_timestamp"] < self._episode.started_ns:
                # not recording, or a command of the control loop that was in flight when recording started
                return
            if not np.all(np.isfinite(action)):
                self.get_logger().error(
                    "a non-finite command reached the command topic; not recorded", throttle_duration_sec=5.0
                )
                return
            # Step time: in simulation the tick the command answers (the newest capture stamp it is
            # paired with); on a real arm the wall time the command was published.
            t = None if self._sim_time else info["source_timestamp"] * 1e-9
            self._sync.add_command(
                info["source_timestamp"], action, time.monotonic(), time=t, hold=self._codec.is_hold(msg)
            )
        self._drain()

    def _on_dry_run_action(self, msg: Float64MultiArray) -> None:
        with self._lock:
            if self._episode is None or self._episode.dry_run_seen:
                return
            self._episode.dry_run_seen = True
            index = self._episode.index
        self.get_logger().warning(
            f"episode #{index}: the policy node is in dry run (its actions go to "
            f"{self.names.policy_dry_run_action}, none to the arm); "
            "dry runs are not recorded, so the policy adds no steps to this episode: stop or discard it"
        )

    def _on_success(self, msg: Bool, info: MessageInfo) -> None:
        with self._lock:
            self._success_available = True
            self._sync.add_success(info["source_timestamp"], msg.data)
            if self._episode is not None and msg.data:
                self._episode.success_seen = True
        self._drain()

    def _on_seed(self, msg: Int64) -> None:
        with self._lock:
            self._env_seed = int(msg.data)

    def _on_version(self, msg: String) -> None:
        with self._lock:
            self._policy_version = msg.data or None

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self._instruction = msg.data

    # ------------------------------------------------------------------ episodes

    @property
    def recording(self) -> bool:
        return self._episode is not None

    def start(self) -> str:
        with self._lock:
            if self._episode is not None:
                raise StoreError(f"already recording episode #{self._episode.index}")
            self._sync.new_episode()
            self._episode = EpisodeInProgress.begin(
                self._episodes_started, self.config.camera_names, self.config.control_rate_hz
            )
            self._episodes_started += 1
            return (
                f"recording episode #{self._episode.index} (source {self.source}, "
                f"at most {self.max_steps} steps)"
            )

    def stop(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """End the current episode and wait for its commit; returns its metadata (None if empty)."""
        with self._lock:
            episode = self._episode
            if episode is None:
                raise StoreError("not recording")
        self._drain(final=True)
        with self._lock:
            # None: the episode ended on its own while draining
            done = None if self._episode is not episode else self._end_locked("stopped")
        if done is None:
            return self.last_committed
        if not done.wait(timeout):
            raise StoreError(f"episode #{episode.index} was not committed within {timeout:.0f} s")
        return self.last_committed if episode.steps else None

    def discard(self) -> str:
        with self._lock:
            episode = self._episode
            if episode is None:
                raise StoreError("not recording: nothing to discard (committed episodes are never touched)")
            self._episode = None
            self._sync.new_episode()
            self._writer.discard(episode.index)
            return f"discarded episode #{episode.index} ({episode.steps} steps)"

    def label(self, success: bool) -> str:
        with self._lock:
            if self._episode is not None:
                self._episode.label = (success, "human")
                return f"episode #{self._episode.index} will be committed with success={success}"
        return self._writer.label_last(success)

    def _end_locked(self, reason: str) -> threading.Event:
        episode = self._episode
        assert episode is not None
        self._episode = None
        unpaired = self._sync.unpaired_commands
        self._sync.new_episode()
        success, labeled_by = episode.outcome(self._success_available)
        extra, version = episode.summary(reason, unpaired, self.source == "policy", self._policy_version)
        return self._writer.commit(episode, success, labeled_by, extra, version)

    def _drain(self, final: bool = False) -> None:
        """Move synchronized steps to the writer; end the episode on success or time limit."""
        with self._lock:
            episode = self._episode
            if episode is None:
                return
            for step in self._sync.pop_ready(time.monotonic(), final=final):
                self._record_locked(episode, step)
                if self._episode is not episode:
                    return
                if self.end_on_success and step.success_seen:
                    self._end_locked("success")
                    return
                if episode.steps >= self.max_steps:
                    self._end_locked("time_limit")
                    return

    def _record_locked(self, episode: EpisodeInProgress, step: SyncedStep) -> None:
        if episode.add_step(step, self._period, self._policy_version):
            version = self._policy_version if self.source == "policy" else None
            meta = {
                "task": self._instruction,
                "policy_version": version,
                "env_seed": self._env_seed,
                "source": self.source,
            }
            self._writer.begin(episode.index, meta)
        self._writer.append(episode.index, step)
        episode.cadence.max_write_queue = max(episode.cadence.max_write_queue, self._writer.qsize())

    # ------------------------------------------------------------------ services

    def _stop_message(self) -> str:
        """The stop service's answer: the committed episode's summary (JSON)."""
        meta = self.stop()
        return json.dumps(meta) if meta else "stopped; the episode had no steps and was not committed"

    # ------------------------------------------------------------------ committed episodes

    @property
    def last_committed(self) -> dict[str, Any] | None:
        """Metadata of the newest committed episode (JSON form)."""
        return self._writer.last_committed

    def _publish_committed(self, meta: dict[str, Any]) -> None:
        self._episodes_pub.publish(String(data=json.dumps(meta)))

    def destroy_node(self) -> None:
        with self._lock:
            episode, self._episode = self._episode, None
        if episode is not None and episode.steps:
            self.get_logger().warning(
                f"shutting down while recording: discarding unfinished episode #{episode.index} "
                f"({episode.steps} steps)"
            )
        if episode is not None:
            self._writer.discard(episode.index)
        self._writer.stop()  # finished episodes still queued are committed before we exit
        self.store.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(RecorderNode, args)
