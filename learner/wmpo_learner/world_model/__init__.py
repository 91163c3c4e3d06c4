"""Pixel-space, action-conditioned video world model (WMPO), built on diffusers.

`WorldModel` (model.py) bundles the per-frame VAE, the spatio-temporal transformer and the
flow-matching sampler; `imagine` (imagine.py) rolls a policy out inside it. Training is
`wmpo wm-train` / `wmpo align` (train.py, trainer.py), evaluation `wmpo wm-eval` (evaluate.py).
"""

from .config import PRESETS, TrainConfig, WorldModelConfig, load_preset
from .imagine import ChunkSamplingPolicy, ImaginedRollouts, imagine
from .model import WorldModel, WorldModelLoadError
from .transformer import ActionConditionedVideoTransformer

__all__ = [
    "PRESETS",
    "ActionConditionedVideoTransformer",
    "ChunkSamplingPolicy",
    "ImaginedRollouts",
    "TrainConfig",
    "WorldModel",
    "WorldModelConfig",
    "WorldModelLoadError",
    "imagine",
    "load_preset",
]
