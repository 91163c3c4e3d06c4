"""`wmpo grpo`: improve a VLA checkpoint with GRPO in imagination (WMPO) or in the simulator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wmpo_core.cli_args import add_device_argument

from wmpo_learner.grpo.algorithm import GRPOConfig

_DEFAULTS = GRPOConfig()


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = (
        "GRPO of a VLA checkpoint. In imagination (default, WMPO): the policy is rolled out inside the "
        "world model from real first frames of the store, and the reward model scores the imagined "
        "videos; no real episode is spent. In the simulator (--env sim): the same algorithm on real "
        "(simulated) episodes, spending a budget of P episodes; the paper's baseline. Defaults are "
        "the paper's; on a CPU use the small settings shown in docs/wmpo.md."
    )
    parser.add_argument("--policy", required=True, help="VLA checkpoint directory to start from")
    parser.add_argument("--robot", default="so101_sim", help="robot config name or YAML (default: so101_sim)")
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for the improved checkpoint (and logs/)"
    )
    parser.add_argument(
        "--env", choices=["imagination", "sim"], default="imagination", help="where rollouts happen"
    )
    parser.add_argument(
        "--version", default=None, help="version string of the new policy (default: derived from its weights)"
    )
    img = parser.add_argument_group("imagination (--env imagination)")
    img.add_argument("--wm", type=Path, help="world-model checkpoint (aligned to this policy)")
    img.add_argument("--reward", type=Path, help="reward-model checkpoint")
    img.add_argument("--store", type=Path, help="episode store whose episodes give the initial frames")
    img.add_argument(
        "--initial-source",
        choices=["policy", "any"],
        default="policy",
        help="episodes whose first frames start imagination: the policy's rollouts, or any (default: policy)",
    )
    img.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="imagined steps per rollout (default: the robot's episode limit)",
    )
    img.add_argument(
        "--sampling-steps", type=int, default=None, help="world-model sampling steps (default: its config)"
    )
    img.add_argument(
        "--guard-frames",
        type=int,
        default=16,
        help="collapse guard: real start frames on which the greedy policy's imagined success is measured "
        "after every iteration; the best iterate (or the parent) is kept. 0 = off (default 16)",
    )
    sim = parser.add_argument_group("simulator baseline (--env sim)")
    sim.add_argument(
        "--budget", type=int, default=128, help="real episodes the baseline may spend (P, default 128)"
    )
    sim.add_argument(
        "--seed-offset",
        type=int,
        default=100_000,
        help="first training-range seed of the baseline's initial states",
    )
    opt = parser.add_argument_group("GRPO")
    opt.add_argument("--iterations", type=int, default=_DEFAULTS.iterations)
    opt.add_argument(
        "--group-size", type=int, default=_DEFAULTS.group_size, help="G rollouts per initial state"
    )
    opt.add_argument(
        "--groups-per-batch",
        type=int,
        default=_DEFAULTS.groups_per_batch,
        help="informative groups per iteration",
    )
    opt.add_argument(
        "--minibatch",
        type=int,
        default=_DEFAULTS.minibatch_trajectories,
        help="trajectories per optimizer step",
    )
    opt.add_argument("--microbatch", type=int, default=16, help="trajectories per forward pass (memory only)")
    opt.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    opt.add_argument("--lr", type=float, default=_DEFAULTS.lr)
    opt.add_argument("--temperature", type=float, default=_DEFAULTS.temperature)
    opt.add_argument("--clip-low", type=float, default=_DEFAULTS.clip_low)
    opt.add_argument("--clip-high", type=float, default=_DEFAULTS.clip_high)
    opt.add_argument("--max-grad-norm", type=float, default=_DEFAULTS.max_grad_norm)
    opt.add_argument(
        "--max-resample-rounds",
        type=int,
        default=_DEFAULTS.max_resample_rounds,
        help="dynamic sampling: extra sampling rounds per iteration before training on fewer groups",
    )
    opt.add_argument("--seed", type=int, default=0)
    add_device_argument(opt)


def config_from_args(args: argparse.Namespace) -> GRPOConfig:
    config = GRPOConfig(
        group_size=args.group_size,
        groups_per_batch=args.groups_per_batch,
        minibatch_trajectories=args.minibatch,
        epochs=args.epochs,
        lr=args.lr,
        max_grad_norm=args.max_grad_norm,
        clip_low=args.clip_low,
        clip_high=args.clip_high,
        temperature=args.temperature,
        iterations=args.iterations,
        max_resample_rounds=args.max_resample_rounds,
    )
    problems = [
        name
        for name, ok in [
            ("--group-size must be >= 2", config.group_size >= 2),
            ("--groups-per-batch must be >= 1", config.groups_per_batch >= 1),
            ("--minibatch must be >= 1", config.minibatch_trajectories >= 1),
            ("--iterations must be >= 1", config.iterations >= 1),
            ("--temperature must be > 0", config.temperature > 0),
            ("--clip-low must be in (0, 1)", 0 < config.clip_low < 1),
            ("--clip-high must be > 0", config.clip_high > 0),
            ("--microbatch must be >= 1", args.microbatch >= 1),
            ("--guard-frames must be >= 0", args.guard_frames >= 0),
        ]
        if not ok
    ]
    if problems:
        raise SystemExit("wmpo grpo: " + "; ".join(problems))
    return config


def run(args: argparse.Namespace) -> int:
    from wmpo_core.policy import PolicyLoadError
    from wmpo_core.robot_config import RobotConfigError, load_robot_config

    from wmpo_learner.grpo.run import run_grpo

    config = config_from_args(args)
    try:
        result = run_grpo(
            policy=Path(args.policy),
            robot_config=load_robot_config(args.robot),
            out=args.out,
            config=config,
            env=args.env,
            world_model=args.wm,
            reward_model=args.reward,
            store=args.store,
            initial_source=args.initial_source,
            horizon=args.horizon,
            sampling_steps=args.sampling_steps,
            budget=args.budget,
            seed_offset=args.seed_offset,
            seed=args.seed,
            device=args.device,
            microbatch=args.microbatch,
            version=args.version,
            guard_frames=args.guard_frames,
        )
    except (FileNotFoundError, ValueError, PolicyLoadError, RobotConfigError) as exc:
        print(f"wmpo grpo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
