"""`wmpo imagination-check`: can GRPO trust this world model and reward model? Two measured links.

1. Outcome agreement. On real rollouts of the policy (successes and failures), replay each
   episode's real actions in the world model from its real first frame, score the imagined video
   with the reward model, and compare with the real outcome: balanced accuracy, the AUC of the
   reward score (the highest window probability), imagined vs real success rate and the confusion
   counts. Beside it, the same reward model on the *real* videos: its own ceiling. If imagined
   outcomes do not follow real ones here, GRPO in imagination learns from noise.
2. Policy ranking. For policy versions whose real success rate was measured (`wmpo eval --json`),
   roll each out greedily inside the world model from the same real start frames and rank them by
   imagined success; Spearman's correlation with the real ranking says whether imagination can
   tell a better policy from a worse one, which is what GRPO and the promotion rule rely on.

    wmpo imagination-check --store S --wm W --reward R --policy-version V \\
        --rank base=eval_base.json --rank round1=eval_r1.json --rank round2=eval_r2.json --json check.json

Every `wmpo iterate` round runs part 1 before it decides whether to promote its new policy.
"""

from __future__ import annotations

import argparse
import json
import sys
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
from wmpo_core.episode_store import EpisodeMeta, EpisodeStore, StoreError

from wmpo_learner.reward.threshold import select_threshold
from wmpo_learner.stats import Confusion, rank_auc, spearman
from wmpo_learner.world_model.data import read_episode, select_episodes

DEFAULT_MIN_BALANCED_ACCURACY = 0.7
"""Below this outcome agreement a round's imagined improvements are not trusted (no promotion)."""


def trained_on(world_model: Any, reward_metadata: Any) -> set[str]:
    """Episode ids either model has seen in training."""
    seen = {e for h in world_model.provenance.get("history", []) for e in h.get("episodes", [])}
    return seen | set(reward_metadata.training.episodes if reward_metadata.training is not None else [])


def replay_videos(
    world_model: Any,
    store: EpisodeStore,
    episodes: Sequence[EpisodeMeta],
    sampling_steps: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(imagined, real) videos of `episodes`: each episode's real actions replayed in the world model
    from its real first frame (at the model's resolution), and its real frames."""
    wm, camera = world_model, world_model.camera
    generator = torch.Generator().manual_seed(seed)
    imagined_videos, real_videos = [], []
    batches = [episodes[i : i + batch_size] for i in range(0, len(episodes), batch_size)]
    for batch in tqdm(
        batches, desc="replay in imagination", unit="batch", disable=not progress, dynamic_ncols=True
    ):
        data = [read_episode(store, m, camera, wm.config.resolution) for m in batch]
        n = max(len(actions) for _, actions in data)
        actions = np.stack([np.concatenate([a, np.repeat(a[-1:], n - len(a), axis=0)]) for _, a in data])
        replayed = wm.replay(np.stack([frames[0] for frames, _ in data]), actions, generator, sampling_steps)
        for (frames, a), video in zip(data, replayed, strict=True):
            imagined_videos.append(np.concatenate([frames[:1], video[: len(a)]]))
        real_videos += [store.episode(m.episode_id).frames(camera) for m in batch]
    return imagined_videos, real_videos


def _labelled(episodes: Sequence[EpisodeMeta]) -> list[EpisodeMeta]:
    labelled = [m for m in episodes if m.success is not None and m.num_steps >= 1]
    if not labelled:
        raise ValueError("the imagination check needs episodes labelled with their real success")
    return labelled


def outcome_agreement(
    world_model: Any,
    reward_model: Any,
    store: EpisodeStore,
    episodes: Sequence[EpisodeMeta],
    held_out: bool,
    sampling_steps: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Link 1 of the module docstring on `episodes` (labelled with their real success)."""
    labelled = _labelled(episodes)
    imagined_videos, real_videos = replay_videos(
        world_model, store, labelled, sampling_steps, batch_size, seed, progress
    )
    real = [bool(m.success) for m in labelled]
    imagined = reward_model.detect_batch(imagined_videos)
    on_real = reward_model.detect_batch(real_videos)

    def summary(detections) -> dict[str, Any]:
        predicted = [d.success for d in detections]
        confusion = Confusion.from_outcomes(predicted, real)
        return {
            "balanced_accuracy": confusion.balanced_accuracy,
            "auc": rank_auc([float(d.scores.max()) for d in detections], real),
            "predicted_success": float(np.mean(predicted)),
            "confusion": confusion.to_dict(),
        }

    result = summary(imagined)
    return {
        "episodes": len(labelled),
        "held_out": held_out,
        "threshold": reward_model.threshold,
        "balanced_accuracy": result["balanced_accuracy"],
        "auc": result["auc"],
        "imagined_success": result["predicted_success"],
        "real_success": float(np.mean(real)),
        "confusion": result["confusion"],
        "reward_on_real_videos": summary(on_real),
        "episode_ids": [m.episode_id for m in labelled],
    }


def calibrate_threshold(
    world_model: Any,
    reward_model: Any,
    store: EpisodeStore,
    episodes: Sequence[EpisodeMeta],
    sampling_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-choose the reward model's threshold for *imagined* video: replay real, labelled episodes
    (typically those the world model was aligned on) and take the best-F1 threshold of the reward
    scores of their imagined videos against their real outcomes. A reward model trained and
    thresholded on real frames reads the world model's blurrier frames differently; this puts its
    decision where imagined successes and failures separate."""
    labelled = _labelled(episodes)
    imagined_videos, _ = replay_videos(
        world_model, store, labelled, sampling_steps, seed=seed, progress=progress
    )
    scores = [float(d.scores.max()) for d in reward_model.detect_batch(imagined_videos)]
    best, _ = select_threshold(scores, [bool(m.success) for m in labelled])
    return {
        "threshold": best.threshold,
        "previous_threshold": reward_model.threshold,
        "episodes": len(labelled),
        "f1": best.f1,
    }


def imagined_success(
    world_model: Any,
    reward_model: Any,
    policy: Any,
    first_frames: np.ndarray,
    instructions: Sequence[str],
    horizon: int,
    sampling_steps: int | None = None,
    seed: int = 0,
    sampler: str | None = None,
) -> float:
    """Success rate of `policy` acting greedily inside the world model from each of `first_frames`,
    with the world model's noise seeded by `seed` (the same seed gives every policy the same noise)
    and its ODE solver `sampler` at `sampling_steps` (default: Euler at the model's steps)."""
    from wmpo_learner.world_model.imagine import imagine

    was_training = policy.training
    policy.eval()
    rollouts = imagine(
        world_model,
        policy,
        first_frames,
        list(instructions),
        horizon=horizon,
        group_size=1,
        greedy=True,
        generator=torch.Generator(device=world_model.device).manual_seed(seed),
        sampling_steps=sampling_steps,
        sampler=sampler,
    )
    policy.train(was_training)
    return float(np.mean([d.success for d in reward_model.detect_batch(rollouts.frames)]))


def policy_ranking(
    world_model: Any,
    reward_model: Any,
    policies: Sequence[tuple[str, Any, float]],
    first_frames: np.ndarray,
    instructions: Sequence[str],
    horizon: int,
    sampling_steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Link 2 of the module docstring: `policies` are (name, VLA, measured real success rate)."""
    rows = []
    for name, policy, real in tqdm(
        policies, desc="rank policies in imagination", unit="policy", dynamic_ncols=True
    ):
        rate = imagined_success(
            world_model, reward_model, policy, first_frames, instructions, horizon, sampling_steps, seed
        )
        rows.append(
            {
                "name": name,
                "version": getattr(policy, "version", None),
                "real_success": real,
                "imagined_success": rate,
            }
        )
    return {
        "versions": len(rows),
        "start_frames": len(first_frames),
        "spearman": spearman([r["imagined_success"] for r in rows], [r["real_success"] for r in rows]),
        "policies": rows,
    }


@dataclass
class ImaginationCheckConfig:
    """`wmpo imagination-check`: outcome agreement (and optionally policy ranking) on real rollouts."""

    store: Path = option(help="episode store holding real rollouts of the policy")
    wm: Path = option(help="world-model checkpoint")
    reward: Path = option(help="reward-model checkpoint")
    robot: str | None = option(None, "robot config name or YAML (None: the world model's)")
    policy_version: str | None = option(
        None, "check on the rollouts of this policy version (None: every policy rollout)"
    )
    include_trained: bool = option(
        False,
        "also use episodes the world model or reward model were trained on (the result is then marked "
        "held_out=false); without it, only held-out episodes are used",
    )
    max_episodes: int = option(64, "use at most this many (newest) episodes")
    rank: list[str] = option(
        [],
        "a policy checkpoint and its measured real success (`wmpo eval --json` output); give 3 or more",
        metavar="POLICY_DIR=EVAL_JSON",
        repeat=True,
    )
    rank_frames: int = option(
        32,
        "real start frames for the policy ranking: the first frames of the newest policy episodes "
        "of --store (fewer when the store holds fewer)",
    )
    horizon: int | None = option(
        None, "imagined steps in the policy ranking (None: the robot's episode limit)"
    )
    sampling_steps: int | None = option(None, "world-model sampling steps (None: its config)")
    seed: int = option(0, "world-model noise seed")
    device: str = option("cpu", DEVICE_HELP, type=torch_device)
    json: Path | None = option(None, "write the result here as JSON")
    calibrate_on: Path | None = option(
        None,
        "first re-threshold the reward model on world-model replays of this store's labelled policy "
        "rollouts (of --policy-version; typically the ones the world model was aligned on), then check with "
        "it",
        metavar="STORE",
    )
    calibrated_reward: Path | None = option(
        None, "with --calibrate-on: write the re-thresholded reward model here (for GRPO)", metavar="DIR"
    )


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = __doc__.split("\n\n")[0]
    add_config_arguments(parser, ImaginationCheckConfig)


def _fail(message: str) -> int:
    print(f"wmpo imagination-check: {message}", file=sys.stderr)
    return 2


def imagination_check(config: ImaginationCheckConfig) -> int:
    """The `imagination_check` stage; returns the exit status."""
    from wmpo_core.robot_config import RobotConfigError, load_robot_config
    from wmpo_core.vla.checkpoint import load_checkpoint as load_vla

    from wmpo_learner.grpo.run import initial_frames
    from wmpo_learner.reward.checkpoint import CheckpointError
    from wmpo_learner.reward.checkpoint import load_checkpoint as load_reward
    from wmpo_learner.reward.checkpoint import save_checkpoint as save_reward
    from wmpo_learner.world_model.model import WorldModel, WorldModelLoadError

    if config.max_episodes < 1 or config.rank_frames < 1:
        return _fail("--max-episodes and --rank-frames must be >= 1")
    try:
        device = choose_device(config.device)
    except DeviceError as exc:
        return _fail(f"--device {exc}")
    ranked: list[tuple[str, Path, float]] = []
    for item in config.rank:
        directory, sep, eval_json = item.partition("=")
        if not sep:
            return _fail(f"--rank expects POLICY_DIR=EVAL_JSON, got {item!r}")
        try:
            ranked.append(
                (
                    directory,
                    Path(directory),
                    float(json.loads(Path(eval_json).read_text())["success"]["rate"]),
                )
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            return _fail(f"--rank {item}: cannot read the measured success rate from {eval_json} ({exc})")
    if ranked and len(ranked) < 3:
        return _fail(f"--rank needs 3 or more policies for a rank correlation, got {len(ranked)}")
    try:
        wm = WorldModel.load(config.wm, device=device).eval()
        rm, rm_meta = load_reward(config.reward, device=str(device))
        robot = load_robot_config(config.robot or wm.robot_config_name)
        store = EpisodeStore.open(config.store)
        metas = [
            m
            for m in select_episodes(store, None, source="policy", policy_version=config.policy_version)
            if m.robot_config_name == robot.name and m.success is not None
        ]
        seen = trained_on(wm, rm_meta)
        held = [m for m in metas if m.episode_id not in seen]
        if not config.include_trained:
            metas = held
        metas = metas[-config.max_episodes :]
        if not metas:
            return _fail(
                f"no {'held-out ' if not config.include_trained else ''}labelled policy rollouts in "
                f"{config.store}"
                f"{' of version ' + config.policy_version if config.policy_version else ''} (pass "
                "--include-trained to use trained-on ones)"
            )
        calibration = None
        if config.calibrate_on is not None:
            if config.calibrated_reward is None:
                return _fail(
                    "--calibrate-on needs --calibrated-reward DIR to write the re-thresholded reward model to"
                )
            source = EpisodeStore.open(config.calibrate_on)
            chosen = [
                m
                for m in select_episodes(source, None, source="policy", policy_version=config.policy_version)
                if m.robot_config_name == robot.name and m.success is not None
            ]
            calibration = calibrate_threshold(
                wm, rm, source, chosen[-config.max_episodes :], config.sampling_steps, config.seed
            )
            rm.threshold = calibration["threshold"]
            save_reward(
                rm, config.calibrated_reward, validation=rm_meta.validation, training=rm_meta.training
            )
            calibration["store"], calibration["reward_model"] = (
                str(config.calibrate_on),
                str(config.calibrated_reward),
            )
        result: dict[str, Any] = {
            "store": str(config.store),
            "world_model": str(config.wm),
            "reward_model": str(config.reward),
            "calibration": calibration,
            "outcome_agreement": outcome_agreement(
                wm,
                rm,
                store,
                metas,
                held_out=not any(m.episode_id in seen for m in metas),
                sampling_steps=config.sampling_steps,
                seed=config.seed,
            ),
        }
        if ranked:
            frames, texts, _ = initial_frames(config.store, robot, wm.camera, "policy")
            frames, texts = frames[-config.rank_frames :], texts[-config.rank_frames :]
            policies = [(name, load_vla(path, robot, device=device), real) for name, path, real in ranked]
            result["policy_ranking"] = policy_ranking(
                wm,
                rm,
                policies,
                frames,
                texts,
                config.horizon or robot.max_episode_steps,
                config.sampling_steps,
                config.seed,
            )
    except (
        StoreError,
        RobotConfigError,
        WorldModelLoadError,
        CheckpointError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        return _fail(str(exc))
    print(format_report(result))
    if config.json is not None:
        config.json.parent.mkdir(parents=True, exist_ok=True)
        config.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    return imagination_check(config_from_args(ImaginationCheckConfig, args))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_report(result: dict[str, Any]) -> str:
    """The check as a few lines of Markdown (also used by the run report)."""
    o = result["outcome_agreement"]
    r, c = o["reward_on_real_videos"], o["confusion"]
    lines = []
    if result.get("calibration"):
        c0 = result["calibration"]
        lines.append(
            f"Reward threshold re-chosen on world-model replays of {c0['episodes']} labelled rollouts: "
            f"{c0['previous_threshold']:.3f} -> {c0['threshold']:.3f} (F1 {c0['f1']:.2f} there)."
        )
    lines += [
        f"Outcome agreement on {o['episodes']} {'held-out' if o['held_out'] else 'trained-on'} real rollouts "
        f"(real success {o['real_success']:.2f}): imagined success {o['imagined_success']:.2f}, "
        f"balanced accuracy {_num(o['balanced_accuracy'])}, AUC {_num(o['auc'])} "
        f"(TP {c['true_positive']}, FP {c['false_positive']}, TN {c['true_negative']}, FN "
        f"{c['false_negative']}); "
        f"reward model on the real videos: balanced accuracy {_num(r['balanced_accuracy'])}, AUC "
        f"{_num(r['auc'])}.",
    ]
    if "policy_ranking" in result:
        p = result["policy_ranking"]
        rows = ", ".join(
            f"{x['name']} real {x['real_success']:.2f} / imagined {x['imagined_success']:.2f}"
            for x in p["policies"]
        )
        lines.append(
            f"Policy ranking over {p['versions']} versions from {p['start_frames']} real start frames: "
            f"Spearman {_num(p['spearman'])} ({rows})."
        )
    return "\n".join(lines)
