"""LeRobotDataset v3 round trip: what we export, LeRobot's own LeRobotDataset loads; and back."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from lerobot_harness import moving_square, record
from wmpo_core.cli import main
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.lerobot_dataset import (
    LeRobotDatasetError,
    export_lerobot,
    import_lerobot,
    import_lerobot_to_path,
)
from wmpo_core.lerobot_units import vector_to_lerobot
from wmpo_core.robot_config import RobotConfig, load_robot_config


@dataclass(frozen=True)
class Exported:
    store: EpisodeStore
    ids: list[str]
    root: Path
    scheduling_kept: bool


REPO_ID = "local/so101_sim_demo"
LEROBOT_BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Two so101_sim episodes acted by a policy (one failed, one succeeded), exported once."""
    tmp = tmp_path_factory.mktemp("round_trip")
    config = load_robot_config("so101_sim")
    with EpisodeStore.open(tmp / "robot.zarr", mode="a") as store:
        ids = record(store, config, n_episodes=2, n_steps=10, source="policy", policy_version="act@v3")
    store = EpisodeStore.open(tmp / "robot.zarr")
    scheduling = (os.sched_getscheduler(0), os.sched_getparam(0))
    root = export_lerobot(store, config, tmp / "lerobot", REPO_ID, progress=False)
    # LeRobot's AV1 encoder, run as root, leaves its thread under SCHED_FIFO 99; export gives it back
    kept = (os.sched_getscheduler(0), os.sched_getparam(0)) == scheduling
    return Exported(store, ids, root, kept)


def test_export_is_loadable_by_lerobot_with_only_the_features_a_policy_gets(exported: Exported) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    assert exported.scheduling_kept
    dataset = LeRobotDataset(REPO_ID, root=exported.root, video_backend="pyav")
    assert dataset.meta.total_episodes == 2 and dataset.meta.total_frames == 20
    assert dataset.meta.robot_type == "so101_follower" and dataset.meta.fps == 10
    # nothing a robot config does not give a policy: a policy trained on it deploys on the robot
    assert set(dataset.meta.features) - LEROBOT_BOOKKEEPING == {
        "observation.images.front",
        "observation.state",
        "action",
    }
    item = dataset[13]
    assert tuple(item["observation.images.front"].shape) == (3, 128, 128)
    assert tuple(item["observation.state"].shape) == (6,) and tuple(item["action"].shape) == (4,)
    assert item["task"] == "pick up the cube"
    np.testing.assert_allclose(
        item["action"].numpy(), exported.store.episode(exported.ids[1]).action()[3], rtol=1e-6
    )
    # the metadata is in LeRobot's own episode table, where LeRobot's API selects on it
    assert dataset.meta.filter_episodes(lambda ep: ep["wmpo/success"] is True) == [1]
    assert dataset.meta.episodes[0]["wmpo/episode_id"] == exported.ids[0]
    assert dataset.meta.episodes[1]["wmpo/policy_version"] == "act@v3"
    np.testing.assert_array_equal(
        np.frombuffer(dataset.meta.episodes[1]["wmpo/time"], "<f8"),
        exported.store.episode(exported.ids[1]).time(),
    )


def test_an_export_whose_episode_table_was_edited_is_refused_naming_the_episode(
    exported: Exported, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "edited"
    shutil.copytree(exported.root, copy)
    (table_file,) = (copy / "meta" / "episodes").rglob("*.parquet")
    table = pq.read_table(table_file)
    times = table.column("wmpo/time").to_pylist()
    times[1] = times[1][:-8]  # one step short
    column = table.schema.get_field_index("wmpo/time")
    pq.write_table(table.set_column(column, "wmpo/time", pa.array(times, pa.binary())), table_file)
    with pytest.raises(
        LeRobotDatasetError, match=r"episode 1 \(ep_.*\) has 10 frames but capture times for \[9, 10\] steps"
    ):
        import_lerobot_to_path(copy, REPO_ID, tmp_path / "robot.zarr", load_robot_config("so101_sim"))
    assert not (tmp_path / "robot.zarr").exists()


def test_export_then_import_restores_metadata_and_capture_times_exactly(
    exported: Exported, tmp_path: Path
) -> None:
    config = load_robot_config("so101_sim")
    back = EpisodeStore.open(tmp_path / "back.zarr", mode="a")
    metas = import_lerobot(exported.root, REPO_ID, back, config, progress=False)
    assert [m.episode_id for m in metas] == exported.ids
    for index, meta in enumerate(metas):
        original = exported.store.meta(meta.episode_id)
        assert original.source == "policy" and original.success is bool(index)  # not the defaults
        assert meta.model_dump(exclude={"extra"}) == original.model_dump(exclude={"extra"})
        assert meta.extra == {
            **original.extra,
            "imported_from": str(exported.root),
            "lerobot_repo_id": REPO_ID,
            "lerobot_episode_index": index,
        }
        a, b = exported.store.episode(meta.episode_id), back.episode(meta.episode_id)
        np.testing.assert_array_equal(b.time(), a.time())
        np.testing.assert_array_equal(b.state_time(), a.state_time())
        np.testing.assert_array_equal(b.image_time("front"), a.image_time("front"))
        np.testing.assert_allclose(b.state(), a.state(), rtol=1e-6)
        np.testing.assert_allclose(b.action(), a.action(), rtol=1e-6)
        # video is lossy: frames come back close, with the square where it was
        diff = np.abs(b.frames("front").astype(int) - a.frames("front").astype(int))
        assert diff.mean() < 4.0


def test_a_second_import_is_refused_and_command_line_labels_override_recorded_ones(
    exported: Exported, tmp_path: Path
) -> None:
    config = load_robot_config("so101_sim")
    back = tmp_path / "back.zarr"
    with EpisodeStore.open(back, mode="a") as store:
        import_lerobot(exported.root, REPO_ID, store, config, progress=False)
        before = _tree(back)
        with pytest.raises(LeRobotDatasetError, match=r"episodes \[.*\] are already in .*; nothing imported"):
            import_lerobot(exported.root, REPO_ID, store, config, progress=False)
    assert _tree(back) == before

    relabelled = tmp_path / "relabelled.zarr"
    args = ["store", "import-lerobot", str(exported.root), str(relabelled), "--robot", "so101_sim"]
    assert main([*args, "--repo-id", REPO_ID, "--success", "false", "--source", "teleop"]) == 0
    metas = list(EpisodeStore.open(relabelled))
    assert [(m.source, m.success, m.success_labeled_by) for m in metas] == [("teleop", False, "human")] * 2
    assert sorted(m.env_seed for m in metas) == [0, 1] and {m.policy_version for m in metas} == {"act@v3"}


def test_an_export_is_refused_for_another_version_of_its_robot_config(
    exported: Exported, tmp_path: Path
) -> None:
    config = load_robot_config("so101_sim")
    edited = config.model_copy(update={"tasks": [*config.tasks, "stack the cubes"]})
    assert edited.content_hash != config.content_hash
    with pytest.raises(
        LeRobotDatasetError, match=r"episode 0 \(ep_.*\) was recorded with robot config 'so101_sim' \(sha256:"
    ):
        import_lerobot_to_path(exported.root, REPO_ID, tmp_path / "robot.zarr", edited, progress=False)
    assert not (tmp_path / "robot.zarr").exists()


def _small_so101_real() -> RobotConfig:
    """so101_real (30 Hz, LeRobot units) with a 64x48 camera, so test videos encode fast."""
    config = load_robot_config("so101_real")
    cam = config.cameras[0]
    small = config.model_copy(update={"cameras": [cam.model_copy(update={"width": 64, "height": 48})]})
    driver = config.driver.model_copy(
        update={"cameras": {"front": {**config.driver.cameras["front"], "width": 64, "height": 48}}}
    )
    return small.model_copy(update={"driver": driver})


def _lerobot_recording(
    root: Path,
    config: RobotConfig,
    fps: int,
    state_names: list[str] | None,
    action_names: list[str] | None,
    state: np.ndarray,
    action: np.ndarray,
) -> Path:
    """One episode written with LeRobot's own API, as its recorder does: its own feature names and
    order, no capture-time feature."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        f"observation.images.{cam.name}": {
            "dtype": "video",
            "shape": cam.shape,
            "names": ["height", "width", "channels"],
        }
        for cam in config.cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (state.shape[1],), "names": state_names}
    features["action"] = {"dtype": "float32", "shape": (action.shape[1],), "names": action_names}
    dataset = LeRobotDataset.create(
        repo_id="local/recording",
        fps=fps,
        features=features,
        root=root,
        robot_type=config.robot_type,
        use_videos=True,
        video_backend="pyav",
    )
    try:
        for step in range(len(state)):
            frame = {
                f"observation.images.{cam.name}": moving_square(step, cam.shape) for cam in config.cameras
            }
            frame.update(
                {
                    "observation.state": state[step].astype(np.float32),
                    "action": action[step].astype(np.float32),
                }
            )
            dataset.add_frame({**frame, "task": "pick up the cube"})
        dataset.save_episode()
    finally:
        dataset.finalize()
    return root


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_units_are_converted_for_lerobot_arms(tmp_path: Path) -> None:
    small = _small_so101_real()
    store = EpisodeStore.open(tmp_path / "robot.zarr", mode="a")
    ids = record(store, small, n_episodes=1, n_steps=4)
    root = export_lerobot(store, small, tmp_path / "lerobot", "local/so101_real", progress=False)

    import pandas as pd

    rows = pd.read_parquet(next((root / "data").rglob("*.parquet")))
    exported_state = np.stack(rows["observation.state"].to_numpy())
    np.testing.assert_allclose(
        exported_state,
        np.stack([vector_to_lerobot(r, small) for r in store.episode(ids[0]).state()]),
        rtol=1e-5,
    )
    assert np.abs(exported_state[:, :5]).max() > 4.0  # degrees, not radians

    back = EpisodeStore.open(tmp_path / "back.zarr", mode="a")
    meta = import_lerobot(root, "local/so101_real", back, small, progress=False)[0]
    np.testing.assert_allclose(
        back.episode(meta.episode_id).state(), store.episode(ids[0]).state(), rtol=1e-5, atol=1e-6
    )


def test_import_refuses_a_dataset_that_does_not_fit_the_robot(tmp_path: Path) -> None:
    config = load_robot_config("so101_sim")
    store = EpisodeStore.open(tmp_path / "robot.zarr", mode="a")
    record(store, config, n_episodes=1, n_steps=3)
    root = export_lerobot(store, config, tmp_path / "lerobot", "local/x", progress=False)
    target = EpisodeStore.open(tmp_path / "ur5e.zarr", mode="a")
    with pytest.raises(LeRobotDatasetError, match=r"observation\.images\.scene"):
        import_lerobot(root, "local/x", target, load_robot_config("ur5e_ros2_control"), progress=False)
    assert len(target) == 0
    with pytest.raises(LeRobotDatasetError, match="not a LeRobotDataset v3"):
        import_lerobot(tmp_path, "local/x", target, config, progress=False)
    with pytest.raises(LeRobotDatasetError, match="already exists"):
        export_lerobot(store, config, root, "local/x", progress=False)


def test_a_15_fps_dataset_is_refused_for_a_30_hz_robot_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    config = _small_so101_real()
    assert config.control_rate_hz == 30
    keys = [config.driver.joint_keys[j] for j in config.joint_names]
    values = np.tile(np.linspace(10.0, 60.0, 6), (4, 1))
    root = _lerobot_recording(tmp_path / "at15fps", config, 15, keys, keys, values, values)
    robot_yaml = tmp_path / "so101_real.yaml"  # the file name must match the config name
    robot_yaml.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    new_store = tmp_path / "new" / "robot.zarr"  # neither the store nor its parent exists
    capsys.readouterr()  # drop what writing the dataset printed
    code = main(["store", "import-lerobot", str(root), str(new_store), "--robot", str(robot_yaml)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "15 fps" in err and "30 Hz" in err
    assert not (tmp_path / "new").exists()

    existing = tmp_path / "existing.zarr"
    EpisodeStore.open(existing, mode="a").close()
    before = _tree(existing)
    with pytest.raises(
        LeRobotDatasetError, match=r"dataset runs at 15 fps, robot config 'so101_real' at 30 Hz"
    ):
        import_lerobot_to_path(root, "local/recording", existing, config, progress=False)
    assert _tree(existing) == before and len(EpisodeStore.open(existing)) == 0


def test_joints_in_another_order_are_imported_by_name(tmp_path: Path) -> None:
    config = _small_so101_real()
    keys = config.driver.joint_keys
    # LeRobot units: arm joints in degrees, gripper 0..100; each joint gets its own values
    lerobot_values = {
        "shoulder_pan": 10.0,
        "shoulder_lift": 20.0,
        "elbow_flex": 30.0,
        "wrist_flex": 40.0,
        "wrist_roll": 50.0,
        "gripper": 75.0,
    }
    state_order = ["gripper", "wrist_roll", "shoulder_pan", "elbow_flex", "shoulder_lift", "wrist_flex"]
    action_order = ["elbow_flex", "gripper", "shoulder_lift", "shoulder_pan", "wrist_roll", "wrist_flex"]
    steps = np.arange(4.0)[:, None]
    state = np.array([lerobot_values[j] for j in state_order])[None, :] + steps
    action = np.array([lerobot_values[j] for j in action_order])[None, :] - steps
    root = _lerobot_recording(
        tmp_path / "reordered",
        config,
        30,
        [keys[j] for j in state_order],
        [keys[j] for j in action_order],
        state,
        action,
    )

    store = EpisodeStore.open(tmp_path / "robot.zarr", mode="a")
    (meta,) = import_lerobot(root, "local/recording", store, config, progress=False)
    episode = store.episode(meta.episode_id)
    gripper = config.joint_names.index("gripper")
    np.testing.assert_allclose(episode.state()[:, gripper], (75.0 + steps[:, 0]) / 100.0, rtol=1e-5)
    np.testing.assert_allclose(
        episode.action()[:, config.action.names.index("gripper")], (75.0 - steps[:, 0]) / 100.0, rtol=1e-5
    )
    for joint in ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"]:
        column = config.joint_names.index(joint)
        np.testing.assert_allclose(
            episode.state()[:, column], np.radians(lerobot_values[joint] + steps[:, 0]), rtol=1e-5
        )
        np.testing.assert_allclose(
            episode.action()[:, column], np.radians(lerobot_values[joint] - steps[:, 0]), rtol=1e-5
        )
    # no capture-time feature: times come from LeRobot's timestamps, 1/30 s apart
    np.testing.assert_allclose(np.diff(episode.time()), 1 / 30, atol=1e-4)
    assert math.isclose(meta.control_rate_hz, 30)


@pytest.mark.parametrize(
    ("state_names", "error"),
    [
        (
            ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "grip"],
            r"feature 'observation.state' names .* do not match robot config 'so101_sim' .*: "
            r"unknown \['grip'\], missing \['gripper'\]",
        ),
        (
            ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "gripper", "gripper"],
            r"repeated \['gripper'\], missing \['wrist_roll'\]",
        ),
        (None, r"feature 'observation.state' has no per-value names"),
    ],
)
def test_names_that_do_not_match_the_robot_are_refused_naming_them(
    tmp_path: Path, state_names, error
) -> None:
    config = load_robot_config("so101_sim")
    state, action = np.zeros((3, 6)), np.zeros((3, 4))
    root = _lerobot_recording(
        tmp_path / "renamed", config, 10, state_names, config.action.names, state, action
    )
    with pytest.raises(LeRobotDatasetError, match=error):
        import_lerobot_to_path(root, "local/recording", tmp_path / "robot.zarr", config, progress=False)
    assert not (tmp_path / "robot.zarr").exists()


def test_a_failed_import_removes_the_store_it_created(tmp_path: Path) -> None:
    config = load_robot_config("so101_sim")
    root = _lerobot_recording(
        tmp_path / "broken",
        config,
        10,
        config.joint_names,
        config.action.names,
        np.zeros((3, 6)),
        np.zeros((3, 4)),
    )
    for video in (root / "videos").rglob("*.mp4"):
        video.write_bytes(b"not a video")
    with pytest.raises(
        LeRobotDatasetError, match=r"episode 0 cannot be read .*; 0 episodes imported before it were kept"
    ):
        import_lerobot_to_path(
            root, "local/recording", tmp_path / "new" / "robot.zarr", config, progress=False
        )
    assert not (tmp_path / "new").exists()
