"""`wmpo eval`: success rate of a policy in the simulator, on evaluation seeds only.

Runs `wmpo_core.sim_rollout` (the policy node's observation -> chunk -> safety clamp loop) from
evaluation initial states, which never overlap the seeds used for demonstrations or training
rollouts, and reports the success rate with its Wilson 95% interval and mean episode lengths.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--policy", required=True,
                        help="policy checkpoint directory, a registered 'scheme:...' spec, or 'expert' (the scripted expert)")
    parser.add_argument("--robot", default="so101_sim", help="robot config name or YAML path (must be a simulated arm)")
    parser.add_argument("--episodes", type=int, default=50, help="number of evaluation episodes (one eval seed each)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="first eval seed = EVAL_SEED_START + offset (use different offsets for independent evaluations)")
    parser.add_argument("--videos", type=Path, default=None, help="save an mp4 of every episode into this directory")
    parser.add_argument("--sample", action="store_true", help="sample actions at --temperature instead of greedy decoding (VLA only)")
    parser.add_argument("--temperature", type=float, default=1.6, help="sampling temperature with --sample (default 1.6)")
    parser.add_argument("--refill-threshold", type=int, default=1,
                        help="request the next chunk when this many actions remain, as the policy node does (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device for a VLA checkpoint (default: cuda if available, else cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary (and per-episode results) as JSON here")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from wmpo_core.robot_config import GymSimDriver, load_robot_config
    from wmpo_core.sim_rollout import eval_seeds, run_episodes

    from wmpo_learner.stats import SuccessRate

    if args.episodes < 1:
        raise SystemExit("wmpo eval: --episodes must be >= 1")
    if args.refill_threshold < 0:
        raise SystemExit("wmpo eval: --refill-threshold must be >= 0")
    robot = load_robot_config(args.robot)
    if not isinstance(robot.driver, GymSimDriver):
        raise SystemExit(f"wmpo eval: robot config '{robot.name}' is not a simulated arm (driver {robot.driver.kind})")
    if args.policy == "expert":
        policy, version = None, "scripted-expert"
    else:
        policy = _load(args, robot)
        version = policy.version
    seeds = eval_seeds(args.episodes, args.seed_offset)
    results = run_episodes(robot, policy, seeds, video_dir=args.videos, desc=f"eval {version}",
                           refill_threshold=args.refill_threshold)

    rate = SuccessRate.from_outcomes(r.success for r in results)
    lengths = [r.num_steps for r in results]
    success_lengths = [r.num_steps for r in results if r.success]
    mode = "expert" if policy is None else (f"sampled T={args.temperature}" if args.sample else "greedy")
    print(f"policy {version} ({mode}) on {robot.name}: {len(results)} episodes, eval seeds {seeds[0]}..{seeds[-1]}")
    print(f"  success rate       {rate}")
    print(f"  mean episode length {np.mean(lengths):.1f} steps"
          + (f" (successful episodes: {np.mean(success_lengths):.1f})" if success_lengths else ""))
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
            "episodes": [{"seed": r.seed, "success": r.success, "steps": r.num_steps} for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _load(args: argparse.Namespace, robot):
    from wmpo_core.policy import load_policy
    from wmpo_core.vla.checkpoint import default_device, is_vla_checkpoint, load_checkpoint
    from wmpo_core.vla.policy import VLAPolicy

    path = Path(args.policy)
    if path.is_dir() and is_vla_checkpoint(path):
        model = load_checkpoint(path, robot, device=args.device or default_device())
        return VLAPolicy(model, robot, greedy=not args.sample, temperature=args.temperature, seed=args.seed_offset)
    if args.sample:
        raise SystemExit("wmpo eval: --sample applies to VLA checkpoints only")
    return load_policy(args.policy, robot)
