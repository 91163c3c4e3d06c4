"""`wmpo eval`: success rate of a policy in the simulator, on evaluation seeds only.

Runs `wmpo_core.sim_rollout` (the policy node's observation -> chunk -> safety clamp loop) from
evaluation initial states, which never overlap the seeds used for demonstrations or training
rollouts, and reports the success rate with its Wilson 95% interval and mean episode lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from wmpo_core.cli_args import DEVICE_HELP, torch_device
from wmpo_core.config_cli import add_config_arguments, config_from_args, option


@dataclass
class EvalConfig:
    """`wmpo eval`: a policy's success rate in the simulator, on evaluation seeds only."""

    policy: str = option(
        help="policy checkpoint directory, a registered 'scheme:...' spec, or 'expert' (the scripted expert)"
    )
    robot: str = option("so101_sim", "robot config name or YAML path (must be a simulated arm)")
    episodes: int = option(50, "number of evaluation episodes (one eval seed each)")
    seed_offset: int = option(
        0,
        "first eval seed = EVAL_SEED_START + offset (use different offsets for independent evaluations)",
    )
    videos: Path | None = option(None, "save an mp4 of every episode into this directory (None: no videos)")
    sample: bool = option(False, "sample actions at --temperature instead of greedy decoding (VLA only)")
    temperature: float = option(1.6, "sampling temperature with --sample")
    refill_threshold: int = option(
        1, "request the next chunk when this many actions remain, as the policy node does"
    )
    device: str = option("auto", DEVICE_HELP, type=torch_device)
    json: Path | None = option(None, "also write the summary (and per-episode results) as JSON here")
    workers: int = option(
        os.cpu_count() or 1,
        "episodes run in this many processes at once (1 = in this process; default: one per CPU core)",
    )


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_config_arguments(parser, EvalConfig)


def evaluate(config: EvalConfig) -> int:
    """The `evaluate` stage; returns the exit status."""
    import numpy as np
    from wmpo_core.robot_config import GymSimDriver, load_robot_config
    from wmpo_core.sim_rollout import eval_seeds, run_episodes, run_episodes_parallel

    from wmpo_learner.stats import SuccessRate

    if config.episodes < 1:
        raise SystemExit("wmpo eval: --episodes must be >= 1")
    if config.refill_threshold < 0:
        raise SystemExit("wmpo eval: --refill-threshold must be >= 0")
    if config.workers < 1:
        raise SystemExit("wmpo eval: --workers must be >= 1")
    try:
        robot = load_robot_config(config.robot)
    except ValueError as exc:
        raise SystemExit(f"wmpo eval: {exc}") from None
    if not isinstance(robot.driver, GymSimDriver):
        raise SystemExit(
            f"wmpo eval: robot config '{robot.name}' is not a simulated arm (driver {robot.driver.kind})"
        )
    make_policy = partial(
        load_eval_policy,
        config.policy,
        config.sample,
        config.temperature,
        config.seed_offset,
        None if config.device == "auto" else config.device,
    )
    try:
        policy = make_policy(robot)  # loaded here too: a bad checkpoint fails before any worker starts
    except ValueError as exc:  # PolicyLoadError and its checkpoint errors
        raise SystemExit(f"wmpo eval: {exc}") from None
    version = "scripted-expert" if policy is None else policy.version
    mode = "expert" if policy is None else (f"sampled T={config.temperature}" if config.sample else "greedy")
    seeds = eval_seeds(config.episodes, config.seed_offset)
    t0 = time.time()
    if config.workers == 1:
        results = run_episodes(
            robot,
            policy,
            seeds,
            video_dir=config.videos,
            desc=f"eval {version}",
            refill_threshold=config.refill_threshold,
        )
    else:
        del policy
        results = run_episodes_parallel(
            robot,
            make_policy,
            seeds,
            min(config.workers, len(seeds)),
            video_dir=config.videos,
            desc=f"eval {version}",
            refill_threshold=config.refill_threshold,
        )
    minutes = (time.time() - t0) / 60

    rate = SuccessRate.from_outcomes(r.success for r in results)
    lengths = [r.num_steps for r in results]
    success_lengths = [r.num_steps for r in results if r.success]
    print(
        f"policy {version} ({mode}) on {robot.name}: {len(results)} episodes, eval seeds "
        f"{seeds[0]}..{seeds[-1]}"
    )
    print(f"  success rate       {rate}")
    print(
        f"  mean episode length {np.mean(lengths):.1f} steps"
        + (f" (successful episodes: {np.mean(success_lengths):.1f})" if success_lengths else "")
    )
    print(f"  {len(results) / max(minutes, 1e-9):.1f} episodes/min with {config.workers} worker(s)")
    if config.videos is not None:
        print(f"  videos in {config.videos}")
    if config.json is not None:
        summary = {
            "policy": str(config.policy),
            "version": version,
            "robot": robot.name,
            "mode": mode,
            "refill_threshold": config.refill_threshold,
            "seeds": [seeds[0], seeds[-1]],
            "success": rate.to_dict(),
            "mean_length": float(np.mean(lengths)),
            "mean_success_length": float(np.mean(success_lengths)) if success_lengths else None,
            "workers": config.workers,
            "episodes_per_minute": len(results) / max(minutes, 1e-9),
            "episodes": [{"seed": r.seed, "success": r.success, "steps": r.num_steps} for r in results],
        }
        config.json.parent.mkdir(parents=True, exist_ok=True)
        config.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    return evaluate(config_from_args(EvalConfig, args))


def load_eval_policy(spec: str, sample: bool, temperature: float, seed: int, device: str | None, robot):
    """The policy `wmpo eval` runs (None = the scripted expert); module-level so workers can load it."""
    from wmpo_core.devices import choose_device  # imports torch: kept out of `wmpo --help`
    from wmpo_core.policy import load_policy
    from wmpo_core.vla.checkpoint import is_vla_checkpoint, load_checkpoint
    from wmpo_core.vla.policy import VLAPolicy

    if spec == "expert":
        return None
    path = Path(spec)
    if path.is_dir() and is_vla_checkpoint(path):
        model = load_checkpoint(path, robot, device=choose_device(device or "auto"))
        return VLAPolicy(model, robot, greedy=not sample, temperature=temperature, seed=seed)
    if sample:
        raise SystemExit("wmpo eval: --sample applies to VLA checkpoints only")
    return load_policy(spec, robot)
