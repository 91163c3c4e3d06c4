"""The world model: per-frame VAE + action-conditioned video transformer + flow-matching sampler.

`WorldModel` owns the pieces and the conventions between them:
- pixels: uint8 (..., H, W, 3) frames at any resolution, resized with `wmpo_core.image_ops.resize_frames`
  to `config.resolution` (the one resize every consumer uses);
- latents: VAE posterior means, shifted and scaled by the VAE's `shift_factor` / `scaling_factor`;
- actions: robot units in, normalized to [-1, 1] with the `ActionNormalizer` stored in the checkpoint;
- rectified flow in diffusers' convention (`FlowMatchEulerDiscreteScheduler`):
  x_sigma = (1-sigma)*x0 + sigma*eps, timestep = 1000*sigma, the transformer predicts the velocity eps - x0.

A window is `context_frames` frames the model conditions on followed by `predicted_frames` frames
it generates, one per action: predicted frame j results from action j.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.training_utils import compute_density_for_timestep_sampling
from torch import nn
from wmpo_core.checkpoint import CheckpointError, CheckpointFormat
from wmpo_core.image_ops import resize_frames
from wmpo_core.normalization import ActionNormalizer

from .config import WorldModelConfig
from .sampling import make_scheduler
from .transformer import ActionConditionedVideoTransformer

CHECKPOINT_FILE = "world_model.json"
CHECKPOINT_FORMAT = "wmpo_world_model"
CHECKPOINT_VERSION = 2  # 2: temporal blocks modulated by the frame conditioning; timestep_shift
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class WorldModelLoadError(CheckpointError, ValueError):
    """A directory that is not a loadable world-model checkpoint; the message says why."""


WEIGHT_DIRS = ("vae", "transformer", "scheduler")
"""The diffusers folders of a checkpoint; every file in them is hashed into the manifest."""
WM_FORMAT = CheckpointFormat(
    name=CHECKPOINT_FORMAT,
    version=CHECKPOINT_VERSION,
    manifest=CHECKPOINT_FILE,
    entries=(CHECKPOINT_FILE, *WEIGHT_DIRS),
    label="world-model checkpoint",
    error=WorldModelLoadError,
)


def build_vae(config: WorldModelConfig) -> AutoencoderKL:
    """The per-frame VAE: pretrained (e.g. SDXL) or a fresh one from the config."""
    spec = config.vae
    if spec.pretrained is not None:
        kwargs = {"subfolder": spec.subfolder} if spec.subfolder else {}
        return AutoencoderKL.from_pretrained(spec.pretrained, low_cpu_mem_usage=False, **kwargs)
    return AutoencoderKL.from_config(spec.config)


def latent_geometry(vae: AutoencoderKL, resolution: int) -> tuple[int, int]:
    """(latent channels, latent side) the VAE produces for `resolution`-pixel frames."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(
            f"resolution {resolution} is not divisible by the VAE's downsampling factor {factor}"
        )
    return vae.config.latent_channels, resolution // factor


def build_transformer(
    config: WorldModelConfig, vae: AutoencoderKL, action_dim: int
) -> ActionConditionedVideoTransformer:
    channels, side = latent_geometry(vae, config.resolution)
    return ActionConditionedVideoTransformer(
        in_channels=channels, sample_size=side, action_dim=action_dim, **config.transformer.model_dump()
    )


class WorldModel(nn.Module):
    """An action-conditioned video world model bound to one robot's camera and action space."""

    def __init__(
        self,
        config: WorldModelConfig,
        vae: AutoencoderKL,
        transformer: ActionConditionedVideoTransformer,
        normalizer: ActionNormalizer,
        camera: str,
        robot_config_name: str,
        robot_config_hash: str,
        provenance: dict[str, Any] | None = None,
    ):
        super().__init__()
        if transformer.config.action_dim != normalizer.dim:
            raise ValueError(
                f"transformer takes {transformer.config.action_dim}-D actions, normalizer has "
                f"{normalizer.dim}"
            )
        self.config = config
        self.vae = vae
        self.transformer = transformer
        self.normalizer = normalizer
        self.camera = camera
        self.robot_config_name = robot_config_name
        self.robot_config_hash = robot_config_hash
        self.provenance = dict(provenance or {})
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=config.timestep_shift)
        self._schedulers: dict[str, SchedulerMixin] = {}

    # ------------------------------------------------------------------ construction and checkpoints

    @classmethod
    def from_config(
        cls,
        config: WorldModelConfig,
        normalizer: ActionNormalizer,
        camera: str,
        robot_config_name: str,
        robot_config_hash: str,
    ) -> WorldModel:
        vae = build_vae(config)
        return cls(
            config,
            vae,
            build_transformer(config, vae, normalizer.dim),
            normalizer,
            camera,
            robot_config_name,
            robot_config_hash,
        )

    def save(self, directory: str | Path) -> Path:
        """Write a self-contained checkpoint (diffusers safetensors folders + JSON manifest with the
        sha256 of every file). Weights holding NaN or infinity are refused before anything is written."""
        directory = Path(directory)
        for part in (self.vae, self.transformer):
            weights = part.state_dict()
            WM_FORMAT.check_weights(weights, weights, source=f"{directory}: refusing to save")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CHECKPOINT_FILE).unlink(missing_ok=True)  # incomplete until rewritten last
        self.vae.save_pretrained(directory / "vae")
        self.transformer.save_pretrained(directory / "transformer")
        self.scheduler.save_pretrained(directory / "scheduler")
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "config": self.config.model_dump(mode="json"),
            "camera": self.camera,
            "robot_config_name": self.robot_config_name,
            "robot_config_hash": self.robot_config_hash,
            "action_normalizer": self.normalizer.to_dict(),
            "action_normalizer_hash": self.normalizer.content_hash,
            "provenance": self.provenance,
            "sha256": WM_FORMAT.file_hashes(directory, WEIGHT_DIRS),
        }
        WM_FORMAT.write_manifest(directory, meta)  # last: a readable manifest means a complete checkpoint
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> WorldModel:
        """Load and verify: no symlinked entries, this format and version, every file of the
        diffusers folders as hashed at save time (checkpoints written before hashes were recorded
        have none to check), finite weights."""
        directory = Path(directory)
        meta_path = directory / CHECKPOINT_FILE
        WM_FORMAT.check_entries(directory)
        meta = WM_FORMAT.read_manifest(directory)
        WM_FORMAT.verify_file_hashes(directory, meta.get("sha256", {}))
        normalizer = ActionNormalizer.from_dict(meta["action_normalizer"])
        if normalizer.content_hash != meta.get("action_normalizer_hash"):
            raise WorldModelLoadError(f"{meta_path}: action normalizer does not match its recorded hash")
        config = WorldModelConfig.model_validate(meta["config"])
        for part in ("vae", "transformer"):
            if not (directory / part / "config.json").is_file():
                raise WorldModelLoadError(f"{directory}: checkpoint is missing its '{part}/' folder")
        # low_cpu_mem_usage=False: the default needs `accelerate`, which the stack does not require.
        vae = AutoencoderKL.from_pretrained(directory / "vae", low_cpu_mem_usage=False)
        transformer = ActionConditionedVideoTransformer.from_pretrained(
            directory / "transformer", low_cpu_mem_usage=False
        )
        for part in (vae, transformer):
            weights = part.state_dict()
            WM_FORMAT.check_weights(weights, weights, source=str(directory))
        model = cls(
            config,
            vae,
            transformer,
            normalizer,
            meta["camera"],
            meta["robot_config_name"],
            meta["robot_config_hash"],
            meta.get("provenance"),
        )
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        channels, side = latent_geometry(self.vae, self.config.resolution)
        return channels, side, side

    # ------------------------------------------------------------------ pixels, latents, actions

    def prepare_frames(self, frames: np.ndarray) -> np.ndarray:
        """Any-resolution uint8 (..., H, W, 3) -> (..., R, R, 3) at the model's resolution."""
        return resize_frames(np.asarray(frames), self.config.resolution)

    def to_pixels(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, R, R, 3) -> float (N, 3, R, R) in [-1, 1] on the model's device."""
        frames = torch.as_tensor(frames, device=self.device)
        return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    @staticmethod
    def to_uint8(pixels: torch.Tensor) -> np.ndarray:
        """float (N, 3, R, R) in [-1, 1] -> uint8 (N, R, R, 3)."""
        return (
            ((pixels.float().clamp(-1, 1) + 1.0) * 127.5)
            .round()
            .to(torch.uint8)
            .permute(0, 2, 3, 1)
            .cpu()
            .numpy()
        )

    def _latent_affine(self) -> tuple[float, float]:
        shift = self.vae.config.shift_factor
        return float(self.vae.config.scaling_factor), float(shift) if shift is not None else 0.0

    def encode(
        self,
        pixels: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunk: int = 64,
    ) -> torch.Tensor:
        """(N, 3, R, R) pixels in [-1, 1] -> (N, C, h, w) scaled latents (posterior mean unless `sample`)."""
        scale, shift = self._latent_affine()
        out = []
        for part in pixels.split(chunk):
            dist = self.vae.encode(part.to(self.vae.dtype)).latent_dist
            out.append(dist.sample(generator) if sample else dist.mode())
        return (torch.cat(out).float() - shift) * scale

    def decode(self, latents: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """(N, C, h, w) scaled latents -> (N, 3, R, R) pixels in [-1, 1]."""
        scale, shift = self._latent_affine()
        out = [
            self.vae.decode((part / scale + shift).to(self.vae.dtype)).sample for part in latents.split(chunk)
        ]
        return torch.cat(out).float()

    def normalize_actions(self, actions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Robot-unit actions (..., A) -> float32 tensor in [-1, 1] on the model's device."""
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape[-1] != self.normalizer.dim:
            raise ValueError(
                f"actions have {actions.shape[-1]} dims, this world model takes {self.normalizer.dim}"
            )
        return torch.as_tensor(self.normalizer.normalize(actions), dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ training objective

    def window_masks(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B, T) bool: True on predicted frames (conditioned on their action, scored by the loss)."""
        mask = torch.zeros(batch, self.config.window, dtype=torch.bool, device=device)
        mask[:, self.config.context_frames :] = True
        return mask

    def training_loss(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        denoiser: Denoiser | None = None,
        generator: torch.Generator | None = None,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> torch.Tensor:
        """Rectified-flow loss on one batch of windows.

        latents (B, T, C, h, w) clean; actions (B, T, A) normalized (context rows are ignored).
        Context latents get noise at `context_noise_timestep` (noisy-frame conditioning); predicted
        latents at a logit-normal sigma shifted by `timestep_shift`, one per window. The MSE to the
        velocity eps - x0 is taken on the predicted frames only. `denoiser` defaults to the
        transformer (pass the DDP wrapper when training).
        """
        denoiser = denoiser or self.transformer
        batch, frames = latents.shape[:2]
        if frames != self.config.window:
            raise ValueError(f"windows have {frames} frames, the model's window is {self.config.window}")
        predicted = self.window_masks(batch, latents.device)
        rng_device = generator.device if generator is not None else latents.device
        u = compute_density_for_timestep_sampling(
            "logit_normal",
            batch,
            logit_mean=logit_mean,
            logit_std=logit_std,
            device=rng_device,
            generator=generator,
        ).to(latents.device)
        shift = self.config.timestep_shift
        sigma = shift * u / (1.0 + (shift - 1.0) * u)  # the shift the sampler applies to its own steps
        context_sigma = self.config.context_noise_timestep / self.scheduler.config.num_train_timesteps
        sigmas = torch.where(predicted, sigma[:, None], torch.full_like(sigma[:, None], context_sigma))
        noise = torch.randn(latents.shape, generator=generator, device=rng_device).to(latents.device)
        s = sigmas[:, :, None, None, None]
        noisy = (1.0 - s) * latents + s * noise
        velocity = denoiser(noisy, sigmas * self.scheduler.config.num_train_timesteps, actions, predicted)
        target = noise - latents
        error = (velocity.float() - target) ** 2
        return error[predicted].mean()

    # ------------------------------------------------------------------ generation

    def context_from_frames(self, frames: np.ndarray) -> torch.Tensor:
        """Real first frames uint8 (B, H, W, 3), any resolution -> (B, context_frames, C, h, w):
        each frame encoded once and repeated to fill the context (the start of every rollout)."""
        latents = self.encode(self.to_pixels(self.prepare_frames(frames)))
        return latents[:, None].expand(-1, self.config.context_frames, -1, -1, -1).contiguous()

    @torch.no_grad()
    def predict_window(
        self,
        context: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        sampling_steps: int | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Generate `predicted_frames` latents after `context` (B, C_ctx, C, h, w), one per normalized
        action in `actions` (B, P, A). Clean context latents carry the training context timestep.
        `sampler` names the ODE solver (`sampling.SAMPLERS`; default the model's Euler scheduler)."""
        cfg = self.config
        batch = context.shape[0]
        if context.shape[1] != cfg.context_frames or actions.shape[:2] != (batch, cfg.predicted_frames):
            raise ValueError(
                f"need context (B, {cfg.context_frames}, ...) and actions (B, {cfg.predicted_frames}, A); "
                f"got {tuple(context.shape)} and {tuple(actions.shape)}"
            )
        device = context.device
        scheduler = self._scheduler(sampler)
        scheduler.set_timesteps(sampling_steps or cfg.sampling_steps, device=device)
        # The model is conditioned on the exact sigma the solver steps from (multistep schedulers round
        # their `timesteps` to integers; their `sigmas` are exact).
        model_timesteps = scheduler.sigmas.to(device) * scheduler.config.num_train_timesteps
        shape = (batch, cfg.predicted_frames, *context.shape[2:])
        x = torch.randn(
            shape, generator=generator, device=generator.device if generator is not None else device
        ).to(device)
        all_actions = torch.cat(
            [actions.new_zeros(batch, cfg.context_frames, actions.shape[-1]), actions], dim=1
        )
        mask = self.window_masks(batch, device)
        context_t = torch.full((batch, cfg.context_frames), cfg.context_noise_timestep, device=device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        for i, t in enumerate(scheduler.timesteps):
            timesteps = torch.cat([context_t, model_timesteps[i].expand(batch, cfg.predicted_frames)], dim=1)
            with autocast:
                velocity = self.transformer(torch.cat([context, x], dim=1), timesteps, all_actions, mask)
            x = scheduler.step(velocity[:, cfg.context_frames :].float(), t, x).prev_sample
        return x

    def _scheduler(self, sampler: str | None) -> SchedulerMixin:
        """The scheduler of solver `sampler`, built once per model (`set_timesteps` resets its state)."""
        if sampler in (None, "euler"):
            return self.scheduler
        if sampler not in self._schedulers:
            self._schedulers[sampler] = make_scheduler(
                sampler, self.config.timestep_shift, self.scheduler.config.num_train_timesteps
            )
        return self._schedulers[sampler]

    @torch.no_grad()
    def rollout_latents(
        self,
        context: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        sampling_steps: int | None = None,
        sampler: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressively generate one latent frame per normalized action (B, n, A), any n >= 1.

        Windows of `predicted_frames` are generated in turn; the last `context_frames` latents of the
        sequence so far become the next context. A final partial window is filled by repeating its
        last action (the model only ever sees full windows, as in training) and cut back to n.
        Returns (latents (B, n, C, h, w), the context to continue from)."""
        cfg = self.config
        n = actions.shape[1]
        out = []
        for start in range(0, n, cfg.predicted_frames):
            piece = actions[:, start : start + cfg.predicted_frames]
            short = cfg.predicted_frames - piece.shape[1]
            if short:
                piece = torch.cat([piece, piece[:, -1:].expand(-1, short, -1)], dim=1)
            window = self.predict_window(context, piece, generator, sampling_steps, sampler)
            keep = window[:, : cfg.predicted_frames - short]
            out.append(keep)
            context = torch.cat([context, keep], dim=1)[:, -cfg.context_frames :]
        return torch.cat(out, dim=1), context

    @torch.no_grad()
    def decode_frames(self, latents: torch.Tensor) -> np.ndarray:
        """(B, n, C, h, w) latents -> uint8 (B, n, R, R, 3)."""
        batch, n = latents.shape[:2]
        pixels = self.decode(latents.reshape(batch * n, *latents.shape[2:]))
        return self.to_uint8(pixels).reshape(batch, n, *pixels.shape[2:], 3)

    @torch.no_grad()
    def replay(
        self,
        first_frames: np.ndarray,
        actions: np.ndarray,
        generator: torch.Generator | None = None,
        sampling_steps: int | None = None,
        sampler: str | None = None,
    ) -> np.ndarray:
        """Open-loop imagination: real first frames (B, H, W, 3) + robot-unit actions (B, n, A) ->
        uint8 (B, n, R, R, 3), frame i being the predicted result of action i."""
        context = self.context_from_frames(first_frames)
        latents, _ = self.rollout_latents(
            context, self.normalize_actions(actions), generator, sampling_steps, sampler
        )
        return self.decode_frames(latents)
