"""A file lock that names its holder: one process at a time owns a resource (a learner service's
folder, a robot's outbox), and a second one is told which pid has it.

flock, not a pid file alone: the kernel drops the lock when the holder dies, however it dies, so
a crashed job never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO


class LockHeld(RuntimeError):
    """Another live process holds the lock; `holder` is its pid as it wrote it ('?' if unknown)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by pid {holder}")
        self.path, self.holder = path, holder


def hold_lock(path: str | os.PathLike[str]) -> BinaryIO:
    """Take the exclusive lock on `path` without waiting and write this pid into it; keep the
    returned handle open for as long as the lock must be held (closing it releases the lock)."""
    handle = open(path, "a+b")  # noqa: SIM115 - the open handle is the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "?"
        handle.close()
        raise LockHeld(Path(path), holder) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle
