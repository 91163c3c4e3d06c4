"""`wmpo wm-train` (pretrain a world model on stored episodes) and `wmpo align` (Policy Behavior Alignment).

    wmpo wm-train --store data/demos --robot so101_sim --config tiny --out data/wm/pretrained
    wmpo align --store data/rollouts --from data/wm/pretrained --out data/wm/aligned-v3 --policy-version v3

Both run unchanged on one CPU, one GPU or many GPUs:
    torchrun --nproc_per_node 8 -m wmpo_core.cli align --store ... --from ... --out ...
docs/world_model.md explains the model, the stages and the checkpoint layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wmpo_core.cli_args import add_device_argument

TRAIN_FLAGS = {
    # flag: (TrainConfig field, type, help)
    "--steps": ("steps", int, "transformer optimiser steps"),
    "--batch-size": ("batch_size", int, "windows per step per process"),
    "--lr": ("lr", float, "transformer peak learning rate (AdamW)"),
    "--warmup-steps": ("warmup_steps", int, "linear learning-rate warm-up steps"),
    "--grad-clip": ("grad_clip", float, "gradient-norm clip"),
    "--ema-decay": (
        "ema_decay",
        float,
        "EMA decay of the transformer weights (the saved weights are the EMA)",
    ),
    "--vae-steps": (
        "vae_steps",
        int,
        "VAE optimiser steps before the transformer stage (0 = keep the VAE as is)",
    ),
    "--vae-batch-size": ("vae_batch_size", int, "frames per VAE step per process"),
    "--vae-lr": ("vae_lr", float, "VAE learning rate"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints (per stage)"),
    "--keep-checkpoints": ("keep_checkpoints", int, "how many checkpoints to keep"),
    "--log-every": ("log_every", int, "steps between TensorBoard/progress-bar updates"),
    "--seed": ("seed", int, "random seed"),
}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--store", required=True, help="episode store to train on")
    parser.add_argument(
        "--out", required=True, type=Path, help="run directory; the finished world model is written here"
    )
    if command == "align":
        parser.add_argument(
            "--from",
            dest="init_from",
            metavar="CHECKPOINT",
            required=True,
            type=Path,
            help="world-model checkpoint to fine-tune",
        )
        parser.add_argument(
            "--policy-version", help="only episodes recorded by this policy version (default: any)"
        )
        parser.add_argument(
            "--source",
            default="policy",
            choices=["policy", "teleop", "scripted", "any"],
            help="episode source to align on (default: policy rollouts)",
        )
        parser.add_argument("--robot", help="robot config name or path (default: the checkpoint's)")
    else:
        parser.add_argument("--config", default="tiny", help="model preset (tiny, xl) or a JSON config file")
        parser.add_argument("--robot", default="so101_sim", help="robot config name or path")
        parser.add_argument("--camera", help="camera to model (default: the robot's first camera)")
        parser.add_argument(
            "--source",
            default="any",
            choices=["policy", "teleop", "scripted", "any"],
            help="episode source filter",
        )
    parser.add_argument(
        "--episodes",
        default="all",
        help="episode selection after the filters: all, first:N, last:N, or comma-separated episode ids",
    )
    parser.add_argument(
        "--success",
        default="any",
        choices=["any", "true", "false"],
        help="filter by success label (alignment keeps failures: the default is any)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    add_device_argument(parser)
    group = parser.add_argument_group("training overrides (defaults come from the preset)")
    for flag, (_, kind, help_text) in TRAIN_FLAGS.items():
        group.add_argument(flag, type=kind, help=help_text)


def run(args: argparse.Namespace) -> int:
    import sys

    from pydantic import ValidationError
    from wmpo_core.episode_store import EpisodeStore, StoreError
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    from wmpo_learner import distributed

    from .config import align_train_config, load_preset
    from .data import select_episodes
    from .model import WorldModel, WorldModelLoadError
    from .trainer import TrainingPlan, WorldModelTrainer, latest_checkpoint

    def fail(message: str) -> int:
        print(f"wmpo {args.command}: {message}", file=sys.stderr)
        return 2

    out: Path = args.out
    if not args.resume and out.exists() and any(out.iterdir()):
        return fail(f"{out} is not empty; pass --resume to continue that run or choose another --out")
    if args.resume and latest_checkpoint(out) is None:
        print(
            f"wmpo {args.command}: no checkpoint in {out}/checkpoints yet; starting from the beginning",
            file=sys.stderr,
        )
    try:
        if args.command == "align":
            parent = WorldModel.load(args.init_from)
            robot = load_robot_config(args.robot or parent.robot_config_name)
            model_config, camera = parent.config, parent.camera
            train = align_train_config(parent.config)
            calibrate = False
            del parent
        else:
            robot = load_robot_config(args.robot)
            model_config, train = load_preset(args.config)
            camera = args.camera or robot.camera_names[0]
            calibrate = model_config.vae.pretrained is None
        if camera not in robot.camera_names:
            return fail(f"robot '{robot.name}' has no camera '{camera}' (cameras: {robot.camera_names})")
        overrides = {
            field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in TRAIN_FLAGS.items()
        }
        train = train.model_validate(
            {**train.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
        store = EpisodeStore.open(args.store)
        success = {"any": None, "true": True, "false": False}[args.success]
        source = None if args.source == "any" else args.source
        episodes = [
            m
            for m in select_episodes(
                store,
                args.episodes,
                source=source,
                success=success,
                policy_version=getattr(args, "policy_version", None),
            )
            if m.robot_config_name == robot.name
        ]
    except ValidationError as exc:  # an override out of range: name the flag, one line
        return fail("; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    except (StoreError, RobotConfigError, WorldModelLoadError, ValueError) as exc:
        return fail(str(exc))
    if not episodes:
        return fail(f"no episodes of robot '{robot.name}' in {args.store} match the selection")
    plan = TrainingPlan(
        command=args.command,
        store=Path(args.store),
        out=out,
        robot=robot,
        camera=camera,
        episodes=episodes,
        model_config=model_config,
        train=train,
        init_from=getattr(args, "init_from", None),
        resume=args.resume,
        calibrate_latents=calibrate,
    )
    try:
        ctx = distributed.setup(args.device)
    except (ValueError, RuntimeError) as exc:
        return fail(str(exc))
    try:
        WorldModelTrainer(plan, ctx).fit()
    finally:
        distributed.teardown(ctx)
    return 0
