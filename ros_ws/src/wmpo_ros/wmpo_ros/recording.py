"""An episode while the recorder node records it, free of ROS: the cadence of its steps (frames
dropped, late, skipped; holds; rates) and how it is labelled and summarised when it ends. The
recorder node keeps the ROS side (subscriptions, services, the writer thread); the rules are here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from wmpo_ros.step_sync import SyncedStep


@dataclass
class CadenceReport:
    """How well an episode kept the control rate; stored in the episode's `extra["cadence"]`."""

    steps: int = 0
    control_rate_hz: float = 0.0
    effective_hz: float = 0.0
    """Steps per second of ROS time (sim time in simulation)."""
    wall_hz: float = 0.0
    frames_received: dict[str, int] = field(default_factory=dict)
    dropped_frames: dict[str, int] = field(default_factory=dict)
    """Steps that had no new frame from this camera (the previous frame was recorded again)."""
    late_frames: dict[str, int] = field(default_factory=dict)
    """Steps whose frame was more than 1.5 control periods older than the command."""
    skipped_frames: dict[str, int] = field(default_factory=dict)
    """Frames received during the episode but never recorded (normal when the camera is faster)."""
    unsettled_steps: int = 0
    """Steps recorded on the settle timeout, before every input had caught up."""
    unpaired_commands: int = 0
    holds: int = 0
    """Steps whose command was a hold, not a chosen action (their indices: extra["hold_steps"])."""
    max_write_queue: int = 0

    def line(self) -> str:
        frames = ", ".join(
            f"{cam}: {self.dropped_frames[cam]} dropped / {self.late_frames[cam]} late / "
            f"{self.frames_received[cam]} received"
            for cam in self.frames_received
        )
        return (
            f"{self.steps} steps at {self.effective_hz:.2f} Hz (target {self.control_rate_hz:g}, "
            f"wall {self.wall_hz:.2f} Hz); {frames}; {self.holds} holds, {self.unsettled_steps} unsettled, "
            f"{self.unpaired_commands} unpaired commands, "
            f"write queue max {self.max_write_queue}"
        )


@dataclass
class EpisodeInProgress:
    """The episode being recorded: what its steps were like, and how it ends up labelled."""

    index: int
    started_ns: int = 0
    """Wall time (ns) recording started; commands published before it are not part of the episode."""
    success_seen: bool = False
    label: tuple[bool, str] | None = None
    steps: int = 0
    first: tuple[float, float] | None = None
    """(ROS time, wall time) of the first step."""
    last: tuple[float, float] | None = None
    last_frame_times: dict[str, float] = field(default_factory=dict)
    recorded_frames: dict[str, set[float]] = field(default_factory=dict)
    cadence: CadenceReport = field(default_factory=CadenceReport)
    versions: list[str] = field(default_factory=list)
    hold_steps: list[int] = field(default_factory=list)
    dry_run_seen: bool = False

    @classmethod
    def begin(cls, index: int, cameras: list[str], control_rate_hz: float) -> EpisodeInProgress:
        """A new episode, started now."""
        cadence = CadenceReport(
            control_rate_hz=control_rate_hz,
            frames_received=dict.fromkeys(cameras, 0),
            dropped_frames=dict.fromkeys(cameras, 0),
            late_frames=dict.fromkeys(cameras, 0),
            skipped_frames=dict.fromkeys(cameras, 0),
        )
        return cls(
            index=index,
            started_ns=time.time_ns(),
            cadence=cadence,
            recorded_frames={c: set() for c in cameras},
        )

    def add_step(self, step: SyncedStep, period: float, policy_version: str | None) -> bool:
        """Account for one recorded step (its frames' cadence, a hold, the policy version it ran
        under); returns whether it is the episode's first step."""
        cadence = self.cadence
        for cam, stamp in step.image_times.items():
            if cam in self.last_frame_times and stamp <= self.last_frame_times[cam]:
                cadence.dropped_frames[cam] += 1
            if step.time - stamp > 1.5 * period:
                cadence.late_frames[cam] += 1
            self.last_frame_times[cam] = stamp
            self.recorded_frames[cam].add(stamp)
        cadence.unsettled_steps += not step.settled
        if step.hold:
            cadence.holds += 1
            self.hold_steps.append(self.steps)
        wall = time.time()
        first = self.first is None
        if first:
            self.first = (step.time, wall)
        self.last = (step.time, wall)
        if policy_version and (not self.versions or self.versions[-1] != policy_version):
            self.versions.append(policy_version)
        self.steps += 1
        return first

    def outcome(self, success_available: bool) -> tuple[bool | None, str | None]:
        """(success, labelled by): a human label wins, else the env's success signal if there is one."""
        if self.label is not None:
            return self.label
        if success_available:
            return self.success_seen, "env"
        return None, None

    def summary(
        self, reason: str, unpaired_commands: int, policy_source: bool, announced_version: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """(`extra` metadata, policy version) of the ended episode. The version is the one it ran
        under: the policy node announces it when the episode starts, and the announcement may reach
        the recorder after the first command, hence `announced_version` when no step saw one."""
        cadence = self.cadence
        cadence.steps = self.steps
        if self.first and self.last and self.steps > 1:
            cadence.effective_hz = (self.steps - 1) / max(self.last[0] - self.first[0], 1e-9)
            cadence.wall_hz = (self.steps - 1) / max(self.last[1] - self.first[1], 1e-9)
        for cam, received in cadence.frames_received.items():
            cadence.skipped_frames[cam] = max(0, received - len(self.recorded_frames[cam]))
        cadence.unpaired_commands = unpaired_commands
        extra: dict[str, Any] = {"cadence": cadence.__dict__, "ended_by": reason}
        if self.hold_steps:
            extra["hold_steps"] = self.hold_steps
        if len(set(self.versions)) > 1:
            extra["policy_versions"] = self.versions
        version = (self.versions[0] if self.versions else announced_version) if policy_source else None
        return extra, version
