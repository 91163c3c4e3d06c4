"""Record SO-101 sim episodes straight into an episode store, without the ROS stack.

World-model experiments need two kinds of data: clean demonstrations (the scripted expert) for
pretraining, and "policy" rollouts with failures for Policy Behavior Alignment. The second kind is
imitated here by the expert with per-episode Gaussian action noise and occasional gripper
glitches, which makes a mix of successes and failures.

    python bench/record_sim_episodes.py --store data/wm_sim --episodes 30 --source scripted
    python bench/record_sim_episodes.py --store data/wm_sim --episodes 48 --source policy \
        --policy-version noisy-expert-v0 --noise 0.15 0.35 0.6 --seed-start 1000
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from tqdm import tqdm
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_env import SimArm


def perturb(action: np.ndarray, sigma: float, glitch: bool, rng: np.random.Generator) -> np.ndarray:
    """Expert action + Gaussian noise on the end-effector deltas; a glitch opens the gripper."""
    noisy = action.copy()
    noisy[:-1] += rng.normal(0.0, sigma, size=noisy.shape[0] - 1)
    if glitch:
        noisy[-1] = 1.0
    return noisy


def record(args: argparse.Namespace) -> int:
    cfg = load_robot_config(args.robot)
    low = np.array([d.low for d in cfg.action.dims])
    high = np.array([d.high for d in cfg.action.dims])
    arm = SimArm(cfg)
    rng = np.random.default_rng(args.seed_start)
    max_steps = cfg.max_episode_steps
    successes = 0
    with EpisodeStore.open(args.store, mode="a") as store:
        for i in tqdm(range(args.episodes), desc="episodes", unit="ep"):
            seed = args.seed_start + i
            sigma = float(rng.choice(args.noise)) if args.noise else 0.0
            glitch_at = int(rng.integers(5, 40)) if rng.random() < args.glitch_prob else -1
            obs = arm.reset(seed=seed)
            writer = store.begin_episode(
                cfg,
                source=args.source,
                task=cfg.tasks[0],
                policy_version=args.policy_version,
                env_seed=seed,
                extra={"action_noise_sigma": sigma, "gripper_glitch_step": glitch_at},
            )
            t0 = time.time()
            success, hold = False, 0
            for step in range(max_steps):
                action = arm.expert_action()
                if sigma > 0 or glitch_at >= 0:
                    action = perturb(action, sigma, glitch_at <= step < glitch_at + 3, rng)
                action = np.clip(action, low, high)
                stamp = t0 + step * cfg.control_period_s
                writer.append({c: obs.images[c] for c in cfg.camera_names}, obs.state, action, stamp)
                obs = arm.step(action)
                success = success or obs.success
                hold = hold + 1 if success else 0
                if hold > args.hold_steps or obs.terminated or obs.truncated:
                    break
            writer.commit(success=success, success_labeled_by="env")
            successes += success
    arm.close()
    print(f"recorded {args.episodes} episodes into {args.store}: {successes} successes")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="episode store directory (created if missing)")
    p.add_argument("--robot", default="so101_sim", help="robot config name or path (a gym_sim driver)")
    p.add_argument("--episodes", type=int, default=40, help="number of episodes to record")
    p.add_argument(
        "--source", default="scripted", choices=["scripted", "policy", "teleop"], help="episode source label"
    )
    p.add_argument("--policy-version", default=None, help="policy_version stamped into each episode")
    p.add_argument(
        "--noise", type=float, nargs="*", default=[], help="per-episode action-noise sigmas to draw from"
    )
    p.add_argument(
        "--glitch-prob",
        type=float,
        default=0.0,
        help="probability that an episode has a 3-step gripper-open glitch",
    )
    p.add_argument("--hold-steps", type=int, default=5, help="steps recorded after the first success")
    p.add_argument(
        "--seed-start", type=int, default=0, help="env seed of the first episode (then +1 per episode)"
    )
    return record(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
