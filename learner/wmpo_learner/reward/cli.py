"""`wmpo reward`: train the success reward model, pick its threshold, report precision/recall/F1.

wmpo reward --store data/rollouts --robot so101_sim --out runs/reward            # tiny, CPU
wmpo reward --store ... --robot ... --out ... --from MCG-NJU/videomae-base       # paper's backbone
wmpo reward --store ... --robot ... --out ... --from runs/reward --steps 500      # continue on new data
wmpo reward --store ... --robot ... --out ... --from runs/reward --steps 0       # re-threshold only
wmpo reward --store data/test --robot so101_sim --from runs/reward --evaluate    # score a store
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option

if TYPE_CHECKING:
    from wmpo_learner.reward.threshold import EpisodeMetrics


@dataclass
class RewardConfig:
    """`wmpo reward`: train (or only re-threshold, or only evaluate) the success reward model."""

    store: Path = option(help="episode store (Zarr directory) with success-labelled episodes")
    robot: str = option(help="robot config name or YAML path; only its episodes are used")
    out: Path | None = option(None, "directory to write the checkpoint to (required unless --evaluate)")
    config: Literal["tiny", "base"] | None = option(
        None, "model size when training from scratch (None: tiny; 'tiny' = 64 px, CPU-sized)"
    )
    init: str | None = option(
        None,
        "start from a reward model checkpoint directory (continue training; its training episodes are "
        "never held out) or a pretrained VideoMAE id/path such as MCG-NJU/videomae-base (224 px; needs "
        "the hub or a local copy)",
        flag="--from",
        metavar="CKPT_OR_PRETRAINED",
    )
    camera: str | None = option(
        None, "camera to classify (None: the checkpoint's, else the robot config's first)"
    )
    steps: int = option(1000, "optimizer steps (0 = only re-threshold --from)")
    batch_size: int = option(16, "clips per step, half positive (even)")
    lr: float | None = option(
        None, "AdamW learning rate (None: 1e-4 as in the paper when fine-tuning --from, 5e-4 from scratch)"
    )
    weight_decay: float = option(1e-4, "AdamW weight decay")
    holdout_fraction: float = option(
        0.25, "fraction of successful and of failed episodes held out to choose the threshold"
    )
    keep_overlapping_negatives: bool = option(
        False,
        "also use windows of successful episodes that overlap the final (positive) window as negatives "
        "(by default they are left out as ambiguous)",
    )
    seed: int = option(0, "seed of the split, initialization and batches")
    device: str = option("auto", DEVICE_HELP, type=torch_device)
    num_workers: int = option(0, "DataLoader worker processes")
    tensorboard: Path | None = option(None, "TensorBoard log directory (None: OUT/tensorboard)")
    evaluate: bool = option(
        False,
        "only evaluate the --from checkpoint on every labelled episode of --store at its saved threshold; "
        "writes nothing",
    )


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_config_arguments(parser, RewardConfig)


def train_reward(config: RewardConfig) -> int:
    """The `train_reward` stage; returns the exit status."""
    import logging
    import sys

    import torch
    from wmpo_core.devices import choose_device  # imports torch: kept out of `wmpo --help`
    from wmpo_core.episode_store import EpisodeStore, StoreError
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    from wmpo_learner.reward.checkpoint import CheckpointError, is_checkpoint, load_checkpoint
    from wmpo_learner.reward.dataset import labelled_episodes
    from wmpo_learner.reward.model import RewardModel
    from wmpo_learner.reward.threshold import episode_metrics
    from wmpo_learner.reward.train import RewardTrainConfig, score_stored_episodes, train_reward_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def fail(message: str) -> int:
        print(f"wmpo reward: {message}", file=sys.stderr)
        return 2

    if not config.evaluate and not config.out:
        return fail("--out is required (where to save the checkpoint)")
    if config.evaluate and not (config.init and is_checkpoint(config.init)):
        return fail("--evaluate needs --from <reward model checkpoint directory>")
    if config.steps < 0 or config.batch_size < 2 or config.batch_size % 2:
        return fail("--steps must be >= 0 and --batch-size an even number >= 2")
    if not 0.0 < config.holdout_fraction < 1.0:
        return fail(f"--holdout-fraction must be in (0, 1), got {config.holdout_fraction}")
    if config.init and config.config:
        return fail("give either --config (train from scratch) or --from, not both")
    if config.steps == 0 and not config.init:
        return fail("--steps 0 only re-thresholds an existing model: add --from <checkpoint>")
    device = str(choose_device(config.device))

    try:
        robot = load_robot_config(config.robot)
        store = EpisodeStore.open(config.store, mode="r")
    except (RobotConfigError, StoreError, FileNotFoundError) as exc:
        return fail(str(exc))

    torch.manual_seed(config.seed)  # the initialization of a new model's weights and head
    already_trained_on: list[str] = []
    try:
        if config.init and is_checkpoint(config.init):
            model, meta = load_checkpoint(config.init, device=device)
            if config.camera and config.camera != model.spec.camera:
                return fail(
                    f"checkpoint {config.init} classifies camera '{model.spec.camera}', not '{config.camera}'"
                )
            already_trained_on = meta.training.episodes if meta.training else []
            init = f"checkpoint:{config.init}"
        else:
            camera = config.camera or robot.camera_names[0]
            robot.camera(camera)  # raises with the list of cameras
            if config.init:
                model, init = RewardModel.from_pretrained(config.init, camera), config.init
            else:
                preset = config.config or "tiny"
                model, init = RewardModel.from_preset(preset, camera), f"preset:{preset}"
            model.to(device)
    except (CheckpointError, KeyError, OSError) as exc:
        return fail(str(exc))

    if config.evaluate:
        try:
            metas = labelled_episodes(store, robot.name, model.spec.camera)
        except ValueError as exc:
            return fail(str(exc))
        ids = [m.episode_id for m in metas]
        scores = score_stored_episodes(model, store, ids)
        metrics = episode_metrics(
            [s.max() for s in scores], [bool(m.success) for m in metas], model.threshold
        )
        _print_metrics(f"{len(ids)} episodes of {config.store}", metrics)
        return 0

    from torch.utils.tensorboard import SummaryWriter

    lr = config.lr if config.lr is not None else (1e-4 if config.init else 5e-4)
    settings = RewardTrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        learning_rate=lr,
        weight_decay=config.weight_decay,
        holdout_fraction=config.holdout_fraction,
        seed=config.seed,
        exclude_overlapping_negatives=not config.keep_overlapping_negatives,
        num_workers=config.num_workers,
    )
    writer = SummaryWriter(str(config.tensorboard or f"{config.out}/tensorboard"))
    try:
        meta = train_reward_model(model, store, robot, settings, config.out, init, already_trained_on, writer)
    except ValueError as exc:
        return fail(str(exc))
    finally:
        writer.close()
    val = meta.validation
    assert val is not None and meta.training is not None
    print(
        f"\nreward model saved to {config.out} ({init}, {meta.training.steps} steps in "
        f"{meta.training.seconds:.0f} s)"
    )
    _print_metrics(f"{len(val.episodes)} held-out episodes, threshold chosen on them", val.metrics)
    _print_metrics(f"{len(val.episodes)} held-out episodes, untuned threshold", val.metrics_at_half)
    if val.finish_steps_early is not None:
        print(
            f"detection fires on average {val.finish_steps_early:.1f} steps before the last frame of "
            "held-out successes"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    return train_reward(config_from_args(RewardConfig, args))


def _print_metrics(title: str, m: EpisodeMetrics) -> None:
    print(
        f"{title}: threshold {m.threshold:.3f}  precision {m.precision:.3f}  recall {m.recall:.3f}  F1 "
        f"{m.f1:.3f}  "
        f"(TP {m.true_positives} FP {m.false_positives} FN {m.false_negatives} TN {m.true_negatives})"
    )
