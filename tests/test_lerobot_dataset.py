"""LeRobotDataset v3 round trip: what we export, LeRobot's own LeRobotDataset loads; and back."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from wmpo_core.episode_store import EpisodeStore
from wmpo_core.lerobot_dataset import LeRobotDatasetError, export_lerobot, import_lerobot
from wmpo_core.robot_config import load_robot_config
from wmpo_core.lerobot_units import vector_to_lerobot


def _moving_square(step: int, shape: tuple[int, int, int]) -> np.ndarray:
    frame = np.full(shape, 30, dtype=np.uint8)
    x = 8 + 6 * step
    frame[40:72, x : x + 24] = (220, 180, 40)
    return frame


def _record(store: EpisodeStore, config, n_episodes: int, n_steps: int) -> list[str]:
    rng = np.random.default_rng(0)
    ids = []
    for e in range(n_episodes):
        writer = store.begin_episode(config, "teleop", config.tasks[0], env_seed=e)
        t0 = time.time()
        for step in range(n_steps):
            state = rng.uniform([j.lower for j in config.joints], [j.upper for j in config.joints])
            action = rng.uniform([d.low for d in config.action.dims], [d.high for d in config.action.dims])
            frames = {cam.name: _moving_square(step, cam.shape) for cam in config.cameras}
            writer.append(frames, state, action, t0 + step / config.control_rate_hz + rng.uniform(0, 0.004))
        ids.append(writer.commit(success=bool(e % 2), success_labeled_by="human").episode_id)
    return ids


def test_export_is_loadable_by_lerobot_and_imports_back(tmp_path: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    config = load_robot_config("so101_sim")
    store = EpisodeStore.open(tmp_path / "robot.zarr", mode="a")
    ids = _record(store, config, n_episodes=2, n_steps=10)
    root = export_lerobot(store, config, tmp_path / "lerobot", "local/so101_sim_demo", progress=False)

    dataset = LeRobotDataset("local/so101_sim_demo", root=root, video_backend="pyav")
    assert dataset.meta.total_episodes == 2 and dataset.meta.total_frames == 20
    assert dataset.meta.robot_type == "so101_follower" and dataset.meta.fps == 10
    item = dataset[13]
    assert tuple(item["observation.images.front"].shape) == (3, 128, 128)
    assert tuple(item["observation.state"].shape) == (6,) and tuple(item["action"].shape) == (4,)
    assert item["task"] == "pick up the cube"
    np.testing.assert_allclose(item["action"].numpy(), store.episode(ids[1]).action()[3], rtol=1e-6)

    back = EpisodeStore.open(tmp_path / "back.zarr", mode="a")
    metas = import_lerobot(root, "local/so101_sim_demo", back, config, source="teleop", progress=False)
    assert [m.num_steps for m in metas] == [10, 10]
    for original_id, meta in zip(ids, metas, strict=True):
        a, b = store.episode(original_id), back.episode(meta.episode_id)
        np.testing.assert_allclose(b.state(), a.state(), rtol=1e-6)
        np.testing.assert_allclose(b.action(), a.action(), rtol=1e-6)
        # capture times survive (relative to the first step), not re-derived from the frame index
        np.testing.assert_allclose(b.time() - b.time()[0], a.time() - a.time()[0], atol=1e-5)
        # video is lossy: frames come back close, with the square where it was
        diff = np.abs(b.frames("front").astype(int) - a.frames("front").astype(int))
        assert diff.mean() < 4.0
        assert meta.extra["lerobot_repo_id"] == "local/so101_sim_demo" and meta.source == "teleop"


def test_units_are_converted_for_lerobot_arms(tmp_path: Path) -> None:
    config = load_robot_config("so101_real")
    cam = config.cameras[0]
    small = config.model_copy(update={"cameras": [cam.model_copy(update={"width": 64, "height": 48})]})
    driver = config.driver.model_copy(update={"cameras": {"front": {**config.driver.cameras["front"], "width": 64, "height": 48}}})
    small = small.model_copy(update={"driver": driver})
    store = EpisodeStore.open(tmp_path / "robot.zarr", mode="a")
    ids = _record(store, small, n_episodes=1, n_steps=4)
    root = export_lerobot(store, small, tmp_path / "lerobot", "local/so101_real", progress=False)

    import pandas as pd

    rows = pd.read_parquet(next((root / "data").rglob("*.parquet")))
    exported_state = np.stack(rows["observation.state"].to_numpy())
    np.testing.assert_allclose(exported_state, np.stack([vector_to_lerobot(r, small) for r in store.episode(ids[0]).state()]), rtol=1e-5)
    assert np.abs(exported_state[:, :5]).max() > 4.0  # degrees, not radians

    back = EpisodeStore.open(tmp_path / "back.zarr", mode="a")
    meta = import_lerobot(root, "local/so101_real", back, small, progress=False)[0]
    np.testing.assert_allclose(back.episode(meta.episode_id).state(), store.episode(ids[0]).state(), rtol=1e-5, atol=1e-6)


def test_import_refuses_a_dataset_that_does_not_fit_the_robot(tmp_path: Path) -> None:
    config = load_robot_config("so101_sim")
    store = EpisodeStore.open(tmp_path / "robot.zarr", mode="a")
    _record(store, config, n_episodes=1, n_steps=3)
    root = export_lerobot(store, config, tmp_path / "lerobot", "local/x", progress=False)
    target = EpisodeStore.open(tmp_path / "ur5e.zarr", mode="a")
    with pytest.raises(LeRobotDatasetError, match="observation.images.scene"):
        import_lerobot(root, "local/x", target, load_robot_config("ur5e_ros2_control"), progress=False)
    assert len(target) == 0
    with pytest.raises(LeRobotDatasetError, match="not a LeRobotDataset v3"):
        import_lerobot(tmp_path, "local/x", target, config, progress=False)
    with pytest.raises(LeRobotDatasetError, match="already exists"):
        export_lerobot(store, config, root, "local/x", progress=False)
