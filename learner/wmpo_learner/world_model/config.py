"""World-model and training configurations, with the two named presets.

`tiny` trains from scratch in minutes on two CPU cores (the demo and CI configuration);
`xl` is the realistic configuration of the WMPO paper (SDXL VAE at 256 px, a transformer with
STDiT3-XL/2's depth, width and heads: 1.34 B parameters here, as every block has its own adaLN
projection) and needs GPUs. A config is plain JSON inside every checkpoint,
so a checkpoint is rebuilt from its own files, never from the preset of the current code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VAEConfig(_Strict):
    """Either a pretrained diffusers VAE (`pretrained`, e.g. an SDXL VAE) or a config built from scratch."""

    pretrained: str | None = None
    """`AutoencoderKL.from_pretrained` id or path; frozen unless `vae_steps` > 0."""
    subfolder: str | None = None
    config: dict[str, Any] | None = None
    """`AutoencoderKL.from_config` kwargs; the VAE is trained by `wmpo wm-train`."""

    @model_validator(mode="after")
    def _one_source(self) -> VAEConfig:
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("vae needs exactly one of 'pretrained' (a diffusers id or path) or 'config'")
        return self


class TransformerConfig(_Strict):
    """Hyper-parameters of `ActionConditionedVideoTransformer` (latent size and action dim come from
    elsewhere)."""

    patch_size: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    """Number of (spatial block, temporal block) pairs."""
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    qk_norm: str | None = "rms_norm"

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        return self


class WorldModelConfig(_Strict):
    """Everything that defines what a world model computes (stored in its checkpoint)."""

    preset: str = "custom"
    resolution: int = Field(64, ge=16)
    """Square pixel size the model sees and generates; frames are resized with `resize_frames`."""
    context_frames: int = Field(4, ge=1)
    predicted_frames: int = Field(8, ge=1)
    context_noise_timestep: float = Field(15.0, ge=0, lt=1000)
    """Noise level of context latents during training, in scheduler timesteps (of 1000): 15 gives
    x = 0.985·x0 + 0.015·ε. At inference the context is clean but carries this timestep."""
    sampling_steps: int = Field(30, ge=1)
    """Default number of flow-matching Euler steps per generated window (no CFG)."""
    timestep_shift: float = Field(3.0, gt=0)
    """Moves noise levels toward pure noise, in training and sampling alike: σ -> s·σ / (1 + (s-1)·σ)
    (SD3's shift; the WMPO code trains with OpenSora's equivalent `use_timestep_transform`). Where
    the future goes — and so what the action does — is decided at high noise; at low noise the
    noisy frame itself shows where things are. Unshifted logit-normal training draws σ > 0.95 for
    one window in 600, while sampling starts at σ = 1; with s = 3 it is one in 30, and 4 of 8
    sampling steps start at σ >= 0.8. 1 = no shift."""
    vae: VAEConfig
    transformer: TransformerConfig = TransformerConfig()

    @property
    def window(self) -> int:
        return self.context_frames + self.predicted_frames


class TrainConfig(_Strict):
    """Optimisation settings; a preset gives defaults, command-line flags override them."""

    steps: int = Field(2000, ge=0)
    """Transformer (latent diffusion) optimiser steps."""
    batch_size: int = Field(16, ge=1)
    """Windows per step per process."""
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    vae_steps: int = Field(1500, ge=0)
    """VAE optimiser steps before the transformer stage (0 = keep the VAE as loaded)."""
    vae_batch_size: int = Field(32, ge=1)
    vae_lr: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    """Training noise levels are drawn logit-normal(mean, std), as in SD3 / OpenSora."""
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)
    seed: int = 0


PRESETS: dict[str, tuple[WorldModelConfig, TrainConfig]] = {
    "tiny": (
        WorldModelConfig(
            preset="tiny",
            resolution=64,
            sampling_steps=10,
            vae=VAEConfig(
                config={
                    "in_channels": 3,
                    "out_channels": 3,
                    "down_block_types": ["DownEncoderBlock2D"] * 3,
                    "up_block_types": ["UpDecoderBlock2D"] * 3,
                    "block_out_channels": [16, 32, 64],
                    "layers_per_block": 1,
                    "latent_channels": 4,
                    "norm_num_groups": 16,
                    "sample_size": 64,
                }
            ),
            # 64 px -> 4x16x16 latents -> 4x4 = 16 tokens per frame (patch 4), 192 per window;
            # 2.1 M parameters.
            transformer=TransformerConfig(patch_size=4, hidden_size=128, depth=4, num_heads=4, qk_norm=None),
        ),
        TrainConfig(steps=3000, batch_size=8, vae_steps=400, vae_batch_size=8, checkpoint_every=500),
    ),
    "xl": (
        WorldModelConfig(
            preset="xl",
            resolution=256,
            sampling_steps=30,
            vae=VAEConfig(pretrained="stabilityai/sdxl-vae"),
            transformer=TransformerConfig(patch_size=2, hidden_size=1152, depth=28, num_heads=16),
        ),
        TrainConfig(
            steps=20000,
            batch_size=16,
            lr=1e-4,
            warmup_steps=1000,
            grad_clip=1.0,
            ema_decay=0.99,
            vae_steps=0,
            gradient_checkpointing=True,
            checkpoint_every=1000,
            num_workers=4,
        ),
    ),
}


def load_preset(name_or_path: str) -> tuple[WorldModelConfig, TrainConfig]:
    """A preset by name, or a JSON file {"model": {...}, "train": {...}} (train optional)."""
    if name_or_path in PRESETS:
        model, train = PRESETS[name_or_path]
        return model.model_copy(deep=True), train.model_copy(deep=True)
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"world-model config '{name_or_path}' is neither a preset ({', '.join(PRESETS)}) nor a JSON file"
        )
    try:
        data = json.loads(path.read_text())
        return WorldModelConfig.model_validate(data["model"]), TrainConfig.model_validate(
            data.get("train", {})
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a world-model config ({exc})") from None


ALIGN_OVERRIDES: dict[str, dict[str, Any]] = {
    # Fine-tuning: fewer steps, the paper's lr 1e-4, a short warm-up; the tiny VAE adapts briefly
    # to the new rollouts (a pretrained SDXL VAE stays frozen).
    "tiny": {"steps": 1000, "lr": 1e-4, "warmup_steps": 50, "vae_steps": 100, "vae_lr": 2e-4},
    "xl": {"steps": 5000, "lr": 1e-4, "warmup_steps": 1000, "vae_steps": 0},
}


def align_train_config(model: WorldModelConfig) -> TrainConfig:
    """Default optimisation settings for Policy Behavior Alignment of a model of this preset."""
    _, base = PRESETS.get(model.preset, PRESETS["tiny"])
    return base.model_copy(update=ALIGN_OVERRIDES.get(model.preset, ALIGN_OVERRIDES["tiny"]), deep=True)
