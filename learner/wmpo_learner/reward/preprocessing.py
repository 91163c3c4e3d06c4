"""The one frame preprocessing of the reward model, used by training and by scoring alike.

`preprocess` = the shared `wmpo_core.image_ops.resize_frames` to the model's input size, then
per-channel normalization. It works frame by frame, so preprocessing a whole episode and then
cutting windows gives exactly the same pixels as preprocessing each clip; and since
`resize_frames` returns frames already at the target size unchanged, applying it to frames that
were resized beforehand (the training cache) is also identical.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from wmpo_core.image_ops import resize_frames

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The statistics VideoMAE checkpoints (MCG-NJU/videomae-*) were pretrained with."""


class PreprocessConfig(BaseModel):
    """Everything needed to turn stored frames into model input; saved with every checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: str
    """Camera (robot config name) the clips are taken from."""
    image_size: int = Field(gt=0)
    num_frames: int = Field(ge=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    short_episode_padding: Literal["repeat_first_frame"] = "repeat_first_frame"
    """How an episode shorter than one window is filled (see `windows`)."""


def as_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Accept numpy or torch (any device) (..., H, W, C) uint8 frames; return numpy."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected (..., H, W, C) uint8 frames with C = 1 or 3, got {frames.shape} {frames.dtype}"
        )
    return frames


def preprocess(frames: np.ndarray | torch.Tensor, spec: PreprocessConfig) -> torch.Tensor:
    """(..., H, W, C) uint8 RGB (or mono) -> (..., 3, S, S) float32, normalized, on the CPU."""
    frames = resize_frames(as_uint8_frames(frames), spec.image_size)
    if frames.shape[-1] == 1:  # mono cameras: VideoMAE takes three channels
        frames = np.repeat(frames, 3, axis=-1)
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32)
    std = torch.tensor(spec.std, dtype=torch.float32)
    pixels = (pixels - mean) / std
    return pixels.movedim(-1, -3).contiguous()
