"""One stored episode read into memory, at a model's image size: the loader every trainer uses.

SFT, the world model and the reward model all train on whole episodes held in memory: camera
frames resized once with the shared `resize_frames` (so training sees exactly what deployment
and scoring see), actions and states as float64 robot units. Reading them here, in one place,
keeps the three from drifting apart in dtype, resize path or which camera they check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wmpo_core.episode_store import EpisodeMeta, EpisodeStore
from wmpo_core.image_ops import resize_frames


@dataclass(frozen=True)
class EpisodeArrays:
    """What a trainer keeps of one episode."""

    meta: EpisodeMeta
    frames: dict[str, np.ndarray]
    """camera -> (T, S, S, C) uint8 frames at the requested image size."""
    action: np.ndarray | None
    """(T, A) float64 commanded actions in robot units; None when not asked for."""
    state: np.ndarray | None
    """(T, J) float64 joint values; None when not asked for."""


def load_episode(
    store: EpisodeStore,
    episode: EpisodeMeta | str,
    cameras: Sequence[str],
    image_size: int,
    action: bool = True,
    state: bool = False,
) -> EpisodeArrays:
    """Read `episode` (its metadata or id) from `store`: `cameras` resized to `image_size`
    square, and the action and state arrays when asked for. A camera the episode does not have
    is a one-line ValueError naming the episode and its cameras."""
    meta = store.meta(episode) if isinstance(episode, str) else episode
    absent = [c for c in cameras if c not in meta.cameras]
    if absent:
        raise ValueError(f"episode {meta.episode_id} has no camera {absent} (cameras: {list(meta.cameras)})")
    reader = store.episode(meta.episode_id)
    return EpisodeArrays(
        meta=meta,
        frames={c: resize_frames(reader.frames(c), image_size) for c in cameras},
        action=reader.action().astype(np.float64) if action else None,
        state=reader.state().astype(np.float64) if state else None,
    )
