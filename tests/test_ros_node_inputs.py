"""The decoding subscriptions every node shares (`wmpo_ros.node_inputs`), over real DDS: good
frames, joint states and commands reach the node's callback in config terms; bad ones never do.
And the service answer every node's Trigger/SetBool services share (`wmpo_ros.node_utils`)."""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from ros_harness import Graph, wait_until
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool
from wmpo_core.episode_store import StoreError
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.image_conversion import image_to_msg
from wmpo_ros.messages import STATE_QOS, CommandCodec, camera_publisher_qos
from wmpo_ros.node_inputs import subscribe_cameras, subscribe_commands, subscribe_joint_states
from wmpo_ros.node_utils import service_answer

SIM = load_robot_config("so101_sim")


@pytest.fixture
def graph():
    g = Graph()
    yield g
    g.close()


def test_only_well_formed_inputs_reach_the_callbacks(graph):
    node = graph.add(rclpy.create_node("input_test_node"))
    frames, states, actions = [], [], []
    subscribe_cameras(
        node,
        SIM,
        lambda cam, frame, msg, info: frames.append((cam, frame, info["source_timestamp"])),
        camera_publisher_qos,
        lambda: None,
    )
    subscribe_joint_states(node, SIM, lambda state, msg, info: states.append(state), STATE_QOS, None)
    codec = CommandCodec(SIM)
    subscribe_commands(node, SIM, codec, actions.append, STATE_QOS)

    source = graph.add(rclpy.create_node("input_test_source"))
    cam = SIM.cameras[0]
    image_pub = source.create_publisher(Image, cam.topic, camera_publisher_qos(cam))
    state_pub = source.create_publisher(JointState, SIM.topics.joint_states, STATE_QOS)
    command_pub = source.create_publisher(codec.msg_type, SIM.topics.command, STATE_QOS)
    wait_until(
        lambda: node.count_publishers(cam.topic) and node.count_publishers(SIM.topics.command), what="match"
    )

    stamp = source.get_clock().now().to_msg()
    good = np.random.default_rng(0).integers(0, 255, cam.shape, dtype=np.uint8)
    wrong_shape = image_to_msg(np.zeros((8, 8, 3), np.uint8), stamp, "f", "rgb8")
    bad_encoding = image_to_msg(good, stamp, "f", "rgb8")
    bad_encoding.encoding = "yuv422"
    for msg in (wrong_shape, bad_encoding, image_to_msg(good, stamp, "f", "rgb8")):
        image_pub.publish(msg)
    names = SIM.joint_names
    state_pub.publish(JointState(name=names[:-1], position=[0.0] * (len(names) - 1)))  # lacks the gripper
    state_pub.publish(JointState(name=names[::-1], position=[float(i) for i in range(len(names))]))
    command_pub.publish(Float64MultiArray(data=[0.1, 0.2]))  # wrong length
    command_pub.publish(Float64MultiArray(data=[0.1, float("nan"), 0.0, 1.0]))
    command_pub.publish(Float64MultiArray(data=[0.1, -0.2, 0.3, 1.0]))

    wait_until(lambda: frames and states and actions, what="the good inputs")
    source_frames = [f for f in frames if f[0] == "front"]
    assert len(source_frames) == 1 and np.array_equal(source_frames[0][1], good)
    assert len(states) == 1  # reordered to the config's joints, whatever the message's order
    np.testing.assert_array_equal(states[0], np.arange(len(names), dtype=float)[::-1])
    assert len(actions) == 1 and actions[0].tolist() == [0.1, -0.2, 0.3, 1.0]


def test_a_service_answers_with_the_actions_message_or_the_refusal(graph):
    """`node_utils.service_answer`, the Trigger/SetBool callback every node shares, over a real service."""
    calls = []

    def toggle(request: SetBool.Request) -> str:
        calls.append(request.data)
        if not request.data:
            raise StoreError("no episode to stop")
        return "started"

    server = graph.add(rclpy.create_node("service_answer_server"))
    server.create_service(SetBool, "/service_answer_test", service_answer(toggle, (StoreError,)))
    client_node = graph.add(rclpy.create_node("service_answer_client"))
    client = client_node.create_client(SetBool, "/service_answer_test")
    assert client.wait_for_service(timeout_sec=10.0)
    answers = []
    for data in (True, False):
        future = client.call_async(SetBool.Request(data=data))
        wait_until(future.done, what="the service's answer")
        answers.append((future.result().success, future.result().message))
    assert answers == [(True, "started"), (False, "no episode to stop")] and calls == [True, False]
