"""Which episodes the sync node uploads, free of ROS: this robot's own, from its episode store.

The recorder creates the store, perhaps after the sync node starts, so it is opened (read-only)
on first need. The recorder announces an episode after committing it, so every episode of this
robot is in the store by then; an announced id that is not there is another robot graph's on the
same ROS network and is not uploaded. At start-up every stored episode goes into the outbox (the
outbox ignores ids it already has), so episodes committed while the node was down are sent too.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from wmpo_core.episode_store import EpisodeStore

from wmpo_ros.learner_client import LearnerClient
from wmpo_ros.outbox import Outbox, PermanentUploadError, UploadFn, store_uploader


def announced_episode_id(data: str) -> str:
    """The episode id in a recorder announcement (JSON with "episode_id"); raises ValueError,
    KeyError or TypeError on one that is unreadable."""
    return str(json.loads(data)["episode_id"])


class OwnEpisodes:
    """This robot's episode store as the uploads see it: membership, backlog and the upload call."""

    def __init__(self, store_path: Path, client: LearnerClient):
        self.store_path = store_path
        self._client = client
        self._lock = threading.Lock()  # membership checks (executor) and uploads (worker) share it
        self._store: EpisodeStore | None = None
        self._uploader: UploadFn | None = None

    def _exists(self) -> bool:
        return (self.store_path / "zarr.json").exists()

    def store(self) -> EpisodeStore | None:
        """The robot's store, read-only; None until the recorder has created it."""
        with self._lock:
            if self._store is None and self._exists():
                self._store = EpisodeStore.open(self.store_path)
            return self._store

    def enqueue_stored(self, outbox: Outbox) -> list[str]:
        """Queue every stored episode the outbox does not have yet; returns the newly queued ids."""
        if not self._exists():
            return []
        with EpisodeStore.open(self.store_path) as store:
            return [eid for eid in store.episode_ids if outbox.enqueue(eid)]

    def holds(self, episode_id: str) -> bool:
        """Whether `episode_id` is one of this robot's (in its store, looked up again if new)."""
        store = self.store()
        if store is None:
            return False
        if episode_id not in store:
            store.refresh()
        return episode_id in store

    def upload(self, episode_id: str) -> str:
        """Send one stored episode to the learner (the outbox's UploadFn); the learner's answer."""
        if self._uploader is None:
            store = self.store()
            if store is None:
                raise PermanentUploadError(
                    f"episode '{episode_id}': there is no local store at {self.store_path}"
                )
            self._uploader = store_uploader(self._client, store)
        return self._uploader(episode_id)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
