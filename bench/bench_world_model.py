"""Imagination speed of the world model: imagined frames per second vs batch size and sampling steps.

Times `WorldModel.rollout_latents` + VAE decoding (what `imagine` spends per chunk, without the
policy) for a horizon of `--frames` frames from a real-sized context. Weights are random (speed
does not depend on them) unless `--wm` names a checkpoint. For the xl preset the SDXL VAE
architecture is built from its config, so no download is needed.

    python bench/bench_world_model.py --config tiny --device cpu --batch-sizes 1 4 16 --steps 5 10 30
    python bench/bench_world_model.py --config xl --device cuda --batch-sizes 1 8 32 --steps 10 30
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from wmpo_core.normalization import ActionNormalizer
from wmpo_learner.world_model import WorldModel, load_preset
from wmpo_learner.world_model.config import VAESpec

SDXL_VAE_ARCHITECTURE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, {cpu}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}"
    )


def build(args: argparse.Namespace) -> WorldModel:
    if args.wm:
        return WorldModel.load(args.wm, args.device)
    config, _ = load_preset(args.config)
    if config.vae.pretrained is not None:
        config = config.model_copy(update={"vae": VAESpec(config=SDXL_VAE_ARCHITECTURE)})
    dim = args.action_dim
    torch.manual_seed(0)
    wm = WorldModel.from_config(
        config, ActionNormalizer([-1.0] * dim, [1.0] * dim), "front", "bench", "sha256:bench"
    )
    with torch.no_grad():  # the output head starts at zero; give it weights so the timing is of a real model
        for p in wm.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    wm = wm.to(args.device).eval()
    if args.device == "cuda":
        wm = wm.to(torch.bfloat16)
    return wm


def time_rollout(wm: WorldModel, batch: int, steps: int, frames: int, repeats: int) -> float:
    """Seconds per rollout of `frames` frames for `batch` samples (best of `repeats`)."""
    res = wm.config.resolution
    first = np.random.default_rng(0).integers(0, 256, size=(batch, res, res, 3), dtype=np.uint8)
    actions = torch.rand(batch, frames, wm.normalizer.dim, device=wm.device) * 2 - 1
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        if wm.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            context = wm.context_from_frames(first)
            latents, _ = wm.rollout_latents(
                context, actions, torch.Generator(wm.device).manual_seed(0), steps
            )
            wm.decode_frames(latents)
        if wm.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="preset (tiny, xl) or JSON config")
    p.add_argument("--wm", help="time this checkpoint instead of a randomly initialised preset")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 30], help="flow-matching steps per window")
    p.add_argument(
        "--frames", type=int, default=16, help="imagined frames per rollout (2 windows of 8 by default)"
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--action-dim", type=int, default=4)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2
    wm = build(args)
    n_params = sum(p.numel() for p in wm.transformer.parameters())
    print(f"machine: {machine()}")
    print(
        f"world model: {args.wm or args.config}, {wm.config.resolution} px, latents {wm.latent_shape}, "
        f"transformer {n_params / 1e6:.1f} M parameters, window {wm.config.context_frames}+{wm.config.predicted_frames}, "
        f"{args.frames} frames per rollout, device {args.device}"
    )
    print(f"{'batch':>6} {'steps':>6} {'seconds':>9} {'frames/s':>9} {'s/window':>9}")
    windows = -(-args.frames // wm.config.predicted_frames)
    for steps in args.steps:
        for batch in args.batch_sizes:
            seconds = time_rollout(wm, batch, steps, args.frames, args.repeats)
            print(
                f"{batch:>6} {steps:>6} {seconds:>9.2f} {batch * args.frames / seconds:>9.1f} {seconds / windows:>9.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
