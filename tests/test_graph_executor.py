"""GraphExecutor queues each callback once: rclpy 9's MultiThreadedExecutor re-queues a callback that
waits in its pool on every spin, a busy loop that starved the policy node (wmpo_ros.executor)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import rclpy
from rclpy.node import Node
from std_msgs.msg import String
from wmpo_ros.executor import GraphExecutor


def test_a_callback_waiting_in_the_pool_is_queued_once_and_every_message_is_served():
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = GraphExecutor(num_threads=2, context=context)
    listener = Node("listener", context=context)
    talker = Node("talker", context=context)
    received: list[str] = []

    def slow_callback(msg: String) -> None:  # keeps the pool busy, so callbacks wait in its queue
        time.sleep(0.005)
        received.append(msg.data)

    listener.create_subscription(String, "traffic", slow_callback, 100)
    publisher = talker.create_publisher(String, "traffic", 100)
    talker.create_timer(0.001, lambda: publisher.publish(String(data="x")))
    submitted: Counter = Counter()
    pool_submit = executor._executor.submit

    def counting_submit(fn, *args):
        submitted[args[0] if args else fn] += 1  # the task itself: kept alive, so never confused
        return pool_submit(fn, *args)

    executor._executor.submit = counting_submit
    for node in (listener, talker):
        executor.add_node(node)
    stop = rclpy.task.Future()
    spin = threading.Thread(target=executor.spin_until_future_complete, args=(stop,), daemon=True)
    spin.start()
    try:
        time.sleep(2.0)
    finally:
        stop.set_result(True)
        spin.join(10)
        executor.shutdown()
        for node in (listener, talker):
            node.destroy_node()
        rclpy.shutdown(context=context)
    assert len(received) > 50
    assert max(submitted.values()) == 1, f"a callback was queued {max(submitted.values())} times"
