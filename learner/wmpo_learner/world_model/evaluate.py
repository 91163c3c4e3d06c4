"""`wmpo wm-eval`: how faithful is the world model's imagination on held-out real episodes?

For each episode the model starts from the real first frame and replays the episode's real
actions open-loop (autoregressively, windows of `predicted_frames`), and every imagined frame is
compared with the real frame at the same step:
- PSNR and SSIM per predicted step (the horizon), next to two references: the VAE's own
  reconstruction (the ceiling: the transformer cannot beat its decoder) and "hold the first frame"
  (the floor: a model that ignores the actions and predicts no motion);
- action sensitivity: the same start replayed with mirrored actions (each normalized action
  negated: -1 <-> 1) and the same noise seed, against the same actions under a different seed.
  A model that follows its actions changes its future much more for the former than the latter,
  and its real-action prediction is closer to the real frames than the mirrored one.
Side-by-side videos real | imagined | imagined with mirrored actions are written as mp4.

    wmpo wm-eval --store data/rollouts --wm data/wm/aligned --select last:8 --out data/wm/eval
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option


@dataclass
class WorldModelEvalConfig:
    """`wmpo wm-eval`: the world model's imagination against held-out real episodes."""

    store: Path = option(help="episode store holding the held-out episodes")
    wm: Path = option(help="world-model checkpoint directory")
    out: Path = option(help="directory for metrics.json, report.md and videos/")
    select: str = option(
        "held-out",
        "held-out (every episode of the model's robot it was not trained on), first:N, last:N, "
        "or comma-separated episode ids",
    )
    source: Literal["policy", "teleop", "scripted", "any"] = option("any", "episode source filter")
    max_episodes: int = option(16, "evaluate at most this many of the selected episodes")
    horizon: int | None = option(None, "imagined steps per episode (default: the whole episode)")
    sampling_steps: int | None = option(None, "flow-matching steps per window (default: the model's)")
    batch_size: int = option(8, "episodes imagined together")
    video_count: int = option(4, "how many episodes to write as side-by-side mp4")
    seed: int = option(0, "noise seed")
    device: str = option("auto", DEVICE_HELP, type=torch_device)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_config_arguments(parser, WorldModelEvalConfig)


def mirrored(world_model: Any, actions: np.ndarray) -> np.ndarray:
    """Robot-unit actions reflected through the middle of their normalized range."""
    return world_model.normalizer.unnormalize(-world_model.normalizer.normalize(actions))


def write_video(path: Path, panels: list[np.ndarray], fps: float, scale: int = 4) -> None:
    """Frames (T, H, W, 3) per panel, side by side, nearest-neighbour upscaled, as H.264 mp4."""
    import av

    video = np.concatenate(panels, axis=2).repeat(scale, axis=1).repeat(scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in video:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode())


def evaluate_world_model(
    world_model: Any,
    store: Any,
    episodes: list[Any],
    out: Path,
    horizon: int | None = None,
    sampling_steps: int | None = None,
    batch_size: int = 8,
    videos: int = 4,
    seed: int = 0,
    progress: bool = True,
    label: str = "",
) -> dict[str, Any]:
    """Run the evaluation described in the module docstring; returns (and writes) the metrics."""
    import torch
    from tqdm import tqdm

    from .data import read_episode
    from .metrics import psnr, ssim

    wm = world_model
    per_step: dict[str, list[list[float]]] = {
        k: [] for k in ("psnr", "ssim", "psnr_vae", "psnr_hold", "psnr_mirrored", "mae_action", "mae_seed")
    }
    per_episode = []
    video_count = 0
    batches = [episodes[i : i + batch_size] for i in range(0, len(episodes), batch_size)]
    for batch in tqdm(batches, desc="wm-eval", disable=not progress, dynamic_ncols=True):
        data = [read_episode(store, m, wm.camera, wm.config.resolution) for m in batch]
        lengths = [min(len(f) - 1, horizon or len(f)) for f, _ in data]
        if min(lengths) < 1:
            raise ValueError("every evaluated episode needs at least 2 steps")
        n = max(lengths)
        firsts = np.stack([f[0] for f, _ in data])
        actions = np.stack(
            [np.concatenate([a[:n], np.repeat(a[-1:], max(0, n - len(a)), axis=0)])[:n] for _, a in data]
        )

        def replay(acts: np.ndarray, noise_seed: int, firsts: np.ndarray = firsts) -> np.ndarray:
            return wm.replay(firsts, acts, torch.Generator().manual_seed(noise_seed), sampling_steps)

        imagined = replay(actions, seed)
        imagined_seed = replay(actions, seed + 1)
        imagined_mirror = replay(mirrored(wm, actions), seed)
        for i, ((frames, _), meta) in enumerate(zip(data, batch, strict=True)):
            h = lengths[i]
            real = frames[1 : h + 1]
            img, img_seed, img_mirror = imagined[i, :h], imagined_seed[i, :h], imagined_mirror[i, :h]
            with torch.no_grad():
                recon = wm.decode_frames(wm.encode(wm.to_pixels(real))[None])[0]
            rows = {
                "psnr": psnr(img, real),
                "ssim": ssim(img, real),
                "psnr_vae": psnr(recon, real),
                "psnr_hold": psnr(np.broadcast_to(frames[0], real.shape), real),
                "psnr_mirrored": psnr(img_mirror, real),
                "mae_action": np.abs(img.astype(np.float64) - img_mirror).mean(axis=(1, 2, 3)),
                "mae_seed": np.abs(img.astype(np.float64) - img_seed).mean(axis=(1, 2, 3)),
            }
            for key, values in rows.items():
                per_step[key].append([float(v) for v in values])
            per_episode.append(
                {
                    "episode_id": meta.episode_id,
                    "success": meta.success,
                    "steps": h,
                    **{k: float(np.mean(v)) for k, v in rows.items()},
                }
            )
            if video_count < videos:
                write_video(
                    out / "videos" / f"{meta.episode_id}.mp4", [real, img, img_mirror], meta.control_rate_hz
                )
                video_count += 1

    def by_horizon(key: str) -> list[float]:
        longest = max(len(r) for r in per_step[key])
        return [float(np.mean([r[t] for r in per_step[key] if len(r) > t])) for t in range(longest)]

    def overall(key: str, first: int | None = None) -> float:
        return float(np.mean([v for r in per_step[key] for v in r[:first]]))

    p = wm.config.predicted_frames
    mae_action, mae_seed = overall("mae_action"), overall("mae_seed")
    closer = np.mean(
        [
            a > b
            for ra, rb in zip(per_step["psnr"], per_step["psnr_mirrored"], strict=True)
            for a, b in zip(ra, rb, strict=True)
        ]
    )
    summary = {
        "episodes": len(per_episode),
        "frames": int(sum(len(r) for r in per_step["psnr"])),
        "psnr": overall("psnr"),
        "ssim": overall("ssim"),
        f"psnr_first_{p}": overall("psnr", p),
        f"ssim_first_{p}": overall("ssim", p),
        "psnr_vae_reconstruction": overall("psnr_vae"),
        "psnr_hold_first_frame": overall("psnr_hold"),
        "psnr_mirrored_actions": overall("psnr_mirrored"),
        "action_sensitivity": {
            "mae_mirrored_vs_real_actions": mae_action,
            "mae_other_seed_same_actions": mae_seed,
            "ratio": mae_action / max(mae_seed, 1e-9),
            "fraction_real_actions_closer": float(closer),
        },
    }
    result = {
        "world_model": label,
        "sampling_steps": sampling_steps or wm.config.sampling_steps,
        "seed": seed,
        "summary": summary,
        "per_step": {k: by_horizon(k) for k in per_step},
        "per_episode": per_episode,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(format_report(result, p))
    return result


def format_report(result: dict[str, Any], predicted_frames: int) -> str:
    s = result["summary"]
    sens = s["action_sensitivity"]
    lines = [
        f"episodes: {s['episodes']}, imagined frames: {s['frames']}, sampling steps: "
        f"{result['sampling_steps']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| PSNR (dB), all steps | {s['psnr']:.2f} |",
        f"| SSIM, all steps | {s['ssim']:.3f} |",
        f"| PSNR / SSIM, first {predicted_frames} steps | {s[f'psnr_first_{predicted_frames}']:.2f} / "
        f"{s[f'ssim_first_{predicted_frames}']:.3f} |",
        f"| PSNR of the VAE reconstruction (ceiling) | {s['psnr_vae_reconstruction']:.2f} |",
        f"| PSNR of holding the first frame (floor) | {s['psnr_hold_first_frame']:.2f} |",
        f"| PSNR with mirrored actions | {s['psnr_mirrored_actions']:.2f} |",
        f"| pixel MAE, mirrored vs real actions (same seed) | {sens['mae_mirrored_vs_real_actions']:.2f} |",
        f"| pixel MAE, other seed (same actions) | {sens['mae_other_seed_same_actions']:.2f} |",
        f"| action-sensitivity ratio | {sens['ratio']:.2f} |",
        "| frames where real actions beat mirrored (PSNR) | "
        f"{100 * sens['fraction_real_actions_closer']:.0f}% |",
        "",
        "| step | PSNR | SSIM | PSNR VAE | PSNR hold | PSNR mirrored |",
        "|---|---|---|---|---|---|",
    ]
    ps = result["per_step"]
    steps = len(ps["psnr"])
    shown = sorted({*range(min(steps, 2 * predicted_frames)), *range(0, steps, predicted_frames), steps - 1})
    for t in shown:
        lines.append(
            f"| {t + 1} | {ps['psnr'][t]:.2f} | {ps['ssim'][t]:.3f} | {ps['psnr_vae'][t]:.2f} | "
            f"{ps['psnr_hold'][t]:.2f} | {ps['psnr_mirrored'][t]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def wm_eval(config: WorldModelEvalConfig) -> dict[str, Any]:
    """The `wmpo wm-eval` stage: evaluate, write metrics.json, report.md and videos into
    `config.out`; returns the metrics. A bad input raises ValueError naming it, before anything is
    written."""
    from wmpo_core.devices import choose_device  # imports torch: kept out of `wmpo --help`
    from wmpo_core.episode_store import EpisodeStore, StoreError

    from .data import select_episodes
    from .model import WorldModel, WorldModelLoadError

    for flag, value in (
        ("--max-episodes", config.max_episodes),
        ("--batch-size", config.batch_size),
        ("--horizon", config.horizon),
        ("--sampling-steps", config.sampling_steps),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1")
    if config.video_count < 0:
        raise ValueError("--video-count must be >= 0")
    device = choose_device(config.device)
    try:
        wm = WorldModel.load(config.wm, device)
        store = EpisodeStore.open(config.store)
        trained_on = {e for h in wm.provenance.get("history", []) for e in h.get("episodes", [])}
        spec = None if config.select == "held-out" else config.select
        source = None if config.source == "any" else config.source
        episodes = [
            m
            for m in select_episodes(store, spec, source=source)
            if m.robot_config_name == wm.robot_config_name
        ]
    except (StoreError, WorldModelLoadError) as exc:
        raise ValueError(str(exc)) from None
    if config.select == "held-out":
        episodes = [m for m in episodes if m.episode_id not in trained_on]
    overlap = [m.episode_id for m in episodes if m.episode_id in trained_on]
    if overlap:
        print(
            f"wmpo wm-eval: warning: {len(overlap)} selected episodes were used to train this model",
            file=sys.stderr,
        )
    episodes = [m for m in episodes if m.num_steps >= 2][: config.max_episodes]
    if not episodes:
        raise ValueError(
            f"no held-out episodes of robot '{wm.robot_config_name}' in {config.store} match the selection"
        )
    result = evaluate_world_model(
        wm,
        store,
        episodes,
        config.out,
        horizon=config.horizon,
        sampling_steps=config.sampling_steps,
        batch_size=config.batch_size,
        videos=config.video_count,
        seed=config.seed,
        label=str(config.wm),
    )
    print(format_report(result, wm.config.predicted_frames))
    print(f"metrics: {config.out / 'metrics.json'}, videos: {config.out / 'videos'}")
    return result


def run(args: argparse.Namespace) -> int:
    try:
        wm_eval(config_from_args(WorldModelEvalConfig, args))
    except ValueError as exc:
        print(f"wmpo wm-eval: {exc}", file=sys.stderr)
        return 2
    return 0
