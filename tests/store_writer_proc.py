"""A real writer process for the store tests: writes episodes whose content is checkable.

    python tests/store_writer_proc.py <store> <n_episodes> <seed> [--step-sleep S]

Every frame, state and action encodes (episode number, step), so a reader can verify that what
it sees is exactly what was written. Prints "committed <id>" after each commit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import load_robot_config


def frame_for(episode_number: int, step: int, shape: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty(shape, dtype=np.uint8)
    frame[..., 0] = episode_number % 251
    frame[..., 1] = step % 251
    frame[..., 2] = np.arange(shape[1], dtype=np.uint8)[None, :]
    return frame


def state_for(episode_number: int, step: int, dim: int) -> np.ndarray:
    return episode_number * 1000.0 + step + np.arange(dim) / 10.0


def action_for(episode_number: int, step: int, dim: int) -> np.ndarray:
    return -(episode_number * 1000.0 + step) - np.arange(dim) / 10.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("n_episodes", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args()
    config = load_robot_config("so101_sim")
    rng = np.random.default_rng(args.seed)
    shape = config.cameras[0].shape
    with EpisodeStore.open(args.store, mode="a") as store:
        for _ in range(args.n_episodes):
            number = len(store)  # episode numbers continue across writer restarts
            writer = store.begin_episode(
                config, "scripted", "pick up the cube", env_seed=number, extra={"number": number}
            )
            for step in range(int(rng.integers(3, 40))):
                writer.append(
                    images={"front": frame_for(number, step, shape)},
                    state=state_for(number, step, len(config.joints)),
                    action=action_for(number, step, config.action.dim),
                    time=time.time(),
                )
                if args.step_sleep:
                    time.sleep(args.step_sleep)
            meta = writer.commit(success=bool(number % 2), success_labeled_by="env")
            print(f"committed {meta.episode_id}", flush=True)


if __name__ == "__main__":
    main()
