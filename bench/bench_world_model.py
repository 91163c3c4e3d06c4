"""Imagination speed of the world model: imagined frames per second vs batch size and sampler.

Times `WorldModel.rollout_latents` + VAE decoding (what `imagine` spends per chunk, without the
policy) for a horizon of `--frames` frames from a real-sized context. Weights are random (speed
does not depend on them) unless `--wm` names a checkpoint. For the xl preset the SDXL VAE
architecture is built from its config, so no download is needed.

    python bench/bench_world_model.py --config tiny --device cpu --batch-sizes 1 4 16 --steps 5 10 30
    python bench/bench_world_model.py --config xl --device cuda --batch-sizes 1 8 32 --steps 10 30
    # few-step vs the default on a checkpoint measured by `wmpo wm-few-step` (fidelity printed beside)
    python bench/bench_world_model.py --wm W --batch-sizes 8 --samplers euler:10 euler:1 dpm++2m:2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from wmpo_core.normalization import ActionNormalizer
from wmpo_learner.world_model import WorldModel, load_preset
from wmpo_learner.world_model.config import VAEConfig
from wmpo_learner.world_model.few_step import RECORD_FILE, parse_candidate
from wmpo_learner.world_model.sampling import SAMPLERS

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
        config = config.model_copy(update={"vae": VAEConfig(config=SDXL_VAE_ARCHITECTURE)})
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


def _sync(wm: WorldModel) -> float:
    if wm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_rollout(
    wm: WorldModel, batch: int, sampler: str, steps: int, frames: int, repeats: int
) -> tuple[float, float]:
    """(seconds per rollout of `frames` frames for `batch` samples, of which VAE encoding and
    decoding), best of `repeats` after a warm-up run."""
    res = wm.config.resolution
    first = np.random.default_rng(0).integers(0, 256, size=(batch, res, res, 3), dtype=np.uint8)
    actions = torch.rand(batch, frames, wm.normalizer.dim, device=wm.device) * 2 - 1
    best, best_vae = float("inf"), 0.0
    for _ in range(repeats + 1):  # the first run warms up
        with torch.no_grad():
            start = _sync(wm)
            context = wm.context_from_frames(first)
            encoded = _sync(wm)
            latents, _ = wm.rollout_latents(
                context, actions, torch.Generator(wm.device).manual_seed(0), steps, sampler
            )
            sampled = _sync(wm)
            wm.decode_frames(latents)
            end = _sync(wm)
        if end - start < best:
            best, best_vae = end - start, (encoded - start) + (end - sampled)
    return best, best_vae


def fidelity(args: argparse.Namespace) -> dict[tuple[str, int], dict]:
    """(sampler, steps) -> the fidelity `wmpo wm-few-step` measured for this checkpoint, if it did."""
    path = Path(args.wm) / RECORD_FILE if args.wm else None
    if path is None or not path.is_file():
        return {}
    record = json.loads(path.read_text())
    rows = [record["reference"], *record["candidates"]]
    return {(r["sampler"], r["steps"]): r for r in rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="preset (tiny, xl) or JSON config")
    p.add_argument("--wm", help="time this checkpoint instead of a randomly initialised preset")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[5, 10, 30],
        help="Euler steps per window (without --samplers)",
    )
    p.add_argument(
        "--samplers",
        nargs="+",
        default=None,
        metavar="SAMPLER:STEPS",
        help=f"time these solvers instead ({', '.join(SAMPLERS)}), the first being the baseline; with --wm, "
        "the fidelity `wmpo wm-few-step` measured for each is printed beside it",
    )
    p.add_argument(
        "--frames", type=int, default=16, help="imagined frames per rollout (2 windows of 8 by default)"
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--action-dim", type=int, default=4)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2
    try:
        samplers = [parse_candidate(c) for c in args.samplers or [f"euler:{n}" for n in args.steps]]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    wm = build(args)
    measured = fidelity(args)
    n_params = sum(p.numel() for p in wm.transformer.parameters())
    print(f"machine: {machine()}")
    print(
        f"world model: {args.wm or args.config}, {wm.config.resolution} px, latents {wm.latent_shape}, "
        f"transformer {n_params / 1e6:.1f} M parameters, "
        f"window {wm.config.context_frames}+{wm.config.predicted_frames}, "
        f"{args.frames} frames per rollout, device {args.device}"
    )
    print(
        f"{'batch':>6} {'sampler':>8} {'steps':>6} {'seconds':>9} {'frames/s':>9} {'speed-up':>9} "
        f"{'s/window':>9} {'VAE share':>9}" + (f" {'PSNR':>6} {'BA':>6} {'passes':>9}" if measured else "")
    )
    windows = -(-args.frames // wm.config.predicted_frames)
    baseline: dict[int, float] = {}
    for sampler, steps in samplers:
        for batch in args.batch_sizes:
            seconds, vae = time_rollout(wm, batch, sampler, steps, args.frames, args.repeats)
            rate = batch * args.frames / seconds
            baseline.setdefault(batch, rate)
            line = (
                f"{batch:>6} {sampler:>8} {steps:>6} {seconds:>9.2f} {rate:>9.1f} "
                f"{rate / baseline[batch]:>8.2f}x "
                f"{seconds / windows:>9.2f} {vae / seconds:>9.0%}"
            )
            if measured:
                row = measured.get((sampler, steps))
                line += (
                    f" {row['psnr']:>6.2f} {row['balanced_accuracy']:>6.3f} "
                    f"{row.get('passes', 'reference')!s:>9}"
                    if row
                    else f" {'-':>6} {'-':>6} {'unmeasured':>9}"
                )
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
