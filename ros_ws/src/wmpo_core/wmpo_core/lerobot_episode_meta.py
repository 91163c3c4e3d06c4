"""Our episode metadata and exact capture times inside a LeRobot dataset's own per-episode table.

LeRobot v3 keeps one row per episode in `meta/episodes/chunk-*/file-*.parquet` and loads every
column of it (except `stats/*`) into `LeRobotDatasetMetadata.episodes`, where
`meta.filter_episodes(lambda ep: ep["wmpo/success"] is True)` can select on it. That is where what a
robot config does not give a policy travels: who acted (source, policy version), the success label,
the env seed, the robot config hash, free-form `extra`, and the real capture times of every step.
`meta/info.json` would not do (LeRobot drops keys it does not know when it rewrites it), and a
per-frame feature would become a policy input that no robot provides at deployment.

Capture times are float64 little-endian bytes (`np.frombuffer(ep["wmpo/time"], "<f8")`), not
lists: LeRobot reads an episode's row twice for every frame it loads, and reading a row turned each
1000-step list column into Python floats in 0.17 ms, a bytes column in 0.02 ms (measured with
`datasets` on a 2-core VM).

LeRobot 0.6 has no API for extra episode columns, so they are added to the finished files after
`finalize()` (each file rewritten to a temporary name, then renamed over the original).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from wmpo_core.episode_store import EpisodeMeta, EpisodeReader, Source
from wmpo_core.ids import ID_PATTERN

PREFIX = "wmpo/"
IMAGE_TIME = "image_time/"
EPISODES_GLOB = "meta/episodes/*/*.parquet"


class EpisodeMetaColumnsError(ValueError):
    """The wmpo columns of a dataset's episode table are missing pieces or malformed."""


class RecordedEpisode(BaseModel):
    """What export kept of one episode beyond LeRobot's own fields (task, length, fps, features)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    episode_id: str = Field(pattern=ID_PATTERN)
    robot_config_name: str
    robot_config_hash: str
    policy_version: str | None
    source: Source
    success: bool | None
    success_labeled_by: str | None
    env_seed: int | None
    extra: dict[str, Any]
    time: list[float]
    """Control-tick time of each step, unix seconds, as stored (float64)."""
    state_time: list[float]
    image_time: dict[str, list[float]]

    @field_validator("extra", mode="before")
    @classmethod
    def _extra_from_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("time", "state_time", mode="before")
    @classmethod
    def _times_from_bytes(cls, value: Any) -> Any:
        return _times(value)

    @field_validator("image_time", mode="before")
    @classmethod
    def _image_times_from_bytes(cls, value: Any) -> Any:
        return {cam: _times(t) for cam, t in value.items()} if isinstance(value, dict) else value

    @classmethod
    def of(cls, meta: EpisodeMeta, episode: EpisodeReader) -> RecordedEpisode:
        return cls(
            episode_id=meta.episode_id,
            robot_config_name=meta.robot_config_name,
            robot_config_hash=meta.robot_config_hash,
            policy_version=meta.policy_version,
            source=meta.source,
            success=meta.success,
            success_labeled_by=meta.success_labeled_by,
            env_seed=meta.env_seed,
            extra=meta.extra,
            time=episode.time().tolist(),
            state_time=episode.state_time().tolist(),
            image_time={cam: episode.image_time(cam).tolist() for cam in meta.cameras},
        )


def _times(value: Any) -> Any:
    if not isinstance(value, bytes):
        return value
    if len(value) % 8:
        raise ValueError(f"capture times of {len(value)} bytes are not float64 values")
    return np.frombuffer(value, dtype="<f8").tolist()


def _schema(cameras: list[str]) -> pa.Schema:
    times = pa.binary()  # float64 little-endian
    return pa.schema(
        [
            (PREFIX + "episode_id", pa.string()),
            (PREFIX + "robot_config_name", pa.string()),
            (PREFIX + "robot_config_hash", pa.string()),
            (PREFIX + "policy_version", pa.string()),
            (PREFIX + "source", pa.string()),
            (PREFIX + "success", pa.bool_()),
            (PREFIX + "success_labeled_by", pa.string()),
            (PREFIX + "env_seed", pa.int64()),
            (PREFIX + "extra", pa.string()),  # free-form dict, as JSON
            (PREFIX + "time", times),
            (PREFIX + "state_time", times),
            *((PREFIX + IMAGE_TIME + cam, times) for cam in cameras),
        ]
    )


def _columns(recorded: RecordedEpisode) -> dict[str, Any]:
    fields = recorded.model_dump(exclude={"extra", "time", "state_time", "image_time"})
    columns = {PREFIX + name: value for name, value in fields.items()}
    columns[PREFIX + "extra"] = json.dumps(recorded.extra, sort_keys=True)
    times = {"time": recorded.time, "state_time": recorded.state_time}
    times.update({IMAGE_TIME + cam: t for cam, t in recorded.image_time.items()})
    columns.update({PREFIX + name: np.asarray(t, dtype="<f8").tobytes() for name, t in times.items()})
    return columns


def add_episode_columns(root: Path, recorded: Mapping[int, RecordedEpisode], cameras: list[str]) -> None:
    """Add the wmpo columns to every episode file of the finalized dataset at `root`.

    `recorded` maps LeRobot's `episode_index` to the episode written under it; every row of the
    table must have one.
    """
    schema = _schema(cameras)
    for path in sorted(Path(root).glob(EPISODES_GLOB)):
        table = pq.read_table(path)
        rows = [_columns(recorded[int(i)]) for i in table.column("episode_index").to_pylist()]
        for field in schema:
            table = table.append_column(field, pa.array([row[field.name] for row in rows], type=field.type))
        partial = path.with_name(path.name + ".partial")
        pq.write_table(table, partial, compression="snappy")
        os.replace(partial, path)


def recorded_episode(row: Mapping[str, Any], cameras: list[str]) -> RecordedEpisode | None:
    """The wmpo metadata of one row of `LeRobotDatasetMetadata.episodes`; None for an episode that
    has none (recorded by LeRobot, or its row rebuilt by a tool that drops unknown columns)."""
    if row.get(PREFIX + "episode_id") is None:
        return None
    values: dict[str, Any] = {}
    image_time: dict[str, Any] = {}
    for key, value in row.items():
        if key.startswith(PREFIX + IMAGE_TIME):
            image_time[key.removeprefix(PREFIX + IMAGE_TIME)] = value
        elif key.startswith(PREFIX):
            values[key.removeprefix(PREFIX)] = value
    missing = sorted(set(cameras) - set(image_time))
    if missing:
        raise EpisodeMetaColumnsError(
            f"no capture times for cameras {missing} (columns {PREFIX}{IMAGE_TIME}*)"
        )
    try:
        return RecordedEpisode(**values, image_time={cam: image_time[cam] for cam in cameras})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).strip().splitlines()
        raise EpisodeMetaColumnsError(" ".join(first[:3])) from None
