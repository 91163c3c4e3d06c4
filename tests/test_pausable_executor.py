"""The bring-up's executor survives pauses under traffic: after every pause and resume each
subscription, timer and service of the surviving nodes is still served (rclpy's own shutdown, used
for a pause, left one deaf within a few pauses; see wmpo_ros.pausable_executor)."""

from __future__ import annotations

import threading

import rclpy
from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import SetBool
from wmpo_ros.pausable_executor import PausableExecutor


def test_every_callback_is_still_served_after_many_pauses_under_traffic():
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = PausableExecutor(context)
    server = Node("server", context=context)
    flood = Node("flood", context=context)
    caller = Node("caller", context=context)
    received = []
    server.create_service(SetBool, "answer", lambda req, res: (setattr(res, "success", True), res)[1])
    server.create_subscription(String, "traffic", received.append, 10)
    publisher = flood.create_publisher(String, "traffic", 10)
    flood.create_timer(0.0005, lambda: publisher.publish(String(data="x")))
    client = caller.create_client(SetBool, "answer")
    for node in (server, flood, caller):
        executor.add(node)
    executor.resume()
    try:
        assert client.wait_for_service(timeout_sec=20.0)
        for pause in range(150):
            executor.pause()
            executor.resume()
            answered = threading.Event()
            future = client.call_async(SetBool.Request(data=True))
            future.add_done_callback(lambda _, done=answered: done.set())
            assert answered.wait(10.0), f"the service went deaf after pause {pause + 1}"
        delivered = len(received)
        threading.Event().wait(0.5)
        assert len(received) > delivered, "the subscription went deaf"
    finally:
        executor.pause()
        for node in (caller, flood, server):
            node.destroy_node()
        rclpy.shutdown(context=context)


def test_a_node_is_forgotten_only_while_paused():
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = PausableExecutor(context)
    node = Node("lonely", context=context)
    executor.add(node)
    executor.resume()
    try:
        try:
            executor.forget(node)
        except RuntimeError as exc:
            assert "pause" in str(exc)
        else:
            raise AssertionError("forget() while spinning must refuse")
        executor.pause()
        executor.forget(node)
        assert executor.nodes == [] and not executor.spinning
    finally:
        executor.pause()
        node.destroy_node()
        rclpy.shutdown(context=context)
