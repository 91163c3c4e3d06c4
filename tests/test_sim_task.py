"""The lift task's start-region option: starts stay inside the box, are reproducible per seed, and a
malformed box is refused with the values named."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.sim_tasks import FULL_BLOCK_REGION, make_lift_env


def block_xy(env) -> np.ndarray:
    return np.array(env.unwrapped.data.sensor("block_pos").data[:2])


def test_block_region_bounds_and_reproduces_starts() -> None:
    region = (0.23, 0.29, -0.04, 0.04)
    env = make_lift_env(image_width=32, image_height=32, block_region=region)
    starts = []
    for seed in range(6):
        env.reset(seed=seed)
        starts.append(block_xy(env))
    starts = np.array(starts)
    assert np.all((starts[:, 0] >= 0.23) & (starts[:, 0] <= 0.29) & (starts[:, 1] >= -0.04) & (starts[:, 1] <= 0.04)), starts
    assert len({tuple(s) for s in starts.round(6)}) == 6  # still random within the box
    env.reset(seed=3)
    np.testing.assert_array_equal(block_xy(env), starts[3])  # same seed, same start


def test_default_region_keeps_blocks_within_reach() -> None:
    env = make_lift_env(image_width=32, image_height=32)
    xs = []
    for seed in range(8):
        env.reset(seed=seed)
        xs.append(block_xy(env)[0])
    assert max(xs) <= FULL_BLOCK_REGION[1]


def test_malformed_region_is_refused() -> None:
    with pytest.raises(ValueError, match=r"block_region must be \[x_min, x_max, y_min, y_max\].*\[0.3, 0.2, -0.1, 0.1\]"):
        make_lift_env(image_width=32, image_height=32, block_region=(0.3, 0.2, -0.1, 0.1))
