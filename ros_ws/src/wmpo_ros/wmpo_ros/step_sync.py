"""Pairs each command with the observation it answered.

A recorded step is (frames, joint state, command): the newest frame of each camera and the newest
joint state *published before the command was published*, i.e. what the commander could have
seen. Publication order comes from the DDS source timestamps of the messages (rclpy's
`MessageInfo`), not from arrival order (topics are delivered independently) and not from the
ROS clock of the recorder (which, in simulation, may lag or lead /clock). In lockstep simulation
this pairing is exact: the sim publishes observation t, the commander answers, and only then does
the sim publish t+1.

A command is held until every input has delivered a message published after it (then its
pairing is final: each topic's messages arrive in publication order) or until `settle_s` of wall
time has passed (then the newest inputs are used and the step is counted as unsettled).
Pure Python, no ROS: unit-tested alone.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class SyncedStep:
    time: float
    """Step time: the command's time if given, else the newest capture stamp it answered."""
    action: np.ndarray
    images: dict[str, np.ndarray]
    image_times: dict[str, float]
    """Capture stamps (message headers) of the frames."""
    state: np.ndarray
    state_time: float
    success_seen: bool
    """A success signal was published before the command (within the current episode)."""
    settled: bool
    """False when the step was emitted on the settle timeout, before every input caught up."""
    hold: bool = False
    """The commander marked the command a hold, not an action it chose (wmpo_ros.messages)."""


@dataclass
class _Pending:
    sent_ns: int
    time: float | None
    action: np.ndarray
    wall: float
    hold: bool


class _Stream:
    """Recent messages of one input, ordered by publication time: (sent_ns, stamp, value)."""

    def __init__(self, history: int):
        self.sent: deque[int] = deque(maxlen=history)
        self.items: deque[tuple[float, object]] = deque(maxlen=history)

    def add(self, sent_ns: int, stamp: float, value: object) -> None:
        if not self.sent or sent_ns >= self.sent[-1]:
            self.sent.append(sent_ns)
            self.items.append((stamp, value))
            return
        i = bisect.bisect_right(self.sent, sent_ns)  # rare: several publishers on one topic
        self.sent.insert(i, sent_ns)
        self.items.insert(i, (stamp, value))
        if len(self.sent) > (self.sent.maxlen or 0):
            self.sent.popleft()
            self.items.popleft()

    def before(self, sent_ns: int) -> tuple[float, object] | None:
        i = bisect.bisect_left(self.sent, sent_ns)
        return None if i == 0 else self.items[i - 1]

    def final_for(self, sent_ns: int) -> bool:
        return bool(self.sent) and self.sent[-1] > sent_ns

    def clear(self) -> None:
        self.sent.clear()
        self.items.clear()


class StepSynchronizer:
    def __init__(self, cameras: list[str], settle_s: float, history: int = 32):
        self.cameras = list(cameras)
        self.settle_s = settle_s
        self._frames = {cam: _Stream(history) for cam in self.cameras}
        self._state = _Stream(history)
        self._success = _Stream(history)
        self._success_signal = False
        self._pending: deque[_Pending] = deque()
        self.unpaired_commands = 0
        """Commands dropped because no frame or joint state at all was published before them."""

    def add_frame(self, camera: str, sent_ns: int, stamp: float, frame: np.ndarray) -> None:
        self._frames[camera].add(sent_ns, stamp, frame)

    def add_state(self, sent_ns: int, stamp: float, state: np.ndarray) -> None:
        self._state.add(sent_ns, stamp, state)

    def add_success(self, sent_ns: int, success: bool) -> None:
        """A per-step success signal (simulation); once seen, steps also wait for it to be final."""
        self._success_signal = True
        self._success.add(sent_ns, 0.0, bool(success))

    def add_command(
        self, sent_ns: int, action: np.ndarray, wall: float, time: float | None = None, hold: bool = False
    ) -> None:
        self._pending.append(_Pending(sent_ns, time, np.asarray(action, dtype=np.float64), wall, hold))

    def new_episode(self) -> None:
        """Forget pending commands and success signals; recent frames and states are kept (the
        first command of an episode answers an observation published before it started)."""
        self._pending.clear()
        self._success.clear()
        self.unpaired_commands = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pop_ready(self, wall_now: float, final: bool = False) -> list[SyncedStep]:
        """Steps whose pairing is final (or whose settle time is over, or all if `final`), oldest first."""
        ready: list[SyncedStep] = []
        while self._pending:
            cmd = self._pending[0]
            inputs = [*self._frames.values(), self._state] + ([self._success] if self._success_signal else [])
            settled = all(s.final_for(cmd.sent_ns) for s in inputs)
            if not (settled or final or wall_now - cmd.wall >= self.settle_s):
                break
            self._pending.popleft()
            step = self._pair(cmd, settled)
            if step is None:
                self.unpaired_commands += 1
            else:
                ready.append(step)
        return ready

    def _pair(self, cmd: _Pending, settled: bool) -> SyncedStep | None:
        images, image_times = {}, {}
        for cam, stream in self._frames.items():
            found = stream.before(cmd.sent_ns)
            if found is None:
                return None
            image_times[cam], images[cam] = found
        state = self._state.before(cmd.sent_ns)
        if state is None:
            return None
        success_seen = any(
            value
            for sent, (_, value) in zip(self._success.sent, self._success.items, strict=True)
            if sent < cmd.sent_ns
        )
        step_time = cmd.time if cmd.time is not None else max(state[0], *image_times.values())
        return SyncedStep(
            time=step_time,
            action=cmd.action,
            images=images,
            image_times=image_times,
            state=state[1],
            state_time=state[0],
            success_seen=success_seen,
            settled=settled,
            hold=cmd.hold,
        )
