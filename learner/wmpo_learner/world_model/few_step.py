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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
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


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument(
        "--wm", type=Path, required=True, help="world-model checkpoint (the record is written here)"
    )
    parser.add_argument(
        "--reward", type=Path, required=True, help="reward-model checkpoint that scores imagined video"
    )
    parser.add_argument(
        "--store", type=Path, required=True, help="episode store with labelled policy rollouts"
    )
    parser.add_argument("--policy-version", default=None, help="only this policy version's rollouts")
    parser.add_argument(
        "--include-trained",
        action="store_true",
        help="also use episodes either model was trained on (default: held-out episodes only)",
    )
    parser.add_argument(
        "--max-episodes", type=int, default=64, help="use at most this many (newest) episodes"
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="SAMPLER:STEPS",
        help="default: euler at the model's sampling steps",
    )
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=["euler:1", "euler:2", "dpm++2m:2", "heun:2"],
        metavar="SAMPLER:STEPS",
        help=f"few-step samplers to try (SAMPLER one of {', '.join(SAMPLERS)})",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds; fidelity is their mean"
    )
    parser.add_argument(
        "--max-psnr-drop", type=float, default=0.5, help="dB below the reference (default 0.5)"
    )
    parser.add_argument(
        "--max-ba-drop", type=float, default=0.02, help="balanced accuracy below the reference (default 0.02)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="episodes imagined together")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device (default cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")


def _fail(message: str) -> int:
    print(f"wmpo wm-few-step: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from wmpo_core.episode_store import EpisodeStore, StoreError

    from wmpo_learner.imagination_check import trained_on
    from wmpo_learner.reward.checkpoint import CheckpointError
    from wmpo_learner.reward.checkpoint import load_checkpoint as load_reward
    from wmpo_learner.world_model.model import WorldModel, WorldModelLoadError

    if args.max_episodes < 1 or args.batch_size < 1:
        return _fail("--max-episodes and --batch-size must be >= 1")
    if args.max_psnr_drop < 0 or args.max_ba_drop < 0:
        return _fail("--max-psnr-drop and --max-ba-drop must be >= 0")
    try:
        device = choose_device(args.device)
    except DeviceError as exc:
        return _fail(f"--device {exc}")
    try:
        candidates = [parse_candidate(c) for c in args.candidates]
        wm = WorldModel.load(args.wm, device=device).eval()
        reference = parse_candidate(args.reference or f"euler:{wm.config.sampling_steps}")
        rm, rm_meta = load_reward(args.reward, device=str(device))
        store = EpisodeStore.open(args.store)
        metas = [
            m
            for m in select_episodes(store, None, source="policy", policy_version=args.policy_version)
            if m.robot_config_name == wm.robot_config_name and m.success is not None and m.num_steps >= 2
        ]
        seen = trained_on(wm, rm_meta)
        if not args.include_trained:
            metas = [m for m in metas if m.episode_id not in seen]
        metas = metas[-args.max_episodes :]
        if len({bool(m.success) for m in metas}) < 2:
            return _fail(
                f"{args.store} has {len(metas)} usable labelled rollouts; balanced accuracy needs "
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
            args.seeds,
            args.max_psnr_drop,
            args.max_ba_drop,
            args.batch_size,
        )
    except (StoreError, WorldModelLoadError, CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    result.update(
        world_model=str(args.wm),
        weights_sha256=weights_sha256(args.wm),
        reward_model=str(args.reward),
        store=str(args.store),
        held_out=not any(m.episode_id in seen for m in metas),
        device=str(wm.device),
    )
    text = json.dumps(result, indent=2) + "\n"
    tmp = args.wm / (RECORD_FILE + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.wm / RECORD_FILE)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(format_report(result))
    return 0


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
