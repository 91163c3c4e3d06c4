"""The action safety filter: what may reach an arm, given what the policy proposed.

The policy node applies it to every command it publishes and `wmpo eval` applies it in the
simulator, so a policy is evaluated under exactly the limits it runs under on the robot.

Rules, per action dim (see `ActionDim`):
- a proposal with any non-finite value is dropped whole and the arm holds;
- every dim is clamped to [low, high];
- `absolute` dims (setpoints) move at most `max_step_change` per tick from the previous command;
- `delta` dims (increments) are clamped to +-`max_step_change`;
- holding means absolute dims keep the previous command and delta dims are 0. Holding never
  extrapolates and never commands zeros to a position-controlled dim; with no previous command
  there is nothing safe to send, so `hold()` returns None and the caller sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wmpo_core.robot_config import ActionSpec


@dataclass(frozen=True)
class SafetyEvents:
    """What the filter changed in one proposal (counted in the policy node's diagnostics)."""

    dropped_non_finite: bool = False
    clamped_dims: tuple[str, ...] = ()
    rate_limited_dims: tuple[str, ...] = ()

    @property
    def modified(self) -> bool:
        return self.dropped_non_finite or bool(self.clamped_dims) or bool(self.rate_limited_dims)


@dataclass
class SafetyFilter:
    """Stateful filter for one arm: remembers the last command it let through."""

    spec: ActionSpec
    last_command: np.ndarray | None = None
    _low: np.ndarray = field(init=False, repr=False)
    _high: np.ndarray = field(init=False, repr=False)
    _step: np.ndarray = field(init=False, repr=False)
    _absolute: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._low = np.array([d.low for d in self.spec.dims], dtype=np.float64)
        self._high = np.array([d.high for d in self.spec.dims], dtype=np.float64)
        self._step = np.array([d.max_step_change for d in self.spec.dims], dtype=np.float64)
        self._absolute = np.array([d.kind == "absolute" for d in self.spec.dims])
        if self.last_command is not None:
            self.last_command = self._checked(self.last_command, "last_command")

    def reset(self, reference: np.ndarray | None = None) -> None:
        """Forget the previous command. `reference` (e.g. the measured joint positions of a
        joint_position arm) becomes the point the first command is rate-limited against."""
        self.last_command = (
            None
            if reference is None
            else np.clip(self._checked(reference, "reference"), self._low, self._high)
        )

    def hold(self) -> np.ndarray | None:
        """The hold command: absolute dims keep the previous command, delta dims 0."""
        if self.last_command is None:
            return None
        held = np.where(self._absolute, self.last_command, 0.0)
        self.last_command = held
        return held.copy()

    def filter(self, proposal: np.ndarray) -> tuple[np.ndarray | None, SafetyEvents]:
        """Make `proposal` safe. Returns (command or None when there is nothing safe to send, events)."""
        proposal = np.asarray(proposal, dtype=np.float64)
        if proposal.shape != (self.spec.dim,):
            raise ValueError(
                f"action has shape {proposal.shape}, the action space has {self.spec.dim} dims "
                f"{self.spec.names}"
            )
        if not np.all(np.isfinite(proposal)):
            return self.hold(), SafetyEvents(dropped_non_finite=True)
        command = np.clip(proposal, self._low, self._high)
        clamped = command != proposal
        limited = np.zeros(self.spec.dim, dtype=bool)
        delta_step = np.clip(command, -self._step, self._step)
        limited |= ~self._absolute & (delta_step != command)
        command = np.where(self._absolute, command, delta_step)
        if self.last_command is not None:
            lo, hi = self.last_command - self._step, self.last_command + self._step
            rate = np.clip(command, lo, hi)
            limited |= self._absolute & (rate != command)
            command = np.where(self._absolute, rate, command)
            command = np.clip(
                command, self._low, self._high
            )  # a previous command outside the limits is never followed out
        self.last_command = command
        names = self.spec.names
        events = SafetyEvents(
            clamped_dims=tuple(n for n, c in zip(names, clamped, strict=True) if c),
            rate_limited_dims=tuple(n for n, c in zip(names, limited, strict=True) if c),
        )
        return command.copy(), events

    def _checked(self, values: np.ndarray, what: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != (self.spec.dim,) or not np.all(np.isfinite(values)):
            raise ValueError(f"{what} must be {self.spec.dim} finite values, got {values}")
        return values
