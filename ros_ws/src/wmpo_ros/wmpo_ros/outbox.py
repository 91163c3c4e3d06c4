"""Durable outbox: finished episodes on the robot wait here until the learner has them.

The queue is a small SQLite database (stdlib, transactional, survives a killed process or a
power cut with `synchronous=FULL`), one row per episode id:

    pending  -> waiting for (another) upload attempt at `next_attempt_at`
    sent     -> the learner confirmed it ('stored' or 'already_stored'); kept as a record
    parked   -> the learner refused it permanently (4xx: schema, robot config, size); the
                reason is kept and reported, and it is not retried until `requeue()`d

The recorder (or the sync node, when it sees a new committed episode) calls `enqueue(id)`; an
`OutboxWorker` uploads due episodes one at a time. Learner down: the whole queue waits with
exponential backoff (with jitter, capped) and nothing is lost; after a restart of either side
pending episodes are simply sent again. Re-sending is harmless because the learner is
idempotent by episode id. While the learner does not answer at all, a worker with a `probe`
checks its health endpoint every few seconds and retries the queue as soon as it answers, so a
drain wait never sleeps through the learner's return. One worker uploads from an outbox at a
time (a lock file next to it). No rclpy here: the ROS node wraps this; `wmpo outbox push`
(`wmpo_ros.outbox_cli`) drains a store's outbox with no robot running.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from wmpo_core.episode_store import EpisodeStore
from wmpo_core.pid_lock import LockHeld, hold_lock

from wmpo_ros.learner_client import LearnerClient, LearnerError

log = logging.getLogger("wmpo.outbox")

EntryState = Literal["pending", "sent", "parked"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    episode_id      TEXT PRIMARY KEY,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'parked')),
    enqueued_at     REAL NOT NULL,
    updated_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    result          TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
"""


@dataclass(frozen=True)
class OutboxEntry:
    episode_id: str
    state: EntryState
    enqueued_at: float
    updated_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    """Why the last attempt failed (pending) or why the learner refused it (parked)."""
    result: str | None
    """'stored' or 'already_stored' once sent."""


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    sent: int
    parked: int
    oldest_pending_s: float | None
    """Age of the oldest pending episode: the robot's upload backlog."""


class OutboxClosed(Exception):
    """The outbox was closed (its owner is shutting down); a worker still running just stops."""


class OutboxBusy(RuntimeError):
    """Another worker (a robot's sync node, a `wmpo outbox push`) is uploading this outbox."""


class Outbox:
    """The persistent queue. Thread-safe; one worker at a time uploads from it (`OutboxWorker.start`
    holds a lock next to it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an enqueued episode survives a power cut
        self._db.executescript(_SCHEMA)
        self._mutex = threading.Lock()
        self._closed = False

    @property
    def lock_path(self) -> Path:
        """flock'ed by the worker that uploads from this outbox."""
        return self.path.with_name(self.path.name + ".worker.lock")

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run a query and fetch every row under the mutex: a cursor read after the mutex is released
        races with another thread's statement on the same connection and can return garbage rows."""
        with self._mutex:
            if self._closed:
                raise OutboxClosed(f"the outbox {self.path} is closed")
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: tuple = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        with self._mutex:
            if self._closed:
                raise OutboxClosed(f"the outbox {self.path} is closed")
            return self._db.execute(sql, args).rowcount

    def enqueue(self, episode_id: str, now: float | None = None) -> bool:
        """Queue an episode for upload, due now. False when it was already queued (any state)."""
        now = time.time() if now is None else now
        changed = self._write(
            "INSERT OR IGNORE INTO outbox (episode_id, state, enqueued_at, updated_at, next_attempt_at) "
            "VALUES (?, 'pending', ?, ?, ?)",
            (episode_id, now, now, now),
        )
        return changed == 1

    def entry(self, episode_id: str) -> OutboxEntry | None:
        rows = self._rows("SELECT * FROM outbox WHERE episode_id = ?", (episode_id,))
        return _entry(rows[0]) if rows else None

    def entries(self, state: EntryState | None = None) -> list[OutboxEntry]:
        if state is None:
            rows = self._rows("SELECT * FROM outbox ORDER BY enqueued_at, episode_id")
        else:
            rows = self._rows(
                "SELECT * FROM outbox WHERE state = ? ORDER BY enqueued_at, episode_id", (state,)
            )
        return [_entry(r) for r in rows]

    def due(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Pending episode ids whose next attempt is due, oldest first."""
        now = time.time() if now is None else now
        rows = self._rows(
            "SELECT episode_id FROM outbox WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY "
            "enqueued_at, episode_id LIMIT ?",
            (now, limit),
        )
        return [r[0] for r in rows]

    def next_due_at(self) -> float | None:
        return self._rows("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'")[0][0]

    def mark_sent(self, episode_id: str, result: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._write(
            "UPDATE outbox SET state = 'sent', result = ?, last_error = NULL, attempts = attempts + 1, "
            "updated_at = ? WHERE episode_id = ?",
            (result, now, episode_id),
        )

    def mark_failed(self, episode_id: str, error: str, retry_at: float, now: float | None = None) -> int:
        """Record a failed attempt; returns the number of attempts so far."""
        now = time.time() if now is None else now
        self._write(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, updated_at = ? "
            "WHERE episode_id = ?",
            (error, retry_at, now, episode_id),
        )
        return self._rows("SELECT attempts FROM outbox WHERE episode_id = ?", (episode_id,))[0][0]

    def park(self, episode_id: str, reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._write(
            "UPDATE outbox SET state = 'parked', last_error = ?, attempts = attempts + 1, updated_at = ? "
            "WHERE episode_id = ?",
            (reason, now, episode_id),
        )

    def requeue(self, episode_id: str, now: float | None = None) -> bool:
        """Put a parked episode back in the queue (after fixing what the learner refused)."""
        now = time.time() if now is None else now
        changed = self._write(
            "UPDATE outbox SET state = 'pending', next_attempt_at = ?, updated_at = ? WHERE episode_id = ? "
            "AND state = 'parked'",
            (now, now, episode_id),
        )
        return changed == 1

    def make_all_due(self, now: float | None = None) -> None:
        """Retry every pending episode now (e.g. when the process starts or the link comes back)."""
        now = time.time() if now is None else now
        self._write(
            "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
            (now, now),
        )

    def defer_pending(self, until: float) -> None:
        """No pending episode is tried before `until` (the learner is down: wait together)."""
        self._write(
            "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at < ?",
            (until, until),
        )

    def stats(self, now: float | None = None) -> OutboxStats:
        now = time.time() if now is None else now
        counts = dict(self._rows("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
        oldest = self._rows("SELECT MIN(enqueued_at) FROM outbox WHERE state = 'pending'")[0][0]
        return OutboxStats(
            pending=counts.get("pending", 0),
            sent=counts.get("sent", 0),
            parked=counts.get("parked", 0),
            oldest_pending_s=None if oldest is None else max(0.0, now - oldest),
        )


def _entry(row: tuple) -> OutboxEntry:
    return OutboxEntry(*row)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter and a cap: attempt n waits about initial_s * factor**(n-1),
    at most max_s, shortened by a random fraction up to `jitter` so robots that lost the learner
    together do not all come back in the same second."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return base * (1.0 - self.jitter * rng.random())


class PermanentUploadError(Exception):
    """An episode that can never be uploaded from here (e.g. gone from the local store)."""


UploadFn = Callable[[str], str]
"""Uploads one episode id; returns the learner's status ('stored' / 'already_stored').
Raises LearnerError (retried when `retryable`, else parked), PermanentUploadError (parked) or
anything else (retried)."""


def store_uploader(client: LearnerClient, store: EpisodeStore, deadline_s: float = 600.0) -> UploadFn:
    """The usual UploadFn: episodes from the robot's local store (opened read-only) to the learner."""

    def upload(episode_id: str) -> str:
        if episode_id not in store:
            store.refresh()  # committed by the recorder after this reader last looked
        try:
            path = store.episode_path(episode_id)
        except KeyError:
            raise PermanentUploadError(
                f"episode '{episode_id}' is not in the local store {store.root}"
            ) from None
        return client.upload_episode(path, episode_id, deadline_s=deadline_s).status

    return upload


@dataclass(frozen=True)
class PassResult:
    sent: int = 0
    failed: int = 0
    parked: int = 0


class OutboxWorker:
    """Uploads due episodes, one at a time, oldest first. Drive it with `run_once()` from a timer
    or with `start()` for a background thread; `wake()` after an `enqueue` to send at once."""

    def __init__(
        self,
        outbox: Outbox,
        upload: UploadFn,
        *,
        backoff: Backoff = Backoff(),
        on_parked: Callable[[OutboxEntry], None] | None = None,
        probe: Callable[[], bool] | None = None,
        probe_interval_s: float = 2.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """`probe`: whether the learner answers at all (`LearnerClient.answers`). With it, a queue
        that waits because the learner did not answer is retried within `probe_interval_s` of the
        learner's return instead of at the end of its backoff; a learner that answers but fails
        or refuses (5xx, 401) still gets the full backoff."""
        self.outbox = outbox
        self._upload = upload
        self.backoff = backoff
        self._on_parked = on_parked
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._unavailable_streak = 0
        """Consecutive passes that found the learner unreachable: drives the queue-wide backoff."""
        self._learner_down = False
        """The last failure was a learner that did not answer its probe: probe until it does."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: IO[bytes] | None = None

    def run_once(self) -> PassResult:
        """Try every due episode once. Stops the pass at the first failure that is about the
        learner (down, failing, refusing the token): the whole queue then waits one backoff
        interval instead of each episode hammering alone."""
        sent = failed = parked = 0
        for episode_id in self.outbox.due(self._clock()):
            if self._stop.is_set():
                break
            try:
                result = self._upload(episode_id)
            except Exception as exc:  # classified below; nothing may kill the worker
                now = self._clock()
                if isinstance(exc, PermanentUploadError) or (
                    isinstance(exc, LearnerError) and not exc.retryable
                ):
                    self.outbox.park(episode_id, str(exc), now)
                    parked += 1
                    entry = self.outbox.entry(episode_id)
                    log.error("outbox: parked episode %s, the learner will not take it: %s", episode_id, exc)
                    if self._on_parked is not None and entry is not None:
                        self._on_parked(entry)
                    continue
                failed += 1
                # Unreachable, 5xx, or a refusal a retry can cure (token, 408, 429) is about the
                # service, not this episode: the whole queue waits.
                if isinstance(exc, LearnerError):
                    self._learner_down = self._probe is not None and not self._probe()
                    self._unavailable_streak += 1
                    retry_at = now + self.backoff.delay(self._unavailable_streak, self._rng)
                    attempts = self.outbox.mark_failed(episode_id, str(exc), retry_at, now)
                    self.outbox.defer_pending(retry_at)
                    log.warning(
                        "outbox: learner not taking uploads (%s); %d episode(s) wait %.1f s (attempt %d)",
                        exc,
                        self.outbox.stats(now).pending,
                        retry_at - now,
                        attempts,
                    )
                    break
                entry = self.outbox.entry(episode_id)
                retry_at = now + self.backoff.delay((entry.attempts if entry else 0) + 1, self._rng)
                self.outbox.mark_failed(episode_id, f"{type(exc).__name__}: {exc}", retry_at, now)
                log.warning(
                    "outbox: upload of %s failed (%s); retry in %.1f s", episode_id, exc, retry_at - now
                )
                continue
            self._unavailable_streak = 0
            self._learner_down = False
            self.outbox.mark_sent(episode_id, result, self._clock())
            sent += 1
            log.info("outbox: episode %s %s", episode_id, result)
        return PassResult(sent, failed, parked)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        """Background thread: retries everything pending at once, then follows the schedule.
        Raises OutboxBusy when another worker (another process) uploads this outbox."""
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._claim()
        self.outbox.make_all_due(self._clock())
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="wmpo-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the upload in progress (bounded by the client's deadlines)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _claim(self) -> None:
        """One uploader per outbox: a robot's sync node and a `wmpo outbox push` never both send."""
        try:
            self._lock_file = hold_lock(self.outbox.lock_path)
        except LockHeld as exc:
            raise OutboxBusy(
                f"another process (pid {exc.holder}: a robot's sync node or `wmpo outbox push`) is "
                f"uploading the outbox {self.outbox.path}"
            ) from None

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = 60.0
            try:
                self.run_once()
                next_due = self.outbox.next_due_at()
                if next_due is not None:
                    wait = min(wait, max(0.0, next_due - self._clock()))
                if self._learner_down:
                    wait = min(wait, self._probe_interval_s * (0.5 + self._rng.random() / 2))
            except OutboxClosed:
                return  # the owner shut down under a late upload: it is sent again at the next start
            except sqlite3.Error:  # e.g. a full disk: keep the thread alive, say so, try again later
                log.exception("outbox: queue database error")
            self._wake.wait(wait)
            self._wake.clear()
            if self._learner_down and not self._stop.is_set() and self._probe is not None and self._probe():
                self._learner_down = False
                self._unavailable_streak = 0
                try:
                    self.outbox.make_all_due(self._clock())
                except OutboxClosed:
                    return
                log.info("outbox: the learner answers again; retrying the queue now")
