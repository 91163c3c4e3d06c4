"""Pixel-space, action-conditioned video world model (WMPO), built on diffusers.

`WorldModel` (model.py) bundles the per-frame VAE, the spatio-temporal transformer and the
flow-matching sampler; `imagine.imagine` rolls a policy out inside it. Training is
`wmpo wm-train` / `wmpo align` (train.py, trainer.py), evaluation `wmpo wm-eval` (evaluate.py).

The names below are imported on first use (PEP 562): importing a light submodule such as
`world_model.config` or `world_model.train` must not pay for diffusers (5 s of every world-model
command's start-up, `wmpo <command> --help` included).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import PRESETS, TrainConfig, WorldModelConfig, load_preset
    from .imagine import ChunkSamplingPolicy, ImaginedRollouts
    from .model import WorldModel, WorldModelLoadError
    from .transformer import ActionConditionedVideoTransformer

_SUBMODULE_OF = {
    "PRESETS": "config",
    "TrainConfig": "config",
    "WorldModelConfig": "config",
    "load_preset": "config",
    "ChunkSamplingPolicy": "imagine",
    "ImaginedRollouts": "imagine",
    "WorldModel": "model",
    "WorldModelLoadError": "model",
    "ActionConditionedVideoTransformer": "transformer",
}

__all__ = [  # noqa: RUF022 (the order of _SUBMODULE_OF)
    "PRESETS",
    "TrainConfig",
    "WorldModelConfig",
    "load_preset",
    "ChunkSamplingPolicy",
    "ImaginedRollouts",
    "WorldModel",
    "WorldModelLoadError",
    "ActionConditionedVideoTransformer",
]


def __getattr__(name: str) -> Any:
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SUBMODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
