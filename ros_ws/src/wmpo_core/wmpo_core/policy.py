"""Policy I/O: the one interface every policy backend implements, and the loader.

The policy node, `wmpo eval`, imagination rollouts and the hot-swap path all talk to policies
through `Policy`, so a checkpoint behaves the same on the robot and in the learner. Backends
register a loader for the checkpoint formats they understand; `load_policy` picks by looking at
the checkpoint directory (or a `scheme:` spec such as `scripted:` for tests and demos).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from wmpo_core.robot_config import RobotConfig


@dataclass
class Observation:
    """What a policy sees at one control tick, in robot-config terms."""

    images: dict[str, np.ndarray]
    """camera name -> (H, W, C) uint8 RGB frame, as stored in the episode store."""
    state: np.ndarray
    """Joint values in config joint order and units."""
    instruction: str
    stamp: float = 0.0
    """Capture time of the newest input (unix seconds)."""
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """A policy returns a chunk of K actions per call; the caller executes them one per tick."""

    version: str
    """Reported by the policy node and stamped into every recorded episode."""
    chunk_size: int

    def reset(self) -> None:
        """Called at the start of each episode."""

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        """(K, action_dim) float64 actions in the robot config's action units (not clamped)."""


class PolicyLoadError(ValueError):
    """A checkpoint that cannot be loaded for this robot; the message says why."""


PolicyLoader = Callable[[str, RobotConfig], Policy]
_SCHEMES: dict[str, PolicyLoader] = {}
_DIRECTORY_FORMATS: list[tuple[Callable[[Path], bool], PolicyLoader]] = []


def register_scheme(scheme: str, loader: PolicyLoader) -> None:
    """`load_policy("<scheme>:<rest>")` calls `loader("<rest>", robot_config)`."""
    _SCHEMES[scheme] = loader


def register_directory_format(detect: Callable[[Path], bool], loader: PolicyLoader) -> None:
    """Checkpoint directories for which `detect(path)` is true are loaded with `loader(path, cfg)`."""
    _DIRECTORY_FORMATS.append((detect, loader))


def _register_builtin_backends() -> None:
    # Imported here, not at module top, so that a backend's heavy dependencies load only when used.
    import importlib

    for module in ("wmpo_core.vla.checkpoint", "wmpo_core.policies"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def load_policy(spec: str | Path, robot_config: RobotConfig) -> Policy:
    """Load a policy for `robot_config` from a checkpoint directory or a `scheme:` spec."""
    loader, argument = resolve_policy_spec(spec)
    return loader(argument, robot_config)


def resolve_policy_spec(spec: str | Path) -> tuple[PolicyLoader, str]:
    """The loader of `spec` and its argument, without loading anything: a command checks its
    `--policy` with this before it brings an arm up. Raises PolicyLoadError naming the problem."""
    _register_builtin_backends()
    text = str(spec)
    scheme, sep, rest = text.partition(":")
    if sep and scheme in _SCHEMES:
        return _SCHEMES[scheme], rest
    path = Path(text)
    if not path.exists():
        raise PolicyLoadError(
            f"policy '{text}' is neither an existing checkpoint directory nor a known scheme "
            f"({', '.join(s + ':' for s in sorted(_SCHEMES)) or 'none registered'})"
        )
    if not path.is_dir():
        raise PolicyLoadError(f"policy checkpoint '{text}' must be a directory")
    for detect, loader in _DIRECTORY_FORMATS:
        if detect(path):
            return loader, str(path)
    raise PolicyLoadError(f"'{text}' is not a checkpoint format this installation can load")
