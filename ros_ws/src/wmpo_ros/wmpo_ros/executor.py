"""The multi-threaded executor every node of ours spins on: rclpy's, minus a busy loop.

rclpy 9 (Kilted) `MultiThreadedExecutor` hands a callback that waits in its thread pool, not yet
started, out again on every spin: its `_wait_for_ready_callbacks` yields any task that is neither
executing nor done before it waits for new work, and a task queued in the pool is neither. So the
spin thread loops without waiting, re-queues the same task (a no-op when it runs), and holds the
interpreter lock while the pool's threads wait for it to start the work (rclpy issue 1452, fixed
upstream after this release). Measured with `bench/bench_policy_node.py` on the 2-core VM: the
spin thread held the interpreter lock in 62% of the samples (py-spy, 200 Hz, 12 s), the policy
node answered 481 of 900 frames with control ticks late by up to 0.9 s, and an idle simulated
graph cost a quarter of a core.

`GraphExecutor` queues each callback once and, when the same one comes back before a pool thread
started it, waits (briefly, without the lock) for a thread to start it instead of spinning.
Everything else, including coroutine callbacks that suspend and are resumed by the spin loop,
is rclpy's own behaviour. Hand-written because the fixed rclpy is not released as a wheel for this
distribution; remove it when it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)
from rclpy.task import Task

STARTED_WAIT_S = 0.01
"""How long the spin thread waits for a pool thread to start a callback it already queued."""


class GraphExecutor(MultiThreadedExecutor):
    """`MultiThreadedExecutor` that never queues a callback twice (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._queued: dict[Task, threading.Event] = {}

    def _spin_once_impl(self, timeout_sec=None, wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        started = self._queued.get(handler)
        if started is not None:  # queued earlier, no pool thread has taken it yet
            started.wait(STARTED_WAIT_S)
            return
        started = threading.Event()
        self._queued[handler] = started
        self._executor.submit(self._start, handler, started)
        self._futures.append(handler)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exception of a callback, as rclpy does

    def _start(self, handler: Task, started: threading.Event) -> None:
        self._queued.pop(handler, None)
        started.set()
        handler()
