"""An executor in a background thread that can be paused, so nodes can be destroyed.

With one thread it is rclpy's `SingleThreadedExecutor` (callbacks run on the spin thread itself),
with more a `GraphExecutor` pool: `wmpo_ros.node_utils.node_executor`, what a node's own process
spins on.

rclpy cannot destroy a node while an executor spins it (its wait set holds the node's handles and
the executor thread dies on "InvalidHandle: cannot use Destroyable because destruction was
requested"). The bring-up in one process (`wmpo_ros.session`) therefore pauses: it stops the
executor, destroys the node, and a fresh executor takes over the remaining nodes.

Why a pause needs more than `Executor.shutdown()` (rclpy 9, checked in its source and by
`tests/test_pausable_executor.py`): the executor marks an entity as taken when it hands out its
callback, and the callback's task clears the mark and releases the entity's callback group. If
the spin thread is still handing out callbacks when `shutdown()` runs, a handed-out callback can
be lost; and `MultiThreadedExecutor.shutdown()` destroys the executor's guard condition *before*
it joins its thread pool, so a callback still queued there raises on that guard before it
releases its mutually exclusive callback group. Either way a subscription, timer or service of a
surviving node is never served again by any later executor: in the graph, a service call that
never answers. So `pause()` ends the spin loop on a future of its own (the thread hands its last
callback to the pool before it returns), waits until every handed-out callback has finished,
and only then shuts the executor down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from rclpy.context import Context
from rclpy.executors import Executor
from rclpy.node import Node
from rclpy.task import Future

from wmpo_ros.node_utils import node_executor


class PausableExecutor:
    """Spins its nodes in a background thread between `resume()` and `pause()`.

    `context`: the rclpy context of the nodes (None: rclpy's default one)."""

    def __init__(self, context: Context | None = None, threads: int = 6, stop_timeout_s: float = 60.0):
        self.context = context
        self.threads = threads
        self.stop_timeout_s = stop_timeout_s
        self.nodes: list[Node] = []
        self._executor: Executor | None = None
        self._thread: threading.Thread | None = None
        self._stop: Future | None = None

    @property
    def spinning(self) -> bool:
        return self._executor is not None

    def add(self, node: Node) -> None:
        self.nodes.append(node)
        if self._executor is not None:
            self._executor.add_node(node)

    def forget(self, node: Node) -> None:
        """Stop spinning `node` from the next `resume()`; call while paused, before destroying it."""
        if self._executor is not None:
            raise RuntimeError("pause the executor before removing a node from it")
        self.nodes.remove(node)

    def resume(self) -> None:
        if self._executor is not None:
            return
        self._executor = node_executor(self.threads, self.context)
        for node in self.nodes:
            self._executor.add_node(node)
        self._stop = Future()
        self._thread = threading.Thread(
            target=self._executor.spin_until_future_complete, args=(self._stop,), name="executor", daemon=True
        )
        self._thread.start()

    def pause(self) -> None:
        """Return once no callback runs or is queued; the nodes can then be destroyed."""
        if self._executor is None:
            return
        deadline = time.monotonic() + self.stop_timeout_s
        self._stop.set_result(True)  # wakes the executor: the spin loop returns after its current hand-out
        self._thread.join(timeout=self.stop_timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the ROS executor did not stop within {self.stop_timeout_s:.0f} s")
        # The callbacks it handed to its thread pool (none with one thread: they run on the spin
        # thread, which has returned); no public accessor in rclpy 9.
        handed_out: Iterable[Future] = list(getattr(self._executor, "_futures", ()))
        while not all(task.done() for task in handed_out):
            if time.monotonic() > deadline:
                raise RuntimeError(f"a ROS callback did not finish within {self.stop_timeout_s:.0f} s")
            time.sleep(0.001)
        self._executor.shutdown()
        self._executor = None
        self._thread = None
