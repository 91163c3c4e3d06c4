"""Pairs each command with the observation it answered, by capture timestamps.

A recorded step is (frames, joint state, command): the newest frame of each camera and the newest
joint state captured at or before the command's time. Messages on different topics arrive in any
order, so a command is held until every input has shown a message stamped at or after the
command's time (then the pairing is final) or until `settle_s` of wall time has passed (then the
newest inputs are used and the step is counted as late). Pure Python, no ROS: unit-tested alone.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

import numpy as np

_EPS = 1e-6


@dataclass
class SyncedStep:
    time: float
    """Command time (ROS clock; sim time in simulation)."""
    action: np.ndarray
    images: dict[str, np.ndarray]
    image_times: dict[str, float]
    state: np.ndarray
    state_time: float
    success_seen: bool
    """The simulator had reported success when the command was issued."""
    settled: bool
    """False when the step was emitted on the settle timeout, not because all inputs were final."""


@dataclass
class _Pending:
    time: float
    action: np.ndarray
    wall: float
    success_seen: bool


class _Stream:
    """Recent (stamp, value) pairs of one input, ordered by stamp."""

    def __init__(self, history: int):
        self.stamps: deque[float] = deque(maxlen=history)
        self.values: deque[object] = deque(maxlen=history)

    def add(self, stamp: float, value: object) -> None:
        if self.stamps and stamp <= self.stamps[-1]:
            if abs(stamp - self.stamps[-1]) < _EPS:
                self.values[-1] = value  # same capture time again: keep the newest copy
            return  # out of order or older than what we have: never useful
        self.stamps.append(stamp)
        self.values.append(value)

    def at_or_before(self, t: float) -> tuple[float, object] | None:
        i = bisect.bisect_right(self.stamps, t + _EPS)
        return None if i == 0 else (self.stamps[i - 1], self.values[i - 1])

    def final_for(self, t: float) -> bool:
        return bool(self.stamps) and self.stamps[-1] >= t - _EPS


class StepSynchronizer:
    def __init__(self, cameras: list[str], settle_s: float, history: int = 32):
        self.cameras = list(cameras)
        self.settle_s = settle_s
        self._frames = {cam: _Stream(history) for cam in self.cameras}
        self._state = _Stream(history)
        self._pending: deque[_Pending] = deque()
        self.unpaired_commands = 0
        """Commands dropped because no frame or joint state at all preceded them."""

    @property
    def newest_state_time(self) -> float | None:
        return self._state.stamps[-1] if self._state.stamps else None

    def add_frame(self, camera: str, stamp: float, frame: np.ndarray) -> None:
        self._frames[camera].add(stamp, frame)

    def add_state(self, stamp: float, state: np.ndarray) -> None:
        self._state.add(stamp, state)

    def add_command(self, time: float, action: np.ndarray, wall: float, success_seen: bool = False) -> None:
        self._pending.append(_Pending(time, np.asarray(action, dtype=np.float64), wall, success_seen))

    def clear_pending(self) -> None:
        self._pending.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pop_ready(self, wall_now: float) -> list[SyncedStep]:
        """Steps whose pairing is final (or whose settle time is over), oldest first."""
        ready: list[SyncedStep] = []
        while self._pending:
            cmd = self._pending[0]
            final = all(self._frames[c].final_for(cmd.time) for c in self.cameras) and self._state.final_for(cmd.time)
            if not final and wall_now - cmd.wall < self.settle_s:
                break
            self._pending.popleft()
            step = self._pair(cmd, settled=final)
            if step is None:
                self.unpaired_commands += 1
            else:
                ready.append(step)
        return ready

    def _pair(self, cmd: _Pending, settled: bool) -> SyncedStep | None:
        images, image_times = {}, {}
        for cam in self.cameras:
            found = self._frames[cam].at_or_before(cmd.time)
            if found is None:
                return None
            image_times[cam], images[cam] = found
        state = self._state.at_or_before(cmd.time)
        if state is None:
            return None
        return SyncedStep(
            time=cmd.time,
            action=cmd.action,
            images=images,
            image_times=image_times,
            state=state[1],
            state_time=state[0],
            success_seen=cmd.success_seen,
            settled=settled,
        )
