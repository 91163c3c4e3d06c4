"""The lift task: the start-region option (starts stay inside the box, are reproducible per seed, a
malformed box is refused with the values named), the camera pose and the cheap-rendering options."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from wmpo_core.robot_config import load_robot_config
from wmpo_core.sim_env import SimArm
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
    assert np.all(
        (starts[:, 0] >= 0.23) & (starts[:, 0] <= 0.29) & (starts[:, 1] >= -0.04) & (starts[:, 1] <= 0.04)
    ), starts
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
    with pytest.raises(
        ValueError, match=r"block_region must be \[x_min, x_max, y_min, y_max\].*\[0.3, 0.2, -0.1, 0.1\]"
    ):
        make_lift_env(image_width=32, image_height=32, block_region=(0.3, 0.2, -0.1, 0.1))


def _expert_episode(config, steps: int = 30) -> tuple[np.ndarray, np.ndarray, bool]:
    arm = SimArm(config)
    try:
        obs = arm.reset(seed=5)
        frames, states = [obs.images["front"]], [obs.state]
        for _ in range(steps):
            obs = arm.step(arm.expert_action())
            frames.append(obs.images["front"])
            states.append(obs.state)
        return np.array(frames), np.array(states), obs.success
    finally:
        arm.close()


def test_simplified_meshes_change_pixels_only_slightly_and_physics_not_at_all() -> None:
    near = load_robot_config("so101_sim_near")
    assert near.driver.mujoco_mesh_cell_m
    full_detail = near.model_copy(
        update={"driver": near.driver.model_copy(update={"mujoco_mesh_cell_m": None})}
    )
    frames, states, _ = _expert_episode(near)
    ref_frames, ref_states, _ = _expert_episode(full_detail)
    np.testing.assert_array_equal(states, ref_states)  # collisions use the untouched hulls
    assert not np.array_equal(frames, ref_frames)  # the simplification did apply
    assert np.abs(frames.astype(int) - ref_frames).mean() < 2.0  # ... and is invisible at 128 px


def test_camera_pose_frames_the_workspace() -> None:
    env = make_lift_env(
        image_width=32, image_height=32, camera_pose={"pos": [0.55, 0.0, 0.32], "target": [0.25, 0.0, 0.06]}
    )
    model = env.unwrapped.model
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "front")
    env.reset(seed=0)
    xmat = env.unwrapped.data.cam_xmat[cam].reshape(3, 3)
    view = np.array([0.25, 0.0, 0.06]) - np.array([0.55, 0.0, 0.32])
    np.testing.assert_allclose(-xmat[:, 2], view / np.linalg.norm(view), atol=1e-6)  # looks at the target
    with pytest.raises(ValueError, match="camera_pose needs 'pos' and 'target'"):
        make_lift_env(image_width=32, image_height=32, camera_pose={"pos": [0.5, 0, 0.3]})
