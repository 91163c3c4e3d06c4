"""The policy node's timing rules, free of ROS so they read (and test) on their own.

Times are seconds on the node's clock (sim time in simulation). A chunk computed for the tick at
`t` holds the actions for ticks t, t + period, ...; a tick takes the queued action within half a
period of it and drops older ones, so a late chunk never serves a tick twice or out of order.
Inputs are the newest frame per camera and the newest joint state, each with its capture stamp.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

STAMP_TOLERANCE_S = 1e-6

Frames = Mapping[str, tuple[float, np.ndarray, float]]
"""camera -> (capture stamp, frame, wall arrival time)."""
State = tuple[float, np.ndarray] | None
"""(capture stamp, joint positions), or None before the first joint state."""


@dataclass
class InferenceTiming:
    """Wall (perf_counter) times of one inference, for diagnostics and bench/bench_policy_node.py."""

    frame_arrival: float
    requested: float
    model_start: float = 0.0
    model_end: float = 0.0
    published: float | None = None
    """Set when this chunk served a tick that was waiting for it."""

    @property
    def model_s(self) -> float:
        return self.model_end - self.model_start

    @property
    def overhead_s(self) -> float | None:
        """Tick -> command published, minus model time (only for chunks that served a waiting tick)."""
        return None if self.published is None else self.published - self.requested - self.model_s


class ChunkQueue:
    """The actions of the newest chunk, each bound to the tick it is for."""

    def __init__(self, period: float):
        self.period = period
        self._queue: deque[tuple[float, np.ndarray]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def load(self, tick_time: float, chunk: np.ndarray) -> None:
        """Replace the queue with `chunk`, computed for the tick at `tick_time`."""
        self._queue = deque((tick_time + j * self.period, a) for j, a in enumerate(chunk))

    def clear(self) -> None:
        self._queue.clear()

    def take_for(self, tick_time: float) -> np.ndarray | None:
        """The action for the tick at `tick_time` (removed), or None; drops actions for earlier ticks."""
        while self._queue and self._queue[0][0] < tick_time - self.period / 2:
            self._queue.popleft()
        if self._queue and self._queue[0][0] <= tick_time + self.period / 2:
            return self._queue.popleft()[1]
        return None


def stale_input(frames: Frames, state: State, cameras: list[str], now: float, max_age: float) -> str | None:
    """Why the inputs are too old to act on at `now` (an input `max_age` old is too old), or None."""
    for cam in cameras:
        if cam not in frames:
            return f"no frame from camera '{cam}' yet"
        if now - frames[cam][0] >= max_age - STAMP_TOLERANCE_S:
            return f"camera '{cam}' frame is {now - frames[cam][0]:.3f} s old"
    if state is None:
        return "no joint state yet"
    if now - state[0] >= max_age - STAMP_TOLERANCE_S:
        return f"joint state is {now - state[0]:.3f} s old"
    return None


def captured_at(frames: Frames, state: State, cameras: list[str], tick_time: float) -> bool:
    """Every camera's frame and the joint state captured at `tick_time` (or later) have arrived."""
    stamps = [f[0] for f in frames.values()] + ([state[0]] if state is not None else [])
    return len(stamps) == len(cameras) + 1 and min(stamps) >= tick_time - STAMP_TOLERANCE_S
