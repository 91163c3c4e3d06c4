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
from functools import partial
from pathlib import Path

from wmpo_core.cli_args import add_device_argument


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--policy",
        required=True,
        help="policy checkpoint directory, a registered 'scheme:...' spec, or 'expert' (the scripted expert)",
    )
    parser.add_argument(
        "--robot", default="so101_sim", help="robot config name or YAML path (must be a simulated arm)"
    )
    parser.add_argument(
        "--episodes", type=int, default=50, help="number of evaluation episodes (one eval seed each)"
    )
    parser.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="first eval seed = EVAL_SEED_START + offset (use different offsets for independent evaluations)",
    )
    parser.add_argument(
        "--videos", type=Path, default=None, help="save an mp4 of every episode into this directory"
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="sample actions at --temperature instead of greedy decoding (VLA only)",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.6, help="sampling temperature with --sample (default 1.6)"
    )
    parser.add_argument(
        "--refill-threshold",
        type=int,
        default=1,
        help="request the next chunk when this many actions remain, as the policy node does (default: "
        "%(default)s)",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the summary (and per-episode results) as JSON here",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="episodes run in this many processes at once (default: one per CPU core; 1 = in this process)",
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from wmpo_core.robot_config import GymSimDriver, load_robot_config
    from wmpo_core.sim_rollout import eval_seeds, run_episodes, run_episodes_parallel

    from wmpo_learner.stats import SuccessRate

    if args.episodes < 1:
        raise SystemExit("wmpo eval: --episodes must be >= 1")
    if args.refill_threshold < 0:
        raise SystemExit("wmpo eval: --refill-threshold must be >= 0")
    if args.workers < 1:
        raise SystemExit("wmpo eval: --workers must be >= 1")
    try:
        robot = load_robot_config(args.robot)
    except ValueError as exc:
        raise SystemExit(f"wmpo eval: {exc}") from None
    if not isinstance(robot.driver, GymSimDriver):
        raise SystemExit(
            f"wmpo eval: robot config '{robot.name}' is not a simulated arm (driver {robot.driver.kind})"
        )
    make_policy = partial(
        load_eval_policy,
        args.policy,
        args.sample,
        args.temperature,
        args.seed_offset,
        None if args.device == "auto" else args.device,
    )
    try:
        policy = make_policy(robot)  # loaded here too: a bad checkpoint fails before any worker starts
    except ValueError as exc:  # PolicyLoadError and its checkpoint errors
        raise SystemExit(f"wmpo eval: {exc}") from None
    version = "scripted-expert" if policy is None else policy.version
    mode = "expert" if policy is None else (f"sampled T={args.temperature}" if args.sample else "greedy")
    seeds = eval_seeds(args.episodes, args.seed_offset)
    t0 = time.time()
    if args.workers == 1:
        results = run_episodes(
            robot,
            policy,
            seeds,
            video_dir=args.videos,
            desc=f"eval {version}",
            refill_threshold=args.refill_threshold,
        )
    else:
        del policy
        results = run_episodes_parallel(
            robot,
            make_policy,
            seeds,
            min(args.workers, len(seeds)),
            video_dir=args.videos,
            desc=f"eval {version}",
            refill_threshold=args.refill_threshold,
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
    print(f"  {len(results) / max(minutes, 1e-9):.1f} episodes/min with {args.workers} worker(s)")
    if args.videos is not None:
        print(f"  videos in {args.videos}")
    if args.json is not None:
        summary = {
            "policy": str(args.policy),
            "version": version,
            "robot": robot.name,
            "mode": mode,
            "refill_threshold": args.refill_threshold,
            "seeds": [seeds[0], seeds[-1]],
            "success": rate.to_dict(),
            "mean_length": float(np.mean(lengths)),
            "mean_success_length": float(np.mean(success_lengths)) if success_lengths else None,
            "workers": args.workers,
            "episodes_per_minute": len(results) / max(minutes, 1e-9),
            "episodes": [{"seed": r.seed, "success": r.success, "steps": r.num_steps} for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def load_eval_policy(spec: str, sample: bool, temperature: float, seed: int, device: str | None, robot):
    """The policy `wmpo eval` runs (None = the scripted expert); module-level so workers can load it."""
    from wmpo_core.policy import load_policy
    from wmpo_core.vla.checkpoint import default_device, is_vla_checkpoint, load_checkpoint
    from wmpo_core.vla.policy import VLAPolicy

    if spec == "expert":
        return None
    path = Path(spec)
    if path.is_dir() and is_vla_checkpoint(path):
        model = load_checkpoint(path, robot, device=device or default_device())
        return VLAPolicy(model, robot, greedy=not sample, temperature=temperature, seed=seed)
    if sample:
        raise SystemExit("wmpo eval: --sample applies to VLA checkpoints only")
    return load_policy(spec, robot)
