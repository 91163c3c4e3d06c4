"""`wmpo wm-few-step`: find the cheapest sampler that imagines as faithfully as the default, and certify it.

Imagination time scales with the transformer evaluations per generated window. This command
replays held-out, labelled real rollouts (each episode's real actions from its real first frame,
as `wmpo imagination-check` does) with the reference sampler (Euler at the model's default steps)
and with each candidate (solver, steps), under the same noise seed, and measures for each:
- PSNR of the imagined frames against the real frames (as `wmpo wm-eval`);
- outcome agreement: the reward model's verdict on the imagined video against the real outcome
  (balanced accuracy and the rank AUC of the reward score, as `wmpo imagination-check`);
- imagined frames per second of the replay itself (world model only, same process, same machine).

A candidate passes when its PSNR is within `--max-psnr-drop` dB (default 0.5) below the
reference's and its balanced accuracy within `--max-ba-drop` (default 0.02) below it. The
cheapest passing candidate is written into the checkpoint as `few_step.json`, bound to the sha256
of the transformer weights; `certified_sampler` returns it only for those exact weights (a
re-aligned model has to be measured again), and GRPO in imagination uses it when no sampler is
asked for. Nothing passes: the record says so and imagination keeps the default sampler.

    wmpo wm-few-step --wm W --reward R --store check.zarr --candidates euler:1 euler:2 dpm++2m:2 heun:2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option
from wmpo_core.devices import DeviceError, choose_device

from wmpo_learner.stats import Confusion, rank_auc
from wmpo_learner.world_model.data import read_episode, select_episodes
from wmpo_learner.world_model.metrics import psnr
from wmpo_learner.world_model.sampling import SAMPLERS, evaluations

RECORD_FILE = "few_step.json"
RECORD_FORMAT = "wmpo_few_step_sampler"
WEIGHTS_FILE = Path("transformer") / "diffusion_pytorch_model.safetensors"


def parse_candidate(text: str) -> tuple[str, int]:
    """'dpm++2m:2' -> ('dpm++2m', 2); a one-line ValueError names what is wrong."""
    name, sep, steps = text.rpartition(":")
    if not sep or name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise ValueError(
            f"candidate {text!r}: expected SAMPLER:STEPS with SAMPLER one of {', '.join(SAMPLERS)}"
        )
    return name, int(steps)


def weights_sha256(directory: str | Path) -> str:
    """sha256 of a checkpoint's transformer weights: what a fidelity measurement is valid for."""
    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def measure_sampler(
    world_model: Any,
    reward_model: Any,
    episodes: Sequence[tuple[np.ndarray, np.ndarray, bool]],
    sampler: str,
    steps: int,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Replay `episodes` (frames (T, R, R, 3) at the model's resolution, actions (T, A), real
    success) with one sampler; PSNR, outcome agreement and the replay's imagined frames/s."""
    generator = torch.Generator(world_model.device).manual_seed(seed)
    videos, psnrs, seconds, imagined_frames = [], [], 0.0, 0
    batches = [episodes[i : i + batch_size] for i in range(0, len(episodes), batch_size)]
    for batch in tqdm(batches, desc=f"{sampler}:{steps}", disable=not progress, dynamic_ncols=True):
        n = max(len(a) for _, a, _ in batch)
        actions = np.stack([np.concatenate([a, np.repeat(a[-1:], n - len(a), axis=0)]) for _, a, _ in batch])
        start = time.perf_counter()
        replayed = world_model.replay(
            np.stack([f[0] for f, _, _ in batch]), actions, generator, steps, sampler
        )
        seconds += time.perf_counter() - start
        imagined_frames += len(batch) * n
        for (frames, a, _), video in zip(batch, replayed, strict=True):
            h = min(len(a), len(frames) - 1)
            psnrs.append(psnr(video[:h], frames[1 : h + 1]))
            videos.append(np.concatenate([frames[:1], video[: len(a)]]))
    real = [bool(s) for _, _, s in episodes]
    detections = reward_model.detect_batch(videos)
    predicted = [d.success for d in detections]
    confusion = Confusion.from_outcomes(predicted, real)
    return {
        "sampler": sampler,
        "steps": steps,
        "evaluations_per_window": evaluations(sampler, steps),
        "psnr": float(np.mean(np.concatenate(psnrs))),
        "balanced_accuracy": confusion.balanced_accuracy,
        "auc": rank_auc([float(d.scores.max()) for d in detections], real),
        "imagined_success": float(np.mean(predicted)),
        "confusion": confusion.to_dict(),
        "frames_per_second": imagined_frames / seconds,
        "seconds": seconds,
    }


def passes(
    candidate: dict[str, Any], reference: dict[str, Any], max_psnr_drop: float, max_ba_drop: float
) -> bool:
    """Matched fidelity: neither PSNR nor balanced accuracy falls further below the reference than allowed."""
    ba, ref_ba = candidate["balanced_accuracy"], reference["balanced_accuracy"]
    return (
        candidate["psnr"] >= reference["psnr"] - max_psnr_drop
        and ba is not None
        and ref_ba is not None
        and ba >= ref_ba - max_ba_drop
    )


def certified_sampler(world_model_dir: str | Path) -> tuple[str, int] | None:
    """The (sampler, steps) certified for this checkpoint's exact transformer weights, or None
    (no record, nothing passed, or the weights changed since the measurement)."""
    path = Path(world_model_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        chosen = record["chosen"]
        if record.get("format") != RECORD_FORMAT or chosen is None:
            return None
        if record["weights_sha256"] != weights_sha256(world_model_dir):
            return None
        return parse_candidate(f"{chosen['sampler']}:{chosen['steps']}")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One sampler's runs over several noise seeds: the seed means decide, the spread is reported."""
    bas = [r["balanced_accuracy"] for r in runs]
    frames = sum(r["frames_per_second"] * r["seconds"] for r in runs)
    return {
        "sampler": runs[0]["sampler"],
        "steps": runs[0]["steps"],
        "evaluations_per_window": runs[0]["evaluations_per_window"],
        "psnr": float(np.mean([r["psnr"] for r in runs])),
        "balanced_accuracy": None if None in bas else float(np.mean(bas)),
        "balanced_accuracy_range": None if None in bas else [float(min(bas)), float(max(bas))],
        "auc": float(np.mean([r["auc"] for r in runs if r["auc"] is not None] or [np.nan])),
        "frames_per_second": frames / sum(r["seconds"] for r in runs),
        "per_seed": list(runs),
    }


def certify(
    world_model: Any,
    reward_model: Any,
    episodes: Sequence[tuple[np.ndarray, np.ndarray, bool]],
    reference: tuple[str, int],
    candidates: Sequence[tuple[str, int]],
    seeds: Sequence[int],
    max_psnr_drop: float = 0.5,
    max_ba_drop: float = 0.02,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the reference and every candidate on the same episodes and seeds; choose the
    cheapest candidate (fewest transformer evaluations per window) that passes."""

    def run(sampler: str, steps: int) -> dict[str, Any]:
        return summarize(
            [
                measure_sampler(world_model, reward_model, episodes, sampler, steps, s, batch_size, progress)
                for s in seeds
            ]
        )

    ref = run(*reference)
    rows = []
    for sampler, steps in candidates:
        row = run(sampler, steps)
        row["passes"] = passes(row, ref, max_psnr_drop, max_ba_drop)
        row["speedup"] = row["frames_per_second"] / ref["frames_per_second"]
        rows.append(row)
    passing = [r for r in rows if r["passes"]]
    chosen = min(passing, key=lambda r: (r["evaluations_per_window"], -r["balanced_accuracy"]), default=None)
    return {
        "format": RECORD_FORMAT,
        "episodes": len(episodes),
        "real_success": float(np.mean([s for _, _, s in episodes])),
        "seeds": list(seeds),
        "tolerance": {"max_psnr_drop_db": max_psnr_drop, "max_balanced_accuracy_drop": max_ba_drop},
        "reference": ref,
        "candidates": rows,
        "chosen": None if chosen is None else {"sampler": chosen["sampler"], "steps": chosen["steps"]},
    }


@dataclass
class FewStepConfig:
    """`wmpo wm-few-step`: measure candidate samplers against the reference; certify the cheapest match."""

    wm: Path = option(help="world-model checkpoint (the record is written here)")
    reward: Path = option(help="reward-model checkpoint that scores imagined video")
    store: Path = option(help="episode store with labelled policy rollouts")
    policy_version: str | None = option(None, "only this policy version's rollouts (None: every version)")
    include_trained: bool = option(
        False, "also use episodes either model was trained on (default: held-out episodes only)"
    )
    max_episodes: int = option(64, "use at most this many (newest) episodes")
    reference: str | None = option(
        None, "SAMPLER:STEPS to match (None: euler at the model's sampling steps)", metavar="SAMPLER:STEPS"
    )
    candidates: list[str] = option(
        ["euler:1", "euler:2", "dpm++2m:2", "heun:2"],
        f"few-step samplers to try (SAMPLER one of {', '.join(SAMPLERS)})",
        metavar="SAMPLER:STEPS",
    )
    seeds: list[int] = option([0, 1, 2], "noise seeds; fidelity is their mean")
    max_psnr_drop: float = option(0.5, "dB below the reference a candidate may lose")
    max_ba_drop: float = option(0.02, "balanced accuracy below the reference a candidate may lose")
    batch_size: int = option(8, "episodes imagined together")
    device: str = option("cpu", DEVICE_HELP, type=torch_device)
    json: Path | None = option(None, "also write the result here")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__.split("\n\n")[0]
    add_config_arguments(parser, FewStepConfig)


def _fail(message: str) -> int:
    print(f"wmpo wm-few-step: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    return few_step(config_from_args(FewStepConfig, args))


def few_step(config: FewStepConfig) -> int:
    """The `wm-few-step` stage as a command: certify, print the table; returns the exit status."""
    try:
        result = certify_checkpoint(config)
    except ValueError as exc:
        return _fail(str(exc))
    print(format_report(result))
    return 0


def certify_checkpoint(config: FewStepConfig) -> dict[str, Any]:
    """Measure on the store's labelled rollouts, write the record into the checkpoint (and to
    `config.json`) and return it. Raises ValueError with a one-line message; nothing is written then."""
    from wmpo_core.episode_store import EpisodeStore, StoreError

    from wmpo_learner.imagination_check import trained_on
    from wmpo_learner.reward.checkpoint import CheckpointError
    from wmpo_learner.reward.checkpoint import load_checkpoint as load_reward
    from wmpo_learner.world_model.model import WorldModel, WorldModelLoadError

    if config.max_episodes < 1 or config.batch_size < 1:
        raise ValueError("--max-episodes and --batch-size must be >= 1")
    if config.max_psnr_drop < 0 or config.max_ba_drop < 0:
        raise ValueError("--max-psnr-drop and --max-ba-drop must be >= 0")
    try:
        device = choose_device(config.device)
    except DeviceError as exc:
        raise ValueError(f"--device {exc}") from exc
    try:
        candidates = [parse_candidate(c) for c in config.candidates]
        wm = WorldModel.load(config.wm, device=device).eval()
        reference = parse_candidate(config.reference or f"euler:{wm.config.sampling_steps}")
        rm, rm_meta = load_reward(config.reward, device=str(device))
        store = EpisodeStore.open(config.store)
        metas = [
            m
            for m in select_episodes(store, None, source="policy", policy_version=config.policy_version)
            if m.robot_config_name == wm.robot_config_name and m.success is not None and m.num_steps >= 2
        ]
        seen = trained_on(wm, rm_meta)
        if not config.include_trained:
            metas = [m for m in metas if m.episode_id not in seen]
        metas = metas[-config.max_episodes :]
        if len({bool(m.success) for m in metas}) < 2:
            raise ValueError(
                f"{config.store} has {len(metas)} usable labelled rollouts; balanced accuracy needs "
                "successes and failures among them"
            )
        episodes = [
            (*read_episode(store, m, wm.camera, wm.config.resolution), bool(m.success)) for m in metas
        ]
        result = certify(
            wm,
            rm,
            episodes,
            reference,
            candidates,
            config.seeds,
            config.max_psnr_drop,
            config.max_ba_drop,
            config.batch_size,
        )
    except (StoreError, WorldModelLoadError, CheckpointError, FileNotFoundError) as exc:
        raise ValueError(str(exc)) from exc
    result.update(
        world_model=str(config.wm),
        weights_sha256=weights_sha256(config.wm),
        reward_model=str(config.reward),
        store=str(config.store),
        held_out=not any(m.episode_id in seen for m in metas),
        device=str(wm.device),
    )
    text = json.dumps(result, indent=2) + "\n"
    tmp = config.wm / (RECORD_FILE + ".tmp")
    tmp.write_text(text)
    tmp.replace(config.wm / RECORD_FILE)
    if config.json is not None:
        config.json.parent.mkdir(parents=True, exist_ok=True)
        config.json.write_text(text)
    return result


def format_report(result: dict[str, Any]) -> str:
    """The measurement as a Markdown table and the verdict."""
    lines = [
        f"{result['episodes']} labelled rollouts (real success {result['real_success']:.2f}), "
        f"noise seeds {result['seeds']}; values are seed means.",
        "",
        "| sampler | steps | evaluations/window | PSNR (dB) | balanced accuracy (range) | AUC | frames/s "
        "| speed-up | passes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in [result["reference"], *result["candidates"]]:
        ba, span = row["balanced_accuracy"], row["balanced_accuracy_range"]
        ba_text = "n/a" if ba is None else f"{ba:.3f} ({span[0]:.2f}-{span[1]:.2f})"
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {row['evaluations_per_window']} | {row['psnr']:.2f} | "
            f"{ba_text} | {row['auc']:.3f} | {row['frames_per_second']:.1f} | "
            f"{row.get('speedup', 1.0):.2f}x | {row.get('passes', 'reference')} |"
        )
    chosen = result["chosen"]
    lines.append("")
    lines.append(
        f"Certified: {chosen['sampler']}:{chosen['steps']} (GRPO in imagination uses it for these weights)."
        if chosen
        else "No candidate matched the reference's fidelity: imagination keeps the default sampler."
    )
    return "\n".join(lines)


def imagination_sampler(
    checkpoint: str | Path | None, sampling_steps: int | None = None, sampler: str | None = None
) -> tuple[str | None, int | None, str]:
    """(sampler, steps, why) for imagination: an explicit choice wins; otherwise the sampler
    certified for this checkpoint's weights; otherwise the model's default (None, None)."""
    if sampler is not None or sampling_steps is not None:
        return sampler, sampling_steps, "asked for"
    certified = certified_sampler(checkpoint) if checkpoint is not None else None
    if certified is None:
        return None, None, "the model's default (no few-step sampler certified for these weights)"
    return certified[0], certified[1], f"certified for these weights in {Path(checkpoint) / RECORD_FILE}"
