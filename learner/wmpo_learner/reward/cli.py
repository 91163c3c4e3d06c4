"""`wmpo reward`: train the success reward model, pick its threshold, report precision/recall/F1.

wmpo reward --store data/rollouts --robot so101_sim --out runs/reward            # tiny, CPU
wmpo reward --store ... --robot ... --out ... --from MCG-NJU/videomae-base       # paper's backbone
wmpo reward --store ... --robot ... --out ... --from runs/reward --steps 500      # continue on new data
wmpo reward --store ... --robot ... --out ... --from runs/reward --steps 0       # re-threshold only
wmpo reward --store data/test --robot so101_sim --from runs/reward --evaluate    # score a store
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from wmpo_core.cli_args import add_device_argument

if TYPE_CHECKING:
    from wmpo_learner.reward.threshold import EpisodeMetrics


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--store", required=True, help="episode store (Zarr directory) with success-labelled episodes"
    )
    parser.add_argument(
        "--robot", required=True, help="robot config name or YAML path; only its episodes are used"
    )
    parser.add_argument("--out", help="directory to write the checkpoint to (required unless --evaluate)")
    parser.add_argument(
        "--config",
        choices=["tiny", "base"],
        default=None,
        help="model size when training from scratch (default: tiny; 'tiny' = 64 px, CPU-sized)",
    )
    parser.add_argument(
        "--from",
        dest="init",
        metavar="CKPT_OR_PRETRAINED",
        help="start from a reward model checkpoint directory (continue training; its training "
        "episodes are never held out) or a pretrained VideoMAE id/path such as "
        "MCG-NJU/videomae-base (224 px; needs the hub or a local copy)",
    )
    parser.add_argument(
        "--camera", help="camera to classify (default: the checkpoint's, else the robot config's first)"
    )
    parser.add_argument(
        "--steps", type=int, default=1000, help="optimizer steps (default 1000; 0 = only re-threshold --from)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="clips per step, half positive (even; default 16)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="AdamW learning rate (default: 1e-4 as in the paper when fine-tuning --from, 5e-4 from scratch)",
    )
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.25,
        help="fraction of successful and of failed episodes held out to choose the threshold (default 0.25)",
    )
    parser.add_argument(
        "--keep-overlapping-negatives",
        action="store_true",
        help="also use windows of successful episodes that overlap the final (positive) window as "
        "negatives (default: leave them out as ambiguous)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, initialization and batches (default 0)"
    )
    add_device_argument(parser)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--tensorboard", help="TensorBoard log directory (default: OUT/tensorboard)")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="only evaluate the --from checkpoint on every labelled episode of --store at its "
        "saved threshold; writes nothing",
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    import torch
    from wmpo_core.episode_store import EpisodeStore, StoreError
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    from wmpo_learner.reward.checkpoint import CheckpointError, is_checkpoint, load_checkpoint
    from wmpo_learner.reward.dataset import labelled_episodes
    from wmpo_learner.reward.model import RewardModel
    from wmpo_learner.reward.threshold import episode_metrics
    from wmpo_learner.reward.train import TrainSettings, score_stored_episodes, train_reward_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def fail(message: str) -> int:
        print(f"wmpo reward: {message}", file=sys.stderr)
        return 2

    if not args.evaluate and not args.out:
        return fail("--out is required (where to save the checkpoint)")
    if args.evaluate and not (args.init and is_checkpoint(args.init)):
        return fail("--evaluate needs --from <reward model checkpoint directory>")
    if args.steps < 0 or args.batch_size < 2 or args.batch_size % 2:
        return fail("--steps must be >= 0 and --batch-size an even number >= 2")
    if not 0.0 < args.holdout_fraction < 1.0:
        return fail(f"--holdout-fraction must be in (0, 1), got {args.holdout_fraction}")
    if args.init and args.config:
        return fail("give either --config (train from scratch) or --from, not both")
    if args.steps == 0 and not args.init:
        return fail("--steps 0 only re-thresholds an existing model: add --from <checkpoint>")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    try:
        robot = load_robot_config(args.robot)
        store = EpisodeStore.open(args.store, mode="r")
    except (RobotConfigError, StoreError, FileNotFoundError) as exc:
        return fail(str(exc))

    torch.manual_seed(args.seed)  # the initialization of a new model's weights and head
    already_trained_on: list[str] = []
    try:
        if args.init and is_checkpoint(args.init):
            model, meta = load_checkpoint(args.init, device=device)
            if args.camera and args.camera != model.spec.camera:
                return fail(
                    f"checkpoint {args.init} classifies camera '{model.spec.camera}', not '{args.camera}'"
                )
            already_trained_on = meta.training.episodes if meta.training else []
            init = f"checkpoint:{args.init}"
        else:
            camera = args.camera or robot.camera_names[0]
            robot.camera(camera)  # raises with the list of cameras
            if args.init:
                model, init = RewardModel.from_pretrained(args.init, camera), args.init
            else:
                preset = args.config or "tiny"
                model, init = RewardModel.from_preset(preset, camera), f"preset:{preset}"
            model.to(device)
    except (CheckpointError, KeyError, OSError) as exc:
        return fail(str(exc))

    if args.evaluate:
        try:
            metas = labelled_episodes(store, robot.name, model.spec.camera)
        except ValueError as exc:
            return fail(str(exc))
        ids = [m.episode_id for m in metas]
        scores = score_stored_episodes(model, store, ids)
        metrics = episode_metrics(
            [s.max() for s in scores], [bool(m.success) for m in metas], model.threshold
        )
        _print_metrics(f"{len(ids)} episodes of {args.store}", metrics)
        return 0

    from torch.utils.tensorboard import SummaryWriter

    lr = args.lr if args.lr is not None else (1e-4 if args.init else 5e-4)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=lr,
        weight_decay=args.weight_decay,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        exclude_overlapping_negatives=not args.keep_overlapping_negatives,
        num_workers=args.num_workers,
    )
    writer = SummaryWriter(args.tensorboard or f"{args.out}/tensorboard")
    try:
        meta = train_reward_model(model, store, robot, settings, args.out, init, already_trained_on, writer)
    except ValueError as exc:
        return fail(str(exc))
    finally:
        writer.close()
    val = meta.validation
    assert val is not None and meta.training is not None
    print(
        f"\nreward model saved to {args.out} ({init}, {meta.training.steps} steps in "
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


def _print_metrics(title: str, m: EpisodeMetrics) -> None:
    print(
        f"{title}: threshold {m.threshold:.3f}  precision {m.precision:.3f}  recall {m.recall:.3f}  F1 "
        f"{m.f1:.3f}  "
        f"(TP {m.true_positives} FP {m.false_positives} FN {m.false_negatives} TN {m.true_negatives})"
    )
