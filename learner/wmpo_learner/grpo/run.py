"""Load what a GRPO run needs, train, and write the new policy version with its provenance.

Shared by `wmpo grpo`, `wmpo iterate` and the WMPO experiment, so every path produces the same
checkpoint layout: the VLA checkpoint (its manifest naming the parent version, the world model,
the reward model and the data it came from) plus `training/grpo_history.json` and TensorBoard logs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import option
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import RobotConfig, load_robot_config
from wmpo_core.sim_rollout import train_seeds

from wmpo_learner.grpo.algorithm import GRPOConfig
from wmpo_learner.imagination_check import imagined_success

IMAGINATION = "imagination (--env imagination)"
SIM = "simulator baseline (--env sim)"


@dataclass
class GRPORunConfig:
    """`wmpo grpo`: one GRPO run of a VLA checkpoint, in imagination (WMPO) or in the simulator."""

    policy: Path = option(
        help="VLA checkpoint directory to start from (--policy: the old spelling)",
        flag="--from",
        aliases=("--policy",),
        metavar="CHECKPOINT",
    )
    out: Path = option(help="directory for the improved checkpoint (and logs/)")
    robot: str = option("so101_sim", "robot config name or YAML")
    env: Literal["imagination", "sim"] = option("imagination", "where rollouts happen")
    version: str | None = option(None, "version string of the new policy (None: derived from its weights)")
    wm: Path | None = option(None, "world-model checkpoint (aligned to this policy)", group=IMAGINATION)
    reward: Path | None = option(None, "reward-model checkpoint", group=IMAGINATION)
    store: Path | None = option(
        None, "episode store whose episodes give the initial frames", group=IMAGINATION
    )
    initial_source: Literal["policy", "any"] = option(
        "policy",
        "episodes whose first frames start imagination: the policy's rollouts, or any",
        group=IMAGINATION,
    )
    horizon: int | None = option(
        None, "imagined steps per rollout (None: the robot's episode limit)", group=IMAGINATION
    )
    sampling_steps: int | None = option(
        None, "world-model sampling steps (None: its config)", group=IMAGINATION
    )
    guard_frames: int = option(
        16,
        "collapse guard: real start frames on which the greedy policy's imagined success is measured "
        "after every iteration; the best iterate (or the parent) is kept. 0 = off",
        group=IMAGINATION,
    )
    budget: int = option(128, "real episodes the baseline may spend (P)", group=SIM)
    seed_offset: int = option(
        100_000, "first training-range seed of the baseline's initial states", group=SIM
    )
    microbatch: int = option(16, "trajectories per forward pass (memory only)", group="GRPO")
    seed: int = option(0, "seed of sampling and initialization", group="GRPO")
    device: str = option("auto", DEVICE_HELP, type=torch_device, group="GRPO")
    algorithm: GRPOConfig = field(default_factory=GRPOConfig)
    """The algorithm's hyper-parameters (their flags come from `GRPOConfig`)."""


def initial_frames(
    store_path: Path,
    robot_config: RobotConfig,
    camera: str,
    source: str = "policy",
    episode_ids: list[str] | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """First frames and instructions of real episodes: (frames (N, H, W, 3), instructions, episode ids).

    Episodes recorded in simulation must come from the training seed range: the evaluation
    seeds' initial states are never used for training.
    """
    from wmpo_core.sim_rollout import EVAL_SEED_START

    store = EpisodeStore.open(store_path)
    metas = (
        [store.meta(i) for i in episode_ids]
        if episode_ids is not None
        else store.select(robot_config_name=robot_config.name)
    )
    if episode_ids is None and source == "policy":
        metas = [m for m in metas if m.source == "policy"] or metas
    metas = [m for m in metas if m.env_seed is None or m.env_seed < EVAL_SEED_START]
    metas = [m for m in metas if m.robot_config_hash == robot_config.content_hash]
    if not metas:
        raise ValueError(
            f"{store_path}: no training-range episodes of robot config '{robot_config.name}' "
            "to start imagination from"
        )
    frames = np.stack([store.episode(m.episode_id).frames(camera, 0, 1)[0] for m in metas])
    return frames, [m.task for m in metas], [m.episode_id for m in metas]


def grpo(
    config: GRPORunConfig, episode_ids: list[str] | None = None, progress: bool = True
) -> dict[str, Any]:
    """The `wmpo grpo` stage: train `config.policy` with GRPO and save the result to `config.out`;
    returns a JSON-able summary. Raises ValueError naming the flag of a bad value.

    In imagination, `config.guard_frames` > 0 real start frames drive the collapse guard
    (trainer.py): the greedy policy's imagined success from them decides which iterate is kept.
    `episode_ids` (iterate's choice) narrows the episodes whose first frames start imagination."""
    from torch.utils.tensorboard import SummaryWriter
    from wmpo_core.vla.checkpoint import load_checkpoint, save_checkpoint

    from wmpo_learner.distributed import setup, teardown
    from wmpo_learner.grpo.rollouts import ImaginationSource, SimSource
    from wmpo_learner.grpo.trainer import log_to_tensorboard, train

    problems = config.algorithm.problems()
    if config.microbatch < 1:
        problems.append("--microbatch must be >= 1")
    if config.guard_frames < 0:
        problems.append("--guard-frames must be >= 0")
    if config.env == "imagination":
        missing = [
            flag
            for flag, value in (("--wm", config.wm), ("--reward", config.reward), ("--store", config.store))
            if value is None
        ]
        if missing:
            problems.append(f"imagination needs {', '.join(missing)}")
    if problems:
        raise ValueError("; ".join(problems))
    robot_config = load_robot_config(config.robot)
    env, seed, horizon, store = config.env, config.seed, config.horizon, config.store
    world_model, reward_model, algorithm = config.wm, config.reward, config.algorithm

    world = setup(config.device)
    torch.manual_seed(seed + world.rank)
    generator = torch.Generator(device=world.device).manual_seed(seed + 1000 * world.rank)
    vla = load_checkpoint(config.policy, robot_config, device=world.device)
    parent = vla.version
    provenance: dict[str, Any] = {
        "method": f"grpo-{env}",
        "parent_checkpoint": str(config.policy),
        "grpo": dataclasses.asdict(algorithm),
        "seed": seed,
    }
    guard = None
    if env == "imagination":
        from wmpo_learner.reward.checkpoint import load_checkpoint as load_reward
        from wmpo_learner.world_model.model import WorldModel

        wm = WorldModel.load(world_model, device=world.device).eval()
        if wm.robot_config_hash != robot_config.content_hash:
            raise ValueError(
                f"world model {world_model} was trained for robot config '{wm.robot_config_name}', "
                f"not this '{robot_config.name}'"
            )
        if tuple(vla.cameras) != (wm.camera,):
            raise ValueError(
                f"the policy sees cameras {list(vla.cameras)}, the world model imagines camera '{wm.camera}'"
            )
        rm, _ = load_reward(reward_model, device=str(world.device))
        frames, texts, ids = initial_frames(
            store, robot_config, wm.camera, config.initial_source, episode_ids
        )
        source = ImaginationSource(
            wm,
            rm,
            frames,
            texts,
            horizon or robot_config.max_episode_steps,
            config.sampling_steps,
            seed=seed + world.rank,
            checkpoint=world_model,
        )
        if config.guard_frames > 0:
            pick = np.random.default_rng(seed).permutation(len(frames))[: config.guard_frames]
            guard_frames_, guard_texts = frames[pick], [texts[i] for i in pick]
            guard_horizon = horizon or robot_config.max_episode_steps

            def guard(model) -> float:  # scored with the sampler training imagines with
                return imagined_success(
                    wm,
                    rm,
                    model,
                    guard_frames_,
                    guard_texts,
                    guard_horizon,
                    source.sampling_steps,
                    seed=seed + 7,
                    sampler=source.sampler,
                )

        provenance.update(
            world_model=str(world_model),
            world_model_provenance=wm.provenance,
            reward_model=str(reward_model),
            reward_threshold=rm.threshold,
            world_model_sampler={
                "sampler": source.sampler or "euler",
                "steps": source.sampling_steps or wm.config.sampling_steps,
                "why": source.sampler_reason,
            },
            data={"store": str(store), "initial_episodes": ids},
        )
    elif env == "sim":
        if world.enabled:
            raise ValueError("the simulator baseline runs as one process (launch it without torchrun)")
        seeds = train_seeds(max(1, config.budget // algorithm.group_size), offset=config.seed_offset)
        source = SimSource(robot_config, seeds, config.budget)
        provenance.update(data={"simulator_seeds": [seeds[0], seeds[-1]], "budget_episodes": config.budget})
    else:
        raise ValueError(f"--env must be 'imagination' or 'sim', got {env!r}")

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out / "logs")) if world.is_main else None
    try:
        history, guarded = train(
            vla,
            source,
            algorithm,
            generator,
            microbatch=config.microbatch,
            world=world,
            on_iteration=log_to_tensorboard(writer) if writer is not None else None,
            progress=progress and world.is_main,
            guard=guard,
        )
    finally:
        if writer is not None:
            writer.close()
        if hasattr(source, "close"):
            source.close()
    summary: dict[str, Any] = {
        "out": str(out),
        "parent_version": parent,
        "iterations": len(history),
        "updates": sum(h.groups_kept > 0 for h in history),
        "guard": dataclasses.asdict(guarded) if guarded is not None else None,
    }
    if world.is_main:
        provenance["real_episodes_used"] = getattr(source, "real_episodes_used", 0)
        provenance["guard"] = summary["guard"]
        manifest = save_checkpoint(
            vla,
            out,
            robot_config,
            version=config.version,
            version_prefix="grpo",
            parent_version=parent,
            provenance=provenance,
        )
        (out / "training").mkdir(exist_ok=True)
        history_dicts = [dataclasses.asdict(h) for h in history]
        (out / "training" / "grpo_history.json").write_text(json.dumps(history_dicts, indent=2))
        (out / "training" / "grpo_summary.json").write_text(
            json.dumps(
                {"updates": summary["updates"], "iterations": len(history), "guard": summary["guard"]},
                indent=2,
            )
        )
        summary.update(
            version=manifest["version"],
            real_episodes_used=provenance["real_episodes_used"],
            history=history_dicts[-3:],
        )
    teardown(world)
    return summary
