"""Episodes for the LeRobot tests: a store filled with small synthetic recordings of a robot config."""

from __future__ import annotations

import time

import numpy as np
from wmpo_core.episode_store import EpisodeStore, Source
from wmpo_core.robot_config import RobotConfig


def moving_square(step: int, shape: tuple[int, int, int]) -> np.ndarray:
    """A frame with a bright square that moves with the step, so video frames can be told apart."""
    frame = np.full(shape, 30, dtype=np.uint8)
    x = 8 + 6 * step
    frame[40:72, x : x + 24] = (220, 180, 40)
    return frame


def record(
    store: EpisodeStore,
    config: RobotConfig,
    n_episodes: int,
    n_steps: int,
    source: Source = "teleop",
    policy_version: str | None = None,
) -> list[str]:
    """Episodes with random in-range joints and actions, jittered step times (cameras and state
    captured a little before the control tick, each at its own time), seed = index, alternating
    success labels (episode 0 fails) and some free-form `extra`."""
    rng = np.random.default_rng(0)
    ids = []
    for e in range(n_episodes):
        writer = store.begin_episode(
            config, source, config.tasks[0], policy_version, env_seed=e, extra={"operator": f"op{e}"}
        )
        t0 = time.time()
        for step in range(n_steps):
            state = rng.uniform([j.lower for j in config.joints], [j.upper for j in config.joints])
            action = rng.uniform([d.low for d in config.action.dims], [d.high for d in config.action.dims])
            frames = {cam.name: moving_square(step, cam.shape) for cam in config.cameras}
            tick = t0 + step / config.control_rate_hz + rng.uniform(0, 0.004)
            image_times = {cam.name: tick - rng.uniform(0.005, 0.02) for cam in config.cameras}
            writer.append(frames, state, action, tick, image_times, state_time=tick - rng.uniform(0, 0.003))
        ids.append(writer.commit(success=bool(e % 2), success_labeled_by="human").episode_id)
    return ids
