"""A learner stage in a child process, so two stages train side by side on a small machine.

`wmpo run` trains the world model while it trains the VLA and then records the VLA's rollouts.
Why processes, not threads: two stages in one process would share one interpreter lock (their
data loading and optimiser bookkeeping is Python) and torch's thread pool. A child gets its own
interpreter, `threads` torch threads, and its own log file (two progress bars on one terminal
would overwrite each other). Measured on the 2-core VM with 1 torch thread instead of 2: SFT
1.36x and world-model training 1.4x slower per step, so the two side by side finish well before
the two one after the other.

The child dies with the job, however the job dies (`die_with_parent`, as the learner service
does); an exception in the stage comes back to the parent from `result()`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from wmpo_learner.service.local import die_with_parent


def _child_init(owner_pid: int, log: str, threads: int | None) -> None:
    die_with_parent(owner_pid)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if threads is not None:
        torch.set_num_threads(threads)


class ChildStage:
    """`fn(config)` running in a fresh child process from the moment this is constructed."""

    def __init__(
        self, name: str, fn: Callable[[Any], Any], config: Any, log: Path, threads: int | None = None
    ):
        """`threads`: torch threads of the child (None: torch's default, one per core)."""
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),  # no copy of this process's ROS threads
            initializer=_child_init,
            initargs=(os.getpid(), str(log), threads),
        )
        self._started = time.monotonic()
        self._future = self._pool.submit(fn, config)
        shown = "torch's default threads" if threads is None else f"{threads} torch thread(s)"
        print(f"  {name}: started in a child process ({shown}); log: {log}", flush=True)

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        """Wait for the stage; its return value, or its exception raised here."""
        try:
            value = self._future.result()
        except Exception as exc:
            raise RuntimeError(f"{self.name} failed: {exc} (its log: {self.log})") from exc
        finally:
            self._pool.shutdown()
        print(f"  {self.name}: done in {(time.monotonic() - self._started) / 60:.1f} min", flush=True)
        return value
