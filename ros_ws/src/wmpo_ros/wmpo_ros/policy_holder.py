"""Owns the policy a robot runs, and swaps in new ones without touching the control loop.

A new policy is loaded into a *second* instance and verified off the control path (the loader's
own checks, e.g. a VLA checkpoint's hashes, dtypes, finite weights and no symlinks; then a probe
inference on an observation of the robot's shapes: it must not fail, a VLA's logits must be
finite, and the chunk must have the robot's shape and finite values); only then is it staged, and
the swap is a reference exchange at the next episode boundary, so no tick is ever missed or served
by a half-loaded model. The previous policy is kept for rollback. `load_verified` is that whole
check, shared by the policy node and `wmpo policy verify`.

    holder = PolicyHolder(robot_config)
    candidate = holder.load("checkpoints/v7")      # slow: load + verify, any thread
    holder.stage(candidate)                        # active from the next episode
    active = holder.begin_episode()                # at the boundary: swap, reset, return active
    holder.rollback()                              # stage the previous version again
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from wmpo_core.policy import Observation, Policy, PolicyLoadError, load_policy
from wmpo_core.robot_config import RobotConfig


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    spec: str
    version: str
    loaded_at: float
    """Unix time the load finished."""


def probe_observation(config: RobotConfig) -> Observation:
    """An observation with the robot's shapes (grey frames, joints mid-range) for verification.

    `extra["probe"]` is True, so a stateful backend (e.g. replay) can tell it from an episode.
    """
    return Observation(
        images={c.name: np.full(c.shape, 127, dtype=np.uint8) for c in config.cameras},
        state=np.array([(j.lower + j.upper) / 2 for j in config.joints], dtype=np.float64),
        instruction=config.tasks[0],
        stamp=0.0,
        extra={"probe": True},
    )


def verify_policy(policy: Policy, config: RobotConfig, spec: str = "") -> None:
    """Raise PolicyLoadError unless `policy` returns finite (K, action_dim) chunks for `config`
    on a probe observation; any failure of the probe inference (e.g. non-finite logits) refuses it."""
    name = spec or type(policy).__name__
    if not isinstance(policy, Policy):
        raise PolicyLoadError(f"{name}: does not implement the Policy protocol")
    if not isinstance(policy.version, str) or not policy.version:
        raise PolicyLoadError(f"{name}: has no version string")
    if not isinstance(policy.chunk_size, int) or policy.chunk_size < 1:
        raise PolicyLoadError(f"{name}: chunk_size must be a positive int, got {policy.chunk_size!r}")
    try:
        policy.reset()
        chunk = np.asarray(policy.predict_chunk(probe_observation(config)))
        policy.reset()
    except Exception as exc:  # whatever the backend raises, the candidate is refused with the reason
        raise PolicyLoadError(f"{name}: probe inference failed: {exc}") from exc
    if chunk.ndim != 2 or chunk.shape[1] != config.action.dim or not 1 <= chunk.shape[0] <= policy.chunk_size:
        raise PolicyLoadError(
            f"{name}: predict_chunk returned shape {chunk.shape}, expected (1..{policy.chunk_size}, "
            f"{config.action.dim}) "
            f"for robot config '{config.name}'"
        )
    if not np.all(np.isfinite(chunk)):
        raise PolicyLoadError(f"{name}: predict_chunk returned non-finite actions on a probe observation")


def load_verified(
    spec: str, config: RobotConfig, loader: Callable[[str, RobotConfig], Policy] = load_policy
) -> LoadedPolicy:
    """Load `spec` into a new instance and verify it: exactly the check a robot runs before a hot-swap."""
    if not spec:
        raise PolicyLoadError("no policy given (empty spec)")
    policy = loader(spec, config)
    verify_policy(policy, config, spec)
    return LoadedPolicy(policy=policy, spec=spec, version=str(policy.version), loaded_at=time.time())


class PolicyHolder:
    """Thread-safe: `load` runs anywhere; the policy node calls `begin_episode` between episodes."""

    def __init__(self, config: RobotConfig, loader: Callable[[str, RobotConfig], Policy] = load_policy):
        self.config = config
        self._loader = loader
        self._lock = threading.Lock()
        self._active: LoadedPolicy | None = None
        self._staged: LoadedPolicy | None = None
        self._previous: LoadedPolicy | None = None

    @property
    def active(self) -> LoadedPolicy | None:
        return self._active

    @property
    def staged(self) -> LoadedPolicy | None:
        return self._staged

    @property
    def previous(self) -> LoadedPolicy | None:
        return self._previous

    def load(self, spec: str) -> LoadedPolicy:
        """Load `spec` into a new instance and verify it (`load_verified`).

        Changes nothing that is running."""
        return load_verified(spec, self.config, self._loader)

    def verify(self, policy: Policy, spec: str = "") -> None:
        """`verify_policy` for this robot."""
        verify_policy(policy, self.config, spec)

    def stage(self, candidate: LoadedPolicy) -> None:
        """Make `candidate` the policy of the next episode (replaces any earlier staged one)."""
        with self._lock:
            self._staged = candidate

    def swap(self, candidate: LoadedPolicy) -> LoadedPolicy | None:
        """Make `candidate` active now; returns the policy it replaces. Call only between episodes."""
        with self._lock:
            previous, self._active = self._active, candidate
            if previous is not None:
                self._previous = previous
            if self._staged is candidate:
                self._staged = None
            return previous

    def begin_episode(self) -> LoadedPolicy | None:
        """The episode boundary: swap in the staged policy if any, reset the active one."""
        with self._lock:
            if self._staged is not None:
                if self._active is not None:
                    self._previous = self._active
                self._active, self._staged = self._staged, None
            active = self._active
        if active is not None:
            active.policy.reset()
        return active

    def rollback(self) -> LoadedPolicy:
        """Stage the previous policy again (active from the next episode)."""
        with self._lock:
            if self._previous is None:
                raise PolicyLoadError("no previous policy to roll back to")
            self._staged = self._previous
            return self._previous
