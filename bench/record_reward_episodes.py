"""Record SO-101 sim episodes with a controlled mix of successes and failures for the reward model.

Each episode runs the scripted expert in one of four modes (round robin):
- expert: unperturbed, succeeds;
- noisy:  Gaussian noise (sigma 0.6) on the end-effector deltas; mostly misses the grasp and
          runs to the time limit;
- early:  stopped after 10..30 steps, before or during the lift (the hardest negatives: the
          start of a successful episode);
- drop:   the gripper is forced open a few steps into the lift; the block falls; 12 more steps.
The label is always the env's own success signal. Frames follow the store convention: the
observation before each action (the recording stops when the env reports success).

    python bench/record_reward_episodes.py --store data/reward_sim --episodes 48
    python bench/record_reward_episodes.py --store data/reward_sim_test --episodes 16 --seed-start 5000
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import numpy as np
from tqdm import tqdm
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_env import SimArm

MODES = ("expert", "noisy", "expert", "early", "expert", "drop")
"""Round robin: half the episodes unperturbed, the other half one failure mode each."""


def record(args: argparse.Namespace) -> int:
    cfg = load_robot_config(args.robot)
    low = np.array([d.low for d in cfg.action.dims])
    high = np.array([d.high for d in cfg.action.dims])
    arm = SimArm(cfg)
    rng = np.random.default_rng(args.seed_start)
    outcomes: collections.Counter[tuple[str, bool]] = collections.Counter()
    started = time.monotonic()
    steps_total = 0
    with EpisodeStore.open(args.store, mode="a") as store:
        for i in tqdm(range(args.episodes), desc="episodes", unit="ep"):
            seed = args.seed_start + i
            mode = MODES[i % len(MODES)]
            stop_at = int(rng.integers(10, 31)) if mode == "early" else cfg.max_episode_steps
            drop_after = int(rng.integers(2, 5)) if mode == "drop" else None
            obs = arm.reset(seed=seed)
            writer = store.begin_episode(
                cfg,
                source="scripted",
                task=cfg.tasks[0],
                policy_version=f"expert-{mode}",
                env_seed=seed,
                extra={"mode": mode},
            )
            t0, success, dropped_at = time.time(), False, None
            for step in range(stop_at):
                action = arm.expert_action()
                if mode == "noisy":
                    action[:-1] += rng.normal(0.0, 0.6, size=action.shape[0] - 1)
                if (
                    drop_after is not None
                    and dropped_at is None
                    and arm.expert._phase == "lift"
                    and arm.expert._steps_in_phase >= drop_after
                ):
                    dropped_at = step
                if dropped_at is not None:
                    action[-1] = 1.0  # gripper open: the block falls
                action = np.clip(action, low, high)
                writer.append(
                    {c: obs.images[c] for c in cfg.camera_names},
                    obs.state,
                    action,
                    t0 + step * cfg.control_period_s,
                )
                obs = arm.step(action)
                success = obs.success
                if obs.terminated or obs.truncated or (dropped_at is not None and step >= dropped_at + 12):
                    break
            meta = writer.commit(success=success, success_labeled_by="env")
            steps_total += meta.num_steps
            outcomes[(mode, success)] += 1
    arm.close()
    elapsed = time.monotonic() - started
    print(f"recorded {args.episodes} episodes ({steps_total} steps) into {args.store} in {elapsed:.0f} s")
    for (mode, success), count in sorted(outcomes.items()):
        print(f"  {mode:7s} {'success' if success else 'failure'}: {count}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="episode store directory (created if missing)")
    p.add_argument("--robot", default="so101_sim", help="robot config name or path (a gym_sim driver)")
    p.add_argument("--episodes", type=int, default=48, help="number of episodes to record (default 48)")
    p.add_argument(
        "--seed-start", type=int, default=0, help="env seed of the first episode, then +1 (default 0)"
    )
    return record(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
