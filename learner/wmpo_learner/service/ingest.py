"""Episode ingestion: from a received archive to a committed episode in the learner's store.

The service is the store's single writer (it holds the store's writer lock); training jobs open
the store read-only and `refresh()`. Every store access goes through one mutex because the
store object is not thread-safe and uploads are unpacked in worker threads.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal

from pydantic import ValidationError
from wmpo_core.episode_store import EPISODE_ATTR, EpisodeMeta, EpisodeStore, StoreFormatError
from wmpo_core.protocol.archive import extract_dir_archive
from wmpo_core.robot_config import RobotConfig


class EpisodeRejectedError(ValueError):
    """The archive unpacked but is not an acceptable episode (schema, robot config, id)."""


class EpisodeIngestor:
    def __init__(self, store: EpisodeStore, robot_config: RobotConfig):
        self.store = store
        self.robot_config = robot_config
        self._mutex = threading.Lock()

    def meta(self, episode_id: str) -> EpisodeMeta | None:
        with self._mutex:
            return self.store.meta(episode_id) if episode_id in self.store else None

    def page(self, offset: int, limit: int) -> tuple[int, list[EpisodeMeta]]:
        with self._mutex:
            ids = self.store.episode_ids
            return len(ids), [self.store.meta(i) for i in ids[offset : offset + limit]]

    def __len__(self) -> int:
        with self._mutex:
            return len(self.store)

    def ingest_archive(
        self, archive: Path, episode_id: str, workdir: Path
    ) -> tuple[Literal["stored", "already_stored"], EpisodeMeta]:
        """Unpack, validate and commit one episode. Blocking: run it in a worker thread.

        Raises ArchiveError (unsafe or broken archive) or EpisodeRejectedError; on any error the
        store is unchanged (`ingest_episode_dir` validates completely before its atomic rename).
        """
        existing = self.meta(episode_id)
        if existing is not None:
            return "already_stored", existing
        episode_dir = extract_dir_archive(archive, workdir / "unpacked", episode_id)
        archive.unlink()  # the unpacked copy is all we need; halves the disk an upload takes
        claimed = _read_episode_id(episode_dir)
        if claimed != episode_id:
            raise EpisodeRejectedError(
                f"archive for episode '{episode_id}' holds metadata of episode '{claimed}'"
            )
        with self._mutex:
            if episode_id in self.store:  # a concurrent upload of the same episode won
                return "already_stored", self.store.meta(episode_id)
            try:
                meta = self.store.ingest_episode_dir(episode_dir, self.robot_config)
            except (
                ValueError,
                StoreFormatError,
            ) as exc:  # EpisodeValidationError: schema, shapes, robot config
                raise EpisodeRejectedError(str(exc)) from None
        return "stored", meta

    def label(self, episode_id: str, success: bool | None, labeled_by: str) -> EpisodeMeta:
        with self._mutex:
            return self.store.set_success(episode_id, success, labeled_by)


def _read_episode_id(episode_dir: Path) -> str:
    """The id the episode's own metadata claims (the store validates the rest when ingesting)."""
    try:
        raw = json.loads((episode_dir / "zarr.json").read_text())
        return EpisodeMeta.model_validate(raw["attributes"][EPISODE_ATTR]).episode_id
    except FileNotFoundError:
        raise EpisodeRejectedError(
            f"archive '{episode_dir.name}/' is not an episode (no zarr.json)"
        ) from None
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise EpisodeRejectedError(
            f"archive '{episode_dir.name}/': invalid episode metadata ({exc})"
        ) from None
