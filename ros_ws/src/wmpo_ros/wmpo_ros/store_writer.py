"""The recorder's episode-store writer: one thread owns the store, the rest only queue work.

A slow disk must never block the control loop, so the recorder node's callbacks queue begin,
append, discard, commit and label requests here and return; the thread executes them in order.
A failing write is logged and the episode being written is discarded (never half committed);
the thread survives it. `stop()` first finishes everything queued, so an episode that ended
before shutdown is still committed. Free of ROS: `log` is any logger with info/warning/error,
`on_commit` gets each committed episode's metadata (the node publishes it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from wmpo_core.episode_store import EpisodeStore, EpisodeWriter, StoreError
from wmpo_core.robot_config import RobotConfig

from wmpo_ros.recording import CadenceReport, EpisodeInProgress
from wmpo_ros.step_sync import SyncedStep

LABEL_TIMEOUT_S = 30.0


class Log(Protocol):
    def info(self, message: str) -> Any: ...
    def warning(self, message: str) -> Any: ...
    def error(self, message: str) -> Any: ...


class StoreWriterThread:
    def __init__(
        self, store: EpisodeStore, config: RobotConfig, log: Log, on_commit: Callable[[dict[str, Any]], None]
    ):
        self.store = store
        self.config = config
        self._log = log
        self._on_commit = on_commit
        self.last_committed: dict[str, Any] | None = None
        """Metadata (JSON form) of the newest committed episode."""
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="recorder_writer", daemon=True)
        self._thread.start()

    def qsize(self) -> int:
        return self._queue.qsize()

    def begin(self, index: int, meta: dict[str, Any]) -> None:
        """Start writing episode `index` (meta: source, task, policy_version, env_seed)."""
        self._queue.put(("begin", (index, meta)))

    def append(self, index: int, step: SyncedStep) -> None:
        self._queue.put(("append", (index, step)))

    def discard(self, index: int) -> None:
        """Drop episode `index` if it is the one being written; nothing committed is touched."""
        self._queue.put(("discard", index))

    def commit(
        self,
        episode: EpisodeInProgress,
        success: bool | None,
        labeled_by: str | None,
        extra: dict[str, Any],
        policy_version: str | None,
    ) -> threading.Event:
        """Commit `episode` once its queued steps are written; the event is set when it is done."""
        done = threading.Event()
        self._queue.put(("commit", (episode, success, labeled_by, extra, policy_version, done)))
        return done

    def label_last(self, success: bool) -> str:
        """Label the newest committed episode (a human's label); waits for the writes queued before."""
        done = threading.Event()
        result: dict[str, str] = {}
        self._queue.put(("label", (success, done, result)))
        done.wait(LABEL_TIMEOUT_S)
        if "error" in result:
            raise StoreError(result["error"])
        return result.get("message", "labelling timed out")

    def stop(self) -> None:
        """Finish what is queued (an unfinished episode is discarded), then end the thread."""
        self._queue.put(("stop", None))
        self._thread.join()

    def _loop(self) -> None:
        writer: EpisodeWriter | None = None
        writer_index = -1
        while True:
            kind, payload = self._queue.get()
            try:
                if kind == "stop":
                    if writer is not None:
                        writer.discard()
                    return
                if kind == "begin":
                    writer_index, meta = payload
                    writer = self.store.begin_episode(
                        self.config,
                        source=meta["source"],
                        task=meta["task"],
                        policy_version=meta["policy_version"],
                        env_seed=meta["env_seed"],
                    )
                elif kind == "append":
                    index, step = payload
                    if writer is not None and index == writer_index:
                        writer.append(
                            step.images, step.state, step.action, step.time, step.image_times, step.state_time
                        )
                elif kind == "discard":
                    if writer is not None and payload == writer_index:
                        writer.discard()
                        writer = None
                elif kind == "commit":
                    episode, success, labeled_by, extra, policy_version, done = payload
                    try:
                        if writer is not None and episode.index == writer_index:
                            writer.meta = writer.meta.model_copy(
                                update={
                                    "extra": {**writer.meta.extra, **extra},
                                    "policy_version": policy_version,
                                }
                            )
                            meta = writer.commit(success=success, success_labeled_by=labeled_by)
                            writer = None
                            self._announce(meta.model_dump(mode="json"), extra)
                        elif episode.steps == 0:
                            self._log.warning(
                                f"episode #{episode.index} ended ({extra['ended_by']}) with no steps; "
                                "nothing committed"
                            )
                        else:
                            self._log.error(
                                f"episode #{episode.index} not committed: an earlier write failed (see above)"
                            )
                    finally:
                        done.set()
                elif kind == "label":
                    self._label(*payload)
            except Exception as exc:  # the writer must survive a bad step; say loudly what was lost
                self._log.error(f"episode store write ({kind}) failed: {exc}")
                if kind in ("begin", "append", "commit") and writer is not None:
                    writer.discard()
                    writer = None

    def _announce(self, meta: dict[str, Any], extra: dict[str, Any]) -> None:
        self.last_committed = meta
        self._on_commit(meta)
        self._log.info(
            f"committed {meta['episode_id']}: success={meta['success']} ({meta['success_labeled_by']}); "
            f"{CadenceReport(**extra['cadence']).line()}"
        )

    def _label(self, success: bool, done: threading.Event, result: dict[str, str]) -> None:
        try:
            if self.last_committed is None:
                result["error"] = "no episode recorded yet to label"
            else:
                meta = self.store.set_success(self.last_committed["episode_id"], success, "human")
                self.last_committed = meta.model_dump(mode="json")
                result["message"] = f"labelled {meta.episode_id} success={success}"
        finally:
            done.set()
