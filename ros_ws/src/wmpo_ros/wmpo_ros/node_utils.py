"""Small helpers every node module uses: parameter overrides, service answers, the executor a
node spins on and the standard `main()`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from wmpo_ros.dds import use_large_frames_profile
from wmpo_ros.executor import GraphExecutor


def parameter_overrides(values: Mapping[str, Any]) -> list[Parameter]:
    """A dict of parameter values -> what `Node(parameter_overrides=...)` takes."""
    return [Parameter(name, value=value) for name, value in values.items()]


def service_answer(
    action: Callable[[Any], str], refused: tuple[type[Exception], ...] = ()
) -> Callable[[Any, Any], Any]:
    """A `std_srvs` Trigger/SetBool service callback around `action(request) -> message`: success
    with its message, or failure with the text of a `refused` exception (others propagate: a bug
    is not an answer)."""

    def callback(request: Any, response: Any) -> Any:
        try:
            response.message = action(request)
            response.success = True
        except refused as exc:
            response.success, response.message = False, str(exc)
        return response

    return callback


def node_executor(threads: int, context: Context | None = None) -> Executor:
    """What a node process spins on: one thread runs every callback itself (rclpy's
    `SingleThreadedExecutor`, no hand-off to a pool), more share a `GraphExecutor` pool."""
    if threads == 1:
        return SingleThreadedExecutor(context=context)
    return GraphExecutor(num_threads=threads, context=context)


def run_node(factory: Callable[[], Node], args: list[str] | None = None, threads: int = 4) -> int:
    """`ros2 run` entry point: build the node, spin it on `node_executor(threads)` until Ctrl-C."""
    use_large_frames_profile()
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = factory()
        executor = node_executor(threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
