"""`wmpo wm-train` (pretrain a world model on stored episodes) and `wmpo align` (Policy Behavior Alignment).

    wmpo wm-train --store data/demos --robot so101_sim --config tiny --out data/wm/pretrained
    wmpo align --store data/rollouts --from data/wm/pretrained --out data/wm/aligned-v3 --policy-version v3

Both run unchanged on one CPU, one GPU or many GPUs:
    torchrun --nproc_per_node 8 -m wmpo_core.cli align --store ... --from ... --out ...
docs/world_model.md explains the model, the stages and the checkpoint layout.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option

OVERRIDES = "training overrides (None: the preset's, or for align the preset's fine-tuning values)"


@dataclass(kw_only=True)
class TrainOverrides:
    """Optimisation settings that replace the preset's `TrainConfig` values when set."""

    steps: int | None = option(None, "transformer optimiser steps", group=OVERRIDES)
    batch_size: int | None = option(None, "windows per step per process", group=OVERRIDES)
    lr: float | None = option(None, "transformer peak learning rate (AdamW)", group=OVERRIDES)
    warmup_steps: int | None = option(None, "linear learning-rate warm-up steps", group=OVERRIDES)
    grad_clip: float | None = option(None, "gradient-norm clip", group=OVERRIDES)
    ema_decay: float | None = option(
        None, "EMA decay of the transformer weights (the saved weights are the EMA)", group=OVERRIDES
    )
    vae_steps: int | None = option(
        None, "VAE optimiser steps before the transformer stage (0 = keep the VAE as is)", group=OVERRIDES
    )
    vae_batch_size: int | None = option(None, "frames per VAE step per process", group=OVERRIDES)
    vae_lr: float | None = option(None, "VAE learning rate", group=OVERRIDES)
    checkpoint_every: int | None = option(None, "steps between checkpoints (per stage)", group=OVERRIDES)
    keep_checkpoints: int | None = option(None, "how many checkpoints to keep", group=OVERRIDES)
    log_every: int | None = option(None, "steps between TensorBoard/progress-bar updates", group=OVERRIDES)
    seed: int | None = option(None, "random seed", group=OVERRIDES)

    def overrides(self) -> dict[str, Any]:
        """The `TrainConfig` values this run sets."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(TrainOverrides)
            if getattr(self, f.name) is not None
        }


@dataclass(kw_only=True)
class WorldModelTrainConfig(TrainOverrides):
    """`wmpo wm-train`: pretrain a world model on stored episodes."""

    store: Path = option(help="episode store to train on")
    out: Path = option(help="run directory; the finished world model is written here")
    config: str = option("tiny", "model preset (tiny, xl) or a JSON config file")
    robot: str = option("so101_sim", "robot config name or path")
    camera: str | None = option(None, "camera to model (None: the robot's first camera)")
    source: Literal["policy", "teleop", "scripted", "any"] = option("any", "episode source filter")
    select: str = option(
        "all", "episode selection after the filters: all, first:N, last:N, or comma-separated episode ids"
    )
    success: Literal["any", "true", "false"] = option("any", "filter by success label")
    resume: bool = option(False, "continue from the newest checkpoint in --out")
    device: str = option("auto", DEVICE_HELP, type=torch_device)


@dataclass(kw_only=True)
class AlignConfig(TrainOverrides):
    """`wmpo align`: Policy Behavior Alignment, fine-tuning a world model on a policy's rollouts."""

    store: Path = option(help="episode store to train on")
    out: Path = option(help="run directory; the finished world model is written here")
    init_from: Path = option(help="world-model checkpoint to fine-tune", flag="--from", metavar="CHECKPOINT")
    policy_version: str | None = option(None, "only episodes recorded by this policy version (None: any)")
    source: Literal["policy", "teleop", "scripted", "any"] = option("policy", "episode source to align on")
    robot: str | None = option(None, "robot config name or path (None: the checkpoint's)")
    select: str = option(
        "all", "episode selection after the filters: all, first:N, last:N, or comma-separated episode ids"
    )
    success: Literal["any", "true", "false"] = option(
        "any", "filter by success label (alignment keeps failures)"
    )
    resume: bool = option(False, "continue from the newest checkpoint in --out")
    device: str = option("auto", DEVICE_HELP, type=torch_device)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_config_arguments(parser, AlignConfig if command == "align" else WorldModelTrainConfig)


def run(args: argparse.Namespace) -> int:
    return train_world_model(
        config_from_args(AlignConfig if args.command == "align" else WorldModelTrainConfig, args)
    )


def train_world_model(config: WorldModelTrainConfig | AlignConfig) -> int:
    """The `wm-train` or `align` stage (by the config's type); returns the exit status."""
    import sys

    from pydantic import ValidationError
    from wmpo_core.episode_store import EpisodeStore, StoreError
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    from wmpo_learner import distributed

    from .config import align_train_config, load_preset
    from .data import select_episodes
    from .model import WorldModel, WorldModelLoadError
    from .trainer import TrainingPlan, WorldModelTrainer, latest_checkpoint

    command = "align" if isinstance(config, AlignConfig) else "wm-train"

    def fail(message: str) -> int:
        print(f"wmpo {command}: {message}", file=sys.stderr)
        return 2

    out: Path = config.out
    if not config.resume and out.exists() and any(out.iterdir()):
        return fail(f"{out} is not empty; pass --resume to continue that run or choose another --out")
    if config.resume and latest_checkpoint(out) is None:
        print(
            f"wmpo {command}: no checkpoint in {out}/checkpoints yet; starting from the beginning",
            file=sys.stderr,
        )
    try:
        if command == "align":
            parent = WorldModel.load(config.init_from)
            robot = load_robot_config(config.robot or parent.robot_config_name)
            model_config, camera = parent.config, parent.camera
            train = align_train_config(parent.config)
            calibrate = False
            del parent
        else:
            robot = load_robot_config(config.robot)
            model_config, train = load_preset(config.config)
            camera = config.camera or robot.camera_names[0]
            calibrate = model_config.vae.pretrained is None
        if camera not in robot.camera_names:
            return fail(f"robot '{robot.name}' has no camera '{camera}' (cameras: {robot.camera_names})")
        train = train.model_validate({**train.model_dump(), **config.overrides()})
        store = EpisodeStore.open(config.store)
        success = {"any": None, "true": True, "false": False}[config.success]
        source = None if config.source == "any" else config.source
        episodes = [
            m
            for m in select_episodes(
                store,
                config.select,
                source=source,
                success=success,
                policy_version=getattr(config, "policy_version", None),
            )
            if m.robot_config_name == robot.name
        ]
    except ValidationError as exc:  # an override out of range: name the flag, one line
        return fail("; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    except (StoreError, RobotConfigError, WorldModelLoadError, ValueError) as exc:
        return fail(str(exc))
    if not episodes:
        return fail(f"no episodes of robot '{robot.name}' in {config.store} match the selection")
    plan = TrainingPlan(
        command=command,
        store=Path(config.store),
        out=out,
        robot=robot,
        camera=camera,
        episodes=episodes,
        model_config=model_config,
        train=train,
        init_from=getattr(config, "init_from", None),
        resume=config.resume,
        calibrate_latents=calibrate,
    )
    try:
        ctx = distributed.setup(config.device)
    except (ValueError, RuntimeError) as exc:
        return fail(str(exc))
    try:
        WorldModelTrainer(plan, ctx).fit()
    finally:
        distributed.teardown(ctx)
    return 0
