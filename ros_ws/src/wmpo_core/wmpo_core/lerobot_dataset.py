"""Export episodes to, and import them from, a LeRobotDataset v3 directory.

Uses lerobot's own `LeRobotDataset.create/add_frame/save_episode/finalize` for writing and
`LeRobotDataset(root=...)` for reading, so what we write is exactly what LeRobot tools load and
teleop demos recorded with LeRobot become training data here.

Conventions: keys `observation.images.<camera>` (video), `observation.state`, `action`. LeRobot
derives `timestamp` from the frame index; the real capture time of each step (seconds since the
episode's first step) travels as the extra feature `observation.capture_time`, so nothing is lost
on a round trip. For arms with a LeRobot driver, joint values are converted to and from LeRobot's
units (degrees, 0..100 gripper) with `wmpo_core.lerobot_units`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from wmpo_core.episode_store import EpisodeMeta, EpisodeStore, Source
from wmpo_core.robot_config import LeRobotDriver, RobotConfig
from wmpo_core.lerobot_units import vector_from_lerobot, vector_to_lerobot

CAPTURE_TIME_KEY = "observation.capture_time"
VIDEO_BACKEND = "pyav"
"""PyAV ships its own FFmpeg; torchcodec needs system FFmpeg libraries that many machines lack."""


class LeRobotDatasetError(ValueError):
    """A LeRobot dataset that does not fit the robot config; the message names the mismatch."""


def _image_key(camera: str) -> str:
    return f"observation.images.{camera}"


def lerobot_features(config: RobotConfig) -> dict[str, dict]:
    features: dict[str, dict] = {
        _image_key(cam.name): {"dtype": "video", "shape": cam.shape, "names": ["height", "width", "channels"]}
        for cam in config.cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (len(config.joints),), "names": config.joint_names}
    features["action"] = {"dtype": "float32", "shape": (config.action.dim,), "names": config.action.names}
    features[CAPTURE_TIME_KEY] = {"dtype": "float32", "shape": (1,), "names": None}
    return features


def _converts_units(config: RobotConfig) -> bool:
    return isinstance(config.driver, LeRobotDriver)


def export_lerobot(
    store: EpisodeStore,
    config: RobotConfig,
    root: Path,
    repo_id: str,
    episode_ids: Iterable[str] | None = None,
    progress: bool = True,
) -> Path:
    """Write the given (default: all) episodes recorded with `config` as a LeRobotDataset v3."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    ids = list(episode_ids) if episode_ids is not None else [m.episode_id for m in store.select(robot_config_name=config.name)]
    if not ids:
        raise LeRobotDatasetError(f"{store.root}: no episodes of robot config '{config.name}' to export")
    fps = int(round(config.control_rate_hz))
    if abs(fps - config.control_rate_hz) > 1e-6:
        raise LeRobotDatasetError(f"LeRobotDataset needs an integer fps; robot config '{config.name}' runs at {config.control_rate_hz} Hz")
    for episode_id in ids:
        meta = store.meta(episode_id)
        if meta.robot_config_hash != config.content_hash:
            raise LeRobotDatasetError(
                f"episode {episode_id} was recorded with robot config '{meta.robot_config_name}' "
                f"({meta.robot_config_hash[:19]}…), not with this '{config.name}' ({config.content_hash[:19]}…)"
            )
    root = Path(root)
    if root.exists():
        raise LeRobotDatasetError(f"{root} already exists; LeRobot datasets are written into a new directory")
    dataset = LeRobotDataset.create(
        repo_id=repo_id, fps=fps, features=lerobot_features(config), root=root, robot_type=config.robot_type, use_videos=True,
        video_backend=VIDEO_BACKEND,
    )
    try:
        for episode_id in tqdm(ids, desc="export", unit="episode", disable=not progress):
            episode = store.episode(episode_id)
            state, action, times = episode.state(), episode.action(), episode.time()
            if _converts_units(config):
                state = np.stack([vector_to_lerobot(row, config) for row in state]).astype(np.float32)
                if config.action.space == "joint_position":
                    action = np.stack([vector_to_lerobot(row, config) for row in action]).astype(np.float32)
            frames = {cam: episode.frames(cam) for cam in config.camera_names}
            for step in range(len(episode)):
                frame = {_image_key(cam): frames[cam][step] for cam in config.camera_names}
                frame["observation.state"] = state[step]
                frame["action"] = action[step]
                frame[CAPTURE_TIME_KEY] = np.asarray([times[step] - times[0]], dtype=np.float32)
                frame["task"] = episode.meta.task
                dataset.add_frame(frame)
            dataset.save_episode()
    finally:
        dataset.finalize()  # mandatory in LeRobot v3: without it the parquet footers are missing
    return root


def _episode_rows(dataset, index: int) -> Iterator[dict]:
    ep = dataset.meta.episodes[index]
    for row in range(int(ep["dataset_from_index"]), int(ep["dataset_to_index"])):
        yield dataset[row]


def import_lerobot(
    root: Path,
    repo_id: str,
    store: EpisodeStore,
    config: RobotConfig,
    source: Source = "teleop",
    success: bool | None = None,
    success_labeled_by: str | None = None,
    progress: bool = True,
) -> list[EpisodeMeta]:
    """Append every episode of a local LeRobotDataset v3 to `store`, laid out as `config` says.

    Episodes whose success is unknown are imported with `success=None` unless told otherwise
    (e.g. `success=True, success_labeled_by="human"` for a set of curated demonstrations).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise LeRobotDatasetError(f"{root}: not a LeRobotDataset v3 directory (no meta/info.json)")
    dataset = LeRobotDataset(repo_id, root=root, return_uint8=True, video_backend=VIDEO_BACKEND)
    features = dataset.meta.features
    expected = lerobot_features(config)
    for key in [*(_image_key(c) for c in config.camera_names), "observation.state", "action"]:
        if key not in features:
            raise LeRobotDatasetError(f"{root}: dataset has no feature '{key}' needed by robot config '{config.name}' (has {sorted(features)})")
        if tuple(features[key]["shape"]) != tuple(expected[key]["shape"]):
            raise LeRobotDatasetError(
                f"{root}: feature '{key}' has shape {tuple(features[key]['shape'])}, robot config '{config.name}' "
                f"needs {tuple(expected[key]['shape'])}"
            )
    imported: list[EpisodeMeta] = []
    for index in tqdm(range(dataset.meta.total_episodes), desc="import", unit="episode", disable=not progress):
        rows = list(_episode_rows(dataset, index))
        if not rows:
            continue
        tasks = {str(r["task"]) for r in rows}
        start = time.time()
        writer = store.begin_episode(
            config,
            source=source,
            task=sorted(tasks)[0],
            extra={"imported_from": str(root), "lerobot_repo_id": repo_id, "lerobot_episode_index": index},
        )
        try:
            for r in rows:
                state = np.asarray(r["observation.state"], dtype=np.float64)
                action = np.asarray(r["action"], dtype=np.float64)
                if _converts_units(config):
                    state = vector_from_lerobot(state, config)
                    if config.action.space == "joint_position":
                        action = vector_from_lerobot(action, config)
                offset = float(np.asarray(r[CAPTURE_TIME_KEY]).reshape(-1)[0]) if CAPTURE_TIME_KEY in r else float(r["timestamp"])
                images = {cam: np.asarray(r[_image_key(cam)]).transpose(1, 2, 0).copy() for cam in config.camera_names}
                writer.append(images=images, state=state, action=action, time=start + offset)
            imported.append(writer.commit(success=success, success_labeled_by=success_labeled_by))
        except BaseException:
            writer.discard()
            raise
    return imported
