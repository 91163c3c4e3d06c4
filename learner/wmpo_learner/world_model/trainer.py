"""Training loop shared by `wmpo wm-train` (pretraining) and `wmpo align` (Policy Behavior Alignment).

One run has two stages, both in this one command:
1. `vae`: the per-frame VAE learns to reconstruct single frames (MSE + a small KL). For a VAE built
   from scratch (the tiny config) the latents are then standardised: `shift_factor` and
   `scaling_factor` are set from the latent statistics, as SD3 does for its VAE. A pretrained
   (SDXL) VAE is usually kept frozen (`vae_steps = 0`).
2. `dit`: with the VAE frozen, every frame is encoded once, and the transformer learns the
   rectified-flow objective on random windows (`WorldModel.training_loss`), with AdamW, linear
   warm-up, gradient clipping, an EMA of the weights (diffusers' `EMAModel`) and bf16 autocast on GPUs.

Distributed: under torchrun each process trains on its own shard of the episodes and DDP averages
gradients; every checkpoint first checks that all replicas hold identical weights.
Checkpoints (`<out>/checkpoints/<stage>-<step>/`) are complete world models (EMA weights) plus
`training_state/` (optimizer, raw weights, counters; safetensors + JSON), and `--resume`
continues from the newest one. The finished model is written to `<out>/` itself.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from wmpo_core.episode_store import EpisodeMeta, EpisodeStore
from wmpo_core.robot_config import RobotConfig

from wmpo_learner.distributed import Distributed
from wmpo_learner.training_state import load_training_state, read_counters, save_training_state

from .config import TrainConfig, WorldModelConfig
from .data import FrameSampler, LatentEpisode, LatentWindowSampler, fit_normalizer, read_episode
from .model import CHECKPOINT_FILE, WorldModel

STAGES = ("vae", "dit")
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class TrainingPlan:
    """What to train on and how: built by the CLI from flags, or directly by tests and scripts."""

    command: str
    """'wm-train' (pretraining) or 'align' (Policy Behavior Alignment)."""
    store: Path
    out: Path
    robot: RobotConfig
    camera: str
    episodes: list[EpisodeMeta]
    model_config: WorldModelConfig
    train: TrainConfig
    init_from: Path | None = None
    """World-model checkpoint to fine-tune (align); None builds a new model."""
    resume: bool = False
    calibrate_latents: bool = True
    """Set shift/scaling factors after the VAE stage (for a VAE trained from scratch)."""


class _VAEObjective(nn.Module):
    """Reconstruction loss terms of the VAE as one forward, so DDP sees (and syncs) the whole step.

    MSE rather than SD's L1: on robot scenes most pixels are a static background that is
    reconstructed almost at once, and L1 keeps sending full-size (sign) gradients from all of them,
    drowning the few pixels of small objects (the block, the gripper). In the square-world test
    data an L1-trained VAE missed the 6 px square for one seed in four; MSE learned it for all five."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        return (recon.float() - pixels).square().mean(), posterior.kl().mean() / pixels[0].numel()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def latest_checkpoint(out: Path) -> Path | None:
    """Newest `<stage>-<step>` checkpoint under `out/checkpoints` (dit after vae, then by step)."""
    root = out / CHECKPOINTS_DIR
    found = []
    for path in root.glob("*-*") if root.is_dir() else []:
        stage, _, step = path.name.partition("-")
        if stage in STAGES and step.isdigit() and (path / CHECKPOINT_FILE).is_file():
            found.append((STAGES.index(stage), int(step), path))
    return max(found)[2] if found else None


class WorldModelTrainer:
    def __init__(self, plan: TrainingPlan, ctx: Distributed):
        if ctx.world_size > len(plan.episodes):
            raise ValueError(
                f"{ctx.world_size} processes but only {len(plan.episodes)} episodes: each process needs at "
                "least one"
            )
        self.plan = plan
        self.ctx = ctx
        self.cfg = plan.train
        self.store = EpisodeStore.open(plan.store)
        self.shard = plan.episodes[ctx.rank :: ctx.world_size]
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.device.type == "cuda")
        self.writer = None
        self.stage, self.stage_step = STAGES[0], 0
        self.resumed_from: Path | None = None
        self.last_losses: list[float] = []
        self.world_model = self._build_model()

    # ------------------------------------------------------------------ set-up

    def _build_model(self) -> WorldModel:
        plan = self.plan
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every process
        checkpoint = latest_checkpoint(plan.out) if plan.resume else None
        if checkpoint is not None:
            wm = WorldModel.load(checkpoint, self.ctx.device)
            state = read_counters(checkpoint / "training_state")
            self.stage, self.stage_step = state["stage"], state["stage_step"]
            self.resumed_from = checkpoint
        elif plan.init_from is not None:
            wm = WorldModel.load(plan.init_from, self.ctx.device)
        else:
            normalizer = fit_normalizer(self.store, plan.episodes)
            wm = WorldModel.from_config(
                plan.model_config, normalizer, plan.camera, plan.robot.name, plan.robot.content_hash
            )
        if wm.camera != plan.camera or wm.normalizer.dim != plan.robot.action.dim:
            raise ValueError(
                f"world model sees camera '{wm.camera}' with {wm.normalizer.dim}-D actions; the episodes "
                "have camera "
                f"'{plan.camera}' and {plan.robot.action.dim}-D actions"
            )
        return wm.to(self.ctx.device)

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    # ------------------------------------------------------------------ the run

    def fit(self) -> WorldModel:
        plan, ctx = self.plan, self.ctx
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            plan.out.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(plan.out / "tensorboard"))
            ok = sum(m.success is True for m in plan.episodes)
            bad = sum(m.success is False for m in plan.episodes)
            self._log(
                f"{plan.command}: {len(plan.episodes)} episodes ({ok} success, {bad} failure, "
                f"{len(plan.episodes) - ok - bad} unlabelled) from {plan.store}, camera '{plan.camera}', "
                f"{ctx.world_size} process(es) on {ctx.device}"
                + (f", resuming from {self.resumed_from}" if self.resumed_from else "")
            )
        if self.stage == "vae":
            self._train_vae()
        self._train_transformer()
        if self.writer is not None:
            self.writer.close()
        return self.world_model

    # ------------------------------------------------------------------ stage 1: VAE

    def _train_vae(self) -> None:
        cfg, ctx, wm = self.cfg, self.ctx, self.world_model
        vae = wm.vae
        if cfg.vae_steps > self.stage_step:
            vae.train().requires_grad_(True)
            objective: nn.Module = _VAEObjective(vae)
            if ctx.enabled:
                objective = DistributedDataParallel(
                    objective, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
                )
            optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
            if self.resumed_from is not None and self.stage_step > 0:
                load_training_state(self.resumed_from / "training_state", optimizer)
            frames = FrameSampler(self.store, self.shard, wm.camera, wm.config.resolution)
            bar = tqdm(
                range(self.stage_step, cfg.vae_steps), desc="vae", disable=not ctx.is_main, dynamic_ncols=True
            )
            for step in bar:
                # Every step draws from its own seed: a resumed run sees exactly the data of an uninterrupted
                # one.
                pixels = wm.to_pixels(
                    frames.sample(
                        cfg.vae_batch_size, np.random.default_rng(_seed(cfg.seed, ctx.rank, step, 1))
                    )
                )
                with self.autocast:
                    mse, kl = objective(pixels)
                loss = mse + cfg.vae_kl_weight * kl
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
                optimizer.step()
                self.stage_step = step + 1
                if self.stage_step % cfg.log_every == 0 or self.stage_step == cfg.vae_steps:
                    mse_mean = float(ctx.mean(mse.detach()))
                    bar.set_postfix(mse=f"{mse_mean:.4f}")
                    self._scalar("vae/mse", mse_mean, self.stage_step)
                    self._scalar("vae/kl", float(ctx.mean(kl.detach())), self.stage_step)
                    self._scalar("vae/grad_norm", float(grad_norm), self.stage_step)
                if self.stage_step % cfg.checkpoint_every == 0 and self.stage_step < cfg.vae_steps:
                    self._checkpoint(vae, optimizer, ema=None)
            bar.close()
        vae.eval().requires_grad_(False)
        if self.plan.calibrate_latents and cfg.vae_steps > 0:
            self._calibrate_latents()
        self.stage, self.stage_step = "dit", 0
        if (
            cfg.vae_steps > 0
        ):  # "VAE finished, transformer not started": a resume from here skips the VAE stage
            self._checkpoint(vae, optimizer=None, ema=None)

    @torch.no_grad()
    def _calibrate_latents(self, frames_per_process: int = 512) -> None:
        """Standardise latents: shift_factor = mean, scaling_factor = 1 / std (averaged over processes)."""
        wm = self.world_model
        sampler = FrameSampler(self.store, self.shard, wm.camera, wm.config.resolution)
        pixels = wm.to_pixels(
            sampler.sample(frames_per_process, np.random.default_rng(_seed(self.cfg.seed, self.ctx.rank, 7)))
        )
        raw = torch.cat([wm.vae.encode(p).latent_dist.mode().float() for p in pixels.split(64)])
        moments = self.ctx.mean(torch.stack([raw.mean(), raw.square().mean()]))
        mean, std = float(moments[0]), float((moments[1] - moments[0] ** 2).clamp_min(1e-12).sqrt())
        wm.vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
        self._log(
            f"latent statistics: mean {mean:.4f}, std {std:.4f} -> shift_factor {mean:.4f}, scaling_factor "
            f"{1 / std:.4f}"
        )

    # ------------------------------------------------------------------ stage 2: transformer

    @torch.no_grad()
    def _encode_episodes(self) -> list[LatentEpisode]:
        wm = self.world_model
        out = []
        for meta in tqdm(self.shard, desc="encode", disable=not self.ctx.is_main, dynamic_ncols=True):
            frames, actions = read_episode(self.store, meta, wm.camera, wm.config.resolution)
            with self.autocast:
                latents = wm.encode(wm.to_pixels(frames))
            out.append(
                LatentEpisode(
                    meta.episode_id, latents.to("cpu", torch.float16), wm.normalize_actions(actions).cpu()
                )
            )
        return out

    def _train_transformer(self) -> None:
        cfg, ctx, wm = self.cfg, self.ctx, self.world_model
        transformer = wm.transformer
        wm.vae.eval().requires_grad_(False)
        windows = LatentWindowSampler(
            self._encode_episodes(), wm.config.context_frames, wm.config.predicted_frames
        )
        self._log(
            f"transformer: {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M parameters, "
            f"{len(windows)} training windows on process 0"
        )
        transformer.train().requires_grad_(True)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        ema = EMAModel(transformer.parameters(), decay=cfg.ema_decay)
        optimizer = torch.optim.AdamW(transformer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.resumed_from is not None and self.stage_step > 0:
            state, raw = load_training_state(self.resumed_from / "training_state", optimizer)
            transformer.load_state_dict(
                raw
            )  # the loaded model holds the EMA weights; EMA was built from them
            ema.optimization_step = state["ema_step"]
        denoiser: nn.Module = transformer
        if ctx.enabled:
            denoiser = DistributedDataParallel(
                transformer, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
            )
        bar = tqdm(
            range(self.stage_step, cfg.steps), desc="transformer", disable=not ctx.is_main, dynamic_ncols=True
        )
        for step in bar:
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            latents, actions = windows.sample(
                cfg.batch_size, torch.Generator().manual_seed(_seed(cfg.seed, ctx.rank, step, 2))
            )
            noise_rng = torch.Generator(ctx.device).manual_seed(_seed(cfg.seed, ctx.rank, step, 3))
            with self.autocast:
                loss = wm.training_loss(
                    latents.to(ctx.device),
                    actions.to(ctx.device),
                    denoiser=denoiser,
                    generator=noise_rng,
                    logit_mean=cfg.logit_mean,
                    logit_std=cfg.logit_std,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.step(transformer.parameters())
            self.stage_step = step + 1
            self.last_losses.append(float(loss.detach()))
            if self.stage_step % cfg.log_every == 0 or self.stage_step == cfg.steps:
                mean_loss = float(ctx.mean(loss.detach()))
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.1e}")
                self._scalar("dit/loss", mean_loss, self.stage_step)
                self._scalar("dit/lr", lr, self.stage_step)
                self._scalar("dit/grad_norm", float(grad_norm), self.stage_step)
            if self.stage_step % cfg.checkpoint_every == 0 or self.stage_step == cfg.steps:
                self._checkpoint(
                    transformer, optimizer, ema
                )  # the last one lets `--resume --steps <more>` go on
        bar.close()
        if not ctx.replicas_in_sync(transformer):
            raise RuntimeError("DDP replicas diverged: processes hold different transformer weights")
        ema.copy_to(transformer.parameters())
        transformer.eval().requires_grad_(False)
        if ctx.is_main:
            self._stamp_provenance()
            wm.save(self.plan.out)
            self._log(f"world model written to {self.plan.out}")
        ctx.barrier()

    # ------------------------------------------------------------------ checkpoints

    def _stamp_provenance(self) -> None:
        plan, wm = self.plan, self.world_model
        history = [h for h in wm.provenance.get("history", []) if h.get("out") != str(plan.out)]
        history.append(
            {
                "command": plan.command,
                "out": str(plan.out),
                "store": str(plan.store),
                "episodes": [m.episode_id for m in plan.episodes],
                "successes": sum(m.success is True for m in plan.episodes),
                "failures": sum(m.success is False for m in plan.episodes),
                "policy_versions": sorted({m.policy_version for m in plan.episodes if m.policy_version}),
                "init_from": str(plan.init_from) if plan.init_from else None,
                "stage": self.stage,
                "stage_step": self.stage_step,
                "train_config": self.cfg.model_dump(mode="json"),
                "world_size": self.ctx.world_size,
                "time": _dt.datetime.now(_dt.UTC).isoformat(),
            }
        )
        wm.provenance = {**wm.provenance, "history": history}

    def _checkpoint(
        self, module: nn.Module, optimizer: torch.optim.Optimizer | None, ema: EMAModel | None
    ) -> None:
        if not self.ctx.replicas_in_sync(module):
            raise RuntimeError(
                f"DDP replicas diverged in stage '{self.stage}': processes hold different weights"
            )
        if self.ctx.is_main:
            root = self.plan.out / CHECKPOINTS_DIR
            final = root / f"{self.stage}-{self.stage_step:07d}"
            tmp = root / f".{final.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self._stamp_provenance()
            raw: dict[str, Any] | None = None
            if ema is not None:
                raw = {k: v.detach().clone() for k, v in module.state_dict().items()}
                ema.store(module.parameters())
                ema.copy_to(module.parameters())
            try:
                self.world_model.save(tmp)
            finally:
                if ema is not None:
                    ema.restore(module.parameters())
            state = {
                "stage": self.stage,
                "stage_step": self.stage_step,
                "ema_step": ema.optimization_step if ema else 0,
            }
            save_training_state(tmp / "training_state", optimizer, raw, state)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            kept = [p for p in root.iterdir() if p.is_dir() and p.name.split("-")[0] in STAGES]
            ordered = sorted(kept, key=lambda p: (STAGES.index(p.name.split("-")[0]), p.name))
            for old in ordered[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.ctx.barrier()
