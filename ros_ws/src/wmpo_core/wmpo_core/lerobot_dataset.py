"""Export episodes to, and import them from, a LeRobotDataset v3 directory.

Uses lerobot's own `LeRobotDataset.create/add_frame/save_episode/finalize` for writing and
`LeRobotDataset(root=...)` for reading, so what we write is exactly what LeRobot tools load and
teleop demos recorded with LeRobot become training data here.

Conventions: keys `observation.images.<camera>` (video), `observation.state`, `action`: only what
the robot config gives a policy, so a policy trained on an export by `lerobot-train` deploys on the
robot. LeRobot derives `timestamp` from the frame index; the real capture times and the episode
metadata (source, success, env seed, policy version, robot config hash, extra) travel in LeRobot's
per-episode table (`wmpo_core.lerobot_episode_meta`), and import restores them. For arms with a
LeRobot driver, joint values are converted to and from LeRobot's units (degrees, 0..100 gripper)
with `wmpo_core.lerobot_units`.

An import never guesses: state and action values are matched to the config's joints and action
dimensions by LeRobot's per-feature `names` (so a dataset in another joint order lands right),
and a dataset whose names, shapes, cameras or fps do not fit the config is refused before
anything is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from tqdm import tqdm

from wmpo_core.episode_store import EpisodeMeta, EpisodeStore, Source
from wmpo_core.lerobot_episode_meta import (
    EpisodeMetaColumnsError,
    RecordedEpisode,
    add_episode_columns,
    recorded_episode,
)
from wmpo_core.lerobot_units import vector_from_lerobot, vector_to_lerobot
from wmpo_core.robot_config import LeRobotDriver, RobotConfig

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy (seconds); only when used

RECORDED: Final = "recorded"
"""For import's `source`/`success`: what the dataset recorded (our exports), else teleop/unknown."""
VIDEO_BACKEND = "pyav"
"""PyAV ships its own FFmpeg; torchcodec needs system FFmpeg libraries that many machines lack."""


class LeRobotDatasetError(ValueError):
    """A LeRobot dataset that does not fit the robot config; the message names the mismatch."""


def _image_key(camera: str) -> str:
    return f"observation.images.{camera}"


def lerobot_features(config: RobotConfig) -> dict[str, dict]:
    """The dataset features of `config`: exactly what a policy gets on the robot, nothing else."""
    features: dict[str, dict] = {
        _image_key(cam.name): {"dtype": "video", "shape": cam.shape, "names": ["height", "width", "channels"]}
        for cam in config.cameras
    }
    features["observation.state"] = {
        "dtype": "float32",
        "shape": (len(config.joints),),
        "names": config.joint_names,
    }
    features["action"] = {"dtype": "float32", "shape": (config.action.dim,), "names": config.action.names}
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
    """Write the given (default: all) episodes recorded with `config` as a LeRobotDataset v3.

    Their metadata and capture times go into LeRobot's per-episode table. If writing fails, the
    new directory is removed again.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy (seconds); only when used

    ids = (
        list(episode_ids)
        if episode_ids is not None
        else [m.episode_id for m in store.select(robot_config_name=config.name)]
    )
    if not ids:
        raise LeRobotDatasetError(f"{store.root}: no episodes of robot config '{config.name}' to export")
    fps = round(config.control_rate_hz)
    if abs(fps - config.control_rate_hz) > 1e-6:
        raise LeRobotDatasetError(
            f"LeRobotDataset needs an integer fps; robot config '{config.name}' runs at "
            f"{config.control_rate_hz} Hz"
        )
    for episode_id in ids:
        meta = store.meta(episode_id)
        if meta.robot_config_hash != config.content_hash:
            raise LeRobotDatasetError(
                f"episode {episode_id} was recorded with robot config '{meta.robot_config_name}' "
                f"({meta.robot_config_hash[:19]}…), not with this '{config.name}' "
                f"({config.content_hash[:19]}…)"
            )
    root = Path(root)
    if root.exists():
        raise LeRobotDatasetError(f"{root} already exists; LeRobot datasets are written into a new directory")
    try:
        dataset = LeRobotDataset.create(
            repo_id=repo_id,
            fps=fps,
            features=lerobot_features(config),
            root=root,
            robot_type=config.robot_type,
            use_videos=True,
            video_backend=VIDEO_BACKEND,
        )
        recorded: dict[int, RecordedEpisode] = {}
        with _scheduling_kept(), _finalized(dataset):
            for index, episode_id in enumerate(
                tqdm(ids, desc="export", unit="episode", disable=not progress)
            ):
                recorded[index] = _export_episode(dataset, store, episode_id, config)
        add_episode_columns(root, recorded, config.camera_names)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def _export_episode(dataset, store: EpisodeStore, episode_id: str, config: RobotConfig) -> RecordedEpisode:
    """Add one episode's frames to `dataset` and save it; return what goes into the episode table."""
    episode = store.episode(episode_id)
    state, action = episode.state(), episode.action()
    if _converts_units(config):
        state = np.stack([vector_to_lerobot(row, config) for row in state]).astype(np.float32)
        if config.action.space == "joint_position":
            action = np.stack([vector_to_lerobot(row, config) for row in action]).astype(np.float32)
    frames = {cam: episode.frames(cam) for cam in config.camera_names}
    for step in range(len(episode)):
        frame = {_image_key(cam): frames[cam][step] for cam in config.camera_names}
        frame["observation.state"] = state[step]
        frame["action"] = action[step]
        frame["task"] = episode.meta.task
        dataset.add_frame(frame)
    dataset.save_episode()
    return RecordedEpisode.of(episode.meta, episode)


@contextlib.contextmanager
def _finalized(dataset) -> Iterator[None]:
    try:
        yield
    finally:
        dataset.finalize()  # mandatory in LeRobot v3: without it the parquet footers are missing


@contextlib.contextmanager
def _scheduling_kept() -> Iterator[None]:
    """Give the calling thread its scheduling policy back after LeRobot's video encoding.

    Measured: run as root, LeRobot's default AV1 encoder (SVT-AV1) leaves the encoding thread
    under SCHED_FIFO at priority 99, and every process or thread it starts afterwards inherits that;
    a training run started later from the same process then starved the whole machine.
    """
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
            os.sched_setscheduler(0, policy, param)


def _episode_rows(dataset, index: int) -> Iterator[dict]:
    ep = dataset.meta.episodes[index]
    for row in range(int(ep["dataset_from_index"]), int(ep["dataset_to_index"])):
        yield dataset[row]


def _feature_names(feature: dict) -> list[str] | None:
    """A feature's per-value names: LeRobot v3 writes a list, datasets converted from v2 a
    one-entry dict such as {"motors": [...]}; anything else has no usable names."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    return None


def _accepted_names(config: RobotConfig, name: str, lerobot_keys: bool) -> set[str]:
    """The dataset names that mean config joint/dimension `name`: itself, and for an arm with a
    LeRobot driver the key LeRobot records it under ('shoulder_pan.pos')."""
    driver = config.driver
    if lerobot_keys and isinstance(driver, LeRobotDriver) and name in driver.joint_keys:
        return {name, driver.joint_keys[name]}
    return {name}


def _columns_by_name(
    root: Path, key: str, feature: dict, config: RobotConfig, wanted: list[str], lerobot_keys: bool
) -> np.ndarray:
    """For each of `wanted` (config order), the index of its value in the dataset's `key` vector,
    matched by LeRobot's per-feature `names`: a position says nothing about which joint it is."""
    names = _feature_names(feature)
    if names is None:
        raise LeRobotDatasetError(
            f"{root}: feature '{key}' has no per-value names (names={feature.get('names')!r}), so its values "
            f"cannot be matched to robot config '{config.name}' {wanted}; add them to meta/info.json"
        )
    meaning = {alias: name for name in wanted for alias in _accepted_names(config, name, lerobot_keys)}
    unknown = [n for n in names if n not in meaning]
    matched = [meaning[n] for n in names if n in meaning]
    problems = {
        "unknown": unknown,
        "repeated": sorted({n for n in matched if matched.count(n) > 1}),
        "missing": [n for n in wanted if n not in matched],
    }
    if any(problems.values()):
        raise LeRobotDatasetError(
            f"{root}: feature '{key}' names {names} do not match robot config '{config.name}' {wanted}: "
            + ", ".join(f"{label} {values}" for label, values in problems.items() if values)
        )
    column = {meaning[n]: i for i, n in enumerate(names)}
    return np.array([column[n] for n in wanted], dtype=np.int64)


@dataclass(frozen=True)
class CheckedDataset:
    """A LeRobot dataset that fits a robot config, with the dataset column of each config joint
    and action dimension and each episode's recorded metadata (None for episodes recorded by
    LeRobot); checking writes nothing, so a refused dataset leaves no trace."""

    root: Path
    repo_id: str
    config: RobotConfig
    dataset: LeRobotDataset
    state_columns: np.ndarray
    action_columns: np.ndarray
    recorded: tuple[RecordedEpisode | None, ...]


def check_lerobot_dataset(root: Path, repo_id: str, config: RobotConfig) -> CheckedDataset:
    """Load a local LeRobotDataset v3 and check it against `config`: cameras, shapes, the names
    of the state and action values, the frame rate and, for our exports, the robot config each
    episode was recorded with. Raises LeRobotDatasetError naming the mismatch."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy (seconds); only when used

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise LeRobotDatasetError(f"{root}: not a LeRobotDataset v3 directory (no meta/info.json)")
    try:
        dataset = LeRobotDataset(repo_id, root=root, return_uint8=True, video_backend=VIDEO_BACKEND)
    except Exception as exc:  # LeRobot raises many types for a broken or foreign dataset: one line for all
        raise LeRobotDatasetError(
            f"{root}: LeRobot cannot load this dataset ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    features = dataset.meta.features
    expected = lerobot_features(config)
    needed = [*(_image_key(c) for c in config.camera_names), "observation.state", "action"]
    for key in needed:
        if key not in features:
            raise LeRobotDatasetError(
                f"{root}: dataset has no feature '{key}' needed by robot config '{config.name}' "
                f"(has {sorted(features)})"
            )
    fps = dataset.meta.fps
    if abs(fps - config.control_rate_hz) > 1e-6:
        raise LeRobotDatasetError(
            f"{root}: dataset runs at {fps} fps, robot config '{config.name}' at "
            f"{config.control_rate_hz:g} Hz; its steps would be stored with the wrong rate "
            "(resample it to the config's rate first)"
        )
    state_columns = _columns_by_name(
        root, "observation.state", features["observation.state"], config, config.joint_names, True
    )
    action_columns = _columns_by_name(
        root,
        "action",
        features["action"],
        config,
        config.action.names,
        config.action.space == "joint_position",
    )
    for key in needed:
        if tuple(features[key]["shape"]) != tuple(expected[key]["shape"]):
            raise LeRobotDatasetError(
                f"{root}: feature '{key}' has shape {tuple(features[key]['shape'])}, "
                f"robot config '{config.name}' needs {tuple(expected[key]['shape'])}"
            )
    recorded = _recorded_episodes(root, dataset, config)
    return CheckedDataset(root, repo_id, config, dataset, state_columns, action_columns, recorded)


def _recorded_episodes(root: Path, dataset, config: RobotConfig) -> tuple[RecordedEpisode | None, ...]:
    """Each episode's metadata from LeRobot's episode table (None where it has none), checked
    against `config` and the episode's length."""
    result: list[RecordedEpisode | None] = []
    for index, row in enumerate(dataset.meta.episodes):
        try:
            recorded = recorded_episode(row, config.camera_names)
        except EpisodeMetaColumnsError as exc:
            raise LeRobotDatasetError(f"{root}: episode {index} has broken wmpo metadata: {exc}") from None
        if recorded is not None:
            if recorded.robot_config_hash != config.content_hash:
                raise LeRobotDatasetError(
                    f"{root}: episode {index} ({recorded.episode_id}) was recorded with robot config "
                    f"'{recorded.robot_config_name}' ({recorded.robot_config_hash[:19]}…), not with this "
                    f"'{config.name}' ({config.content_hash[:19]}…); import it with the config it was "
                    "recorded with"
                )
            counts = [len(recorded.time), len(recorded.state_time), *map(len, recorded.image_time.values())]
            if set(counts) != {int(row["length"])}:
                raise LeRobotDatasetError(
                    f"{root}: episode {index} ({recorded.episode_id}) has {row['length']} frames but capture "
                    f"times for {sorted(set(counts))} steps (edited after export?)"
                )
        result.append(recorded)
    ids = [r.episode_id for r in result if r is not None]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise LeRobotDatasetError(f"{root}: episodes {repeated} appear more than once in the dataset")
    return tuple(result)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def import_checked(
    checked: CheckedDataset,
    store: EpisodeStore,
    source: Source | Literal["recorded"] = RECORDED,
    success: bool | Literal["recorded"] | None = RECORDED,
    success_labeled_by: str | None = None,
    progress: bool = True,
) -> list[EpisodeMeta]:
    """Append every episode of a checked dataset to `store`, each joint by name, in config units.

    Episodes we exported come back as they were (id, source, success, seed, policy version, extra,
    exact capture times) unless `source`/`success` override them; the import's provenance is
    added to `extra`. An episode id already in `store` is refused before anything is written. Each
    episode is committed atomically; one that cannot be read is discarded and reported as a
    LeRobotDatasetError naming it (episodes committed before it stay, complete).
    """
    dataset, root, config = checked.dataset, checked.root, checked.config
    present = sorted(r.episode_id for r in checked.recorded if r is not None and r.episode_id in store)
    if present:
        raise LeRobotDatasetError(f"{root}: episodes {present} are already in {store.root}; nothing imported")
    imported: list[EpisodeMeta] = []
    for index in tqdm(
        range(dataset.meta.total_episodes), desc="import", unit="episode", disable=not progress
    ):
        try:
            rows = list(_episode_rows(dataset, index))
        except Exception as exc:  # decoding errors come from several libraries (pyav, pyarrow, torch)
            raise LeRobotDatasetError(
                f"{root}: episode {index} cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                f"{len(imported)} episodes imported before it were kept"
            ) from exc
        if not rows:
            continue
        recorded = checked.recorded[index]
        provenance = {
            "imported_from": str(root),
            "lerobot_repo_id": checked.repo_id,
            "lerobot_episode_index": index,
        }
        start = time.time()
        writer = store.begin_episode(
            config,
            source=(recorded.source if recorded else "teleop") if source == RECORDED else source,
            task=sorted({str(r["task"]) for r in rows})[0],
            policy_version=recorded.policy_version if recorded else None,
            env_seed=recorded.env_seed if recorded else None,
            episode_id=recorded.episode_id if recorded else None,
            extra={**recorded.extra, **provenance} if recorded else provenance,
        )
        try:
            for step, r in enumerate(rows):
                state = np.asarray(r["observation.state"], dtype=np.float64)[checked.state_columns]
                action = np.asarray(r["action"], dtype=np.float64)[checked.action_columns]
                if _converts_units(config):
                    state = vector_from_lerobot(state, config)
                    if config.action.space == "joint_position":
                        action = vector_from_lerobot(action, config)
                images = {
                    cam: np.asarray(r[_image_key(cam)]).transpose(1, 2, 0).copy()
                    for cam in config.camera_names
                }
                if recorded is None:  # recorded by LeRobot: its timestamps, from now
                    writer.append(
                        images=images, state=state, action=action, time=start + float(r["timestamp"])
                    )
                else:
                    writer.append(
                        images=images,
                        state=state,
                        action=action,
                        time=recorded.time[step],
                        image_times={cam: t[step] for cam, t in recorded.image_time.items()},
                        state_time=recorded.state_time[step],
                    )
            if success != RECORDED:
                label, labeled_by = success, success_labeled_by
            elif recorded is not None:
                label, labeled_by = recorded.success, recorded.success_labeled_by
            else:
                label, labeled_by = None, None
            imported.append(writer.commit(success=label, success_labeled_by=labeled_by))
        except BaseException:
            writer.discard()
            raise
    return imported


def import_lerobot(
    root: Path,
    repo_id: str,
    store: EpisodeStore,
    config: RobotConfig,
    source: Source | Literal["recorded"] = RECORDED,
    success: bool | Literal["recorded"] | None = RECORDED,
    success_labeled_by: str | None = None,
    progress: bool = True,
) -> list[EpisodeMeta]:
    """Check a local LeRobotDataset v3 against `config`, then append every episode to `store`.

    Episodes recorded by LeRobot come in as `teleop` with `success=None` unless told otherwise
    (e.g. `success=True, success_labeled_by="human"` for a set of curated demonstrations); our
    exports keep what they recorded.
    """
    checked = check_lerobot_dataset(root, repo_id, config)
    return import_checked(checked, store, source, success, success_labeled_by, progress)


def import_lerobot_to_path(
    root: Path,
    repo_id: str,
    store_path: Path,
    config: RobotConfig,
    source: Source | Literal["recorded"] = RECORDED,
    success: bool | Literal["recorded"] | None = RECORDED,
    success_labeled_by: str | None = None,
    progress: bool = True,
) -> list[EpisodeMeta]:
    """`import_lerobot` into the store at `store_path`, created if missing, for the command line.

    The dataset is checked before the store is opened, so a refused dataset creates nothing; if
    the import fails later, the directories this call created (the store, missing parents) are
    removed.
    """
    checked = check_lerobot_dataset(root, repo_id, config)
    store_path = Path(store_path).absolute()
    created = None
    for path in [store_path, *store_path.parents]:
        if path.exists():
            break
        created = path
    try:
        with EpisodeStore.open(store_path, mode="a") as store:
            return import_checked(checked, store, source, success, success_labeled_by, progress)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
