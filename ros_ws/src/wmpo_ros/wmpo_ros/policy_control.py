"""The policy node's control loop without ROS: which action each control tick gets, and when.

`ControlLoop` owns the inputs (newest frame per camera, joint state, instruction), the episode
state, the chunk queue, the safety filter and the inference thread; the node only feeds it
messages and clock ticks and publishes what it hands back through `send`. The rules (the policy
node's module docstring explains them) are therefore testable with plain numbers and a fake
policy, without DDS:

    loop = ControlLoop(config, holder, refill=1, watchdog_s=0.3, sim_time=True, swap_at="episode",
                       send=publish, announce=say_version, on_event=log)
    loop.on_frame("front", stamp, frame, time.perf_counter()); loop.on_state(stamp, joints)
    loop.start_episode(); loop.tick(now)   # -> send(command, hold) now, or when its chunk arrives

Every method takes `lock` (re-entrant), and `send` and `announce` are called under it, so a
publisher the node swaps under the same lock is never used mid-swap.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from wmpo_core.policy import Observation, PolicyLoadError
from wmpo_core.robot_config import RobotConfig
from wmpo_core.safety import SafetyFilter

from wmpo_ros.policy_holder import LoadedPolicy, PolicyHolder
from wmpo_ros.policy_timing import ChunkQueue, InferenceTiming, captured_at, stale_input

SWAP_POINTS = ("episode", "chunk")


@dataclass
class _Request:
    token: int
    tick_time: float
    observation: Observation
    loaded: LoadedPolicy
    timing: InferenceTiming


class ControlLoop:
    """Ticks in, safe commands out; inference on a thread of its own (`close()` stops it).

    `send(command, hold)` gets every command; `announce(version)` is called when the arm starts
    getting another version's actions; `on_event(kind, message)` reports what the node should log:
    'stale' (the watchdog starts holding), 'non_finite' (an action was dropped), 'inference_failed'.
    """

    def __init__(
        self,
        config: RobotConfig,
        holder: PolicyHolder,
        *,
        refill: int,
        watchdog_s: float,
        sim_time: bool,
        swap_at: str,
        send: Callable[[np.ndarray, bool], None],
        announce: Callable[[str], None],
        on_event: Callable[[str, str], None],
    ):
        if refill < 0 or watchdog_s <= 0:
            raise ValueError("refill_threshold must be >= 0 and watchdog_periods > 0")
        if swap_at not in SWAP_POINTS:
            raise ValueError(f"swap_at must be one of {SWAP_POINTS}, got '{swap_at}'")
        self.config = config
        self.holder = holder
        self.swap_at = swap_at
        self._refill = refill
        self._watchdog_s = watchdog_s
        self._sim_time = sim_time
        self._send_command = send
        self._announce = announce
        self._on_event = on_event
        self._safety = SafetyFilter(config.action)

        self.lock = threading.RLock()
        self._frames: dict[str, tuple[float, np.ndarray, float]] = {}
        self._state: tuple[float, np.ndarray] | None = None
        self._instruction = config.tasks[0]
        self.enabled = False
        self._token = 0
        self.inflight = False
        self._queue = ChunkQueue(config.control_period_s)
        self._pending_tick: float | None = None
        self._request_due: float | None = None
        self._last_tick: float = -np.inf
        self._awaiting: float | None = None
        """Sim time: a tick waiting for its own observation before the watchdog judges it."""
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
        self._worker = threading.Thread(target=self._inference_loop, name="policy_inference", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ inputs

    def on_frame(self, camera: str, stamp: float, frame: np.ndarray, arrival: float) -> None:
        with self.lock:
            self._frames[camera] = (stamp, frame, arrival)
            self._request_if_inputs_arrived()

    def on_state(self, stamp: float, state: np.ndarray) -> None:
        with self.lock:
            self._state = (stamp, state)
            self._request_if_inputs_arrived()

    def on_instruction(self, text: str) -> None:
        with self.lock:
            self._instruction = text

    def input_stamps(self) -> dict[str, float]:
        """Stamp of the newest message per camera and of the joint state ('joint_state'); -inf if none."""
        with self.lock:
            stamps = {
                c: self._frames[c][0] if c in self._frames else -np.inf for c in self.config.camera_names
            }
            stamps["joint_state"] = self._state[0] if self._state is not None else -np.inf
            return stamps

    def inputs_since(self, t: float) -> bool:
        """Whether every camera and the joint state have delivered a message stamped at `t` or later."""
        return min(self.input_stamps().values()) >= t - 1e-6

    @property
    def waiting_for_observation(self) -> bool:
        """Sim time: a tick is held back until its own observation arrives (or the clock moves on)."""
        return self._awaiting is not None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ episodes

    def start_episode(self) -> LoadedPolicy:
        """Swap in a staged policy, reset it and the safety filter; raises PolicyLoadError without one.
        The first tick is the caller's (`tick(now)`), so it is served now rather than a period later."""
        with self.lock:
            self._end_episode()
            active = self.holder.begin_episode()
            if active is None:
                raise PolicyLoadError("no policy loaded: set the 'policy' parameter")
            reference = None
            if self.config.action.space == "joint_position" and self._state is not None:
                reference = self._state[1]
            self._safety.reset(reference)
            self.enabled = True  # _last_tick is kept: a tick already served is never served twice
            self._announce(active.version)
            return active

    def stop_episode(self) -> None:
        with self.lock:
            self._end_episode()

    def _end_episode(self) -> None:
        self._token += 1  # a chunk in flight for the old episode is dropped when it arrives
        self._queue.clear()
        self._pending_tick = self._request_due = self._awaiting = None
        self.inflight = False
        self.enabled = False

    # ------------------------------------------------------------------ ticks

    def tick(self, now: float) -> None:
        """The control tick at ROS time `now` (also called right after an episode starts)."""
        with self.lock:
            if not self.enabled:
                return
            if now <= self._last_tick + 1e-6:
                return  # this tick was already served (the episode start and the timer can both fire)
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
                self._on_event("stale", f"watchdog: {stale}; holding")
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
        if len(self._queue) <= self._refill and not self.inflight:
            if self._sim_time and not self._inputs_at(now):
                self._request_due = now  # requested when this tick's observation arrives
            else:
                self._request_due = None
                self._request(now)

    def _inputs_at(self, tick_time: float) -> bool:
        return captured_at(self._frames, self._state, self.config.camera_names, tick_time)

    def _request_if_inputs_arrived(self) -> None:
        if self.enabled and self._awaiting is not None and self._inputs_at(self._awaiting):
            self._serve(self._awaiting, may_wait=False)
        if (
            self.enabled
            and self._request_due is not None
            and not self.inflight
            and self._inputs_at(self._request_due)
        ):
            tick_time, self._request_due = self._request_due, None
            self._request(tick_time)

    # ------------------------------------------------------------------ inference

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
        self.inflight = True
        self._requests.put(_Request(self._token, tick_time, observation, loaded, timing))

    def _inference_loop(self) -> None:
        dim = self.config.action.dim
        while (request := self._requests.get()) is not None:
            if request.token != self._token:
                continue  # the episode it was for is over
            request.timing.model_start = time.perf_counter()
            try:
                chunk = np.asarray(request.loaded.policy.predict_chunk(request.observation), dtype=np.float64)
                if chunk.ndim != 2 or chunk.shape[1] != dim or chunk.shape[0] < 1:
                    raise ValueError(f"predict_chunk returned shape {chunk.shape}, expected (K, {dim})")
            except Exception as exc:  # a failing policy must not kill the node: hold instead
                self._on_event("inference_failed", f"inference failed ({request.loaded.version}): {exc}")
                chunk = np.full((1, dim), np.nan)
            request.timing.model_end = time.perf_counter()
            self._on_chunk(request, chunk)

    def _on_chunk(self, request: _Request, chunk: np.ndarray) -> None:
        with self.lock:
            if request.token != self._token:
                return
            self.inflight = False
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

    # ------------------------------------------------------------------ output

    def _send_proposal(self, proposal: np.ndarray) -> None:
        command, events = self._safety.filter(proposal)
        if events.dropped_non_finite:
            self.counters["dropped_non_finite"] += 1
            self._on_event("non_finite", "dropped a non-finite action; holding")
        self.counters["clamped"] += bool(events.clamped_dims)
        self.counters["rate_limited"] += bool(events.rate_limited_dims)
        self._send(command, hold=events.dropped_non_finite)

    def _send(self, command: np.ndarray | None, hold: bool) -> None:
        if command is None:
            return  # a hold with no previous command: nothing to repeat
        self.counters["holds" if hold else "commands"] += 1
        self._send_command(command, hold)

    def close(self) -> None:
        """End the episode and stop the inference thread."""
        with self.lock:
            self._token += 1
        self._requests.put(None)
        self._worker.join(timeout=10.0)
