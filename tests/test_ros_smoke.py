"""ROS 2 smoke test: two real rclpy nodes exchange a sensor_msgs/Image and a sensor_msgs/JointState
over DDS on loopback (conftest.py gives the session its own domain and LOCALHOST discovery)."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.qos import qos_profile_sensor_data
from ros_harness import Graph, wait_until
from sensor_msgs.msg import Image, JointState
from wmpo_ros.image_conversion import image_to_msg, msg_to_image


def test_image_and_joint_state_cross_dds_between_two_nodes():
    graph = Graph()
    try:
        import rclpy

        talker = graph.add(rclpy.create_node("smoke_talker"))
        listener = graph.add(rclpy.create_node("smoke_listener"))
        images: list[Image] = []
        states: list[JointState] = []
        listener.create_subscription(Image, "/smoke/image", images.append, qos_profile_sensor_data)
        listener.create_subscription(JointState, "/smoke/joint_states", states.append, 10)
        image_pub = talker.create_publisher(Image, "/smoke/image", qos_profile_sensor_data)
        state_pub = talker.create_publisher(JointState, "/smoke/joint_states", 10)
        frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        joint_state = JointState(name=["shoulder_pan", "gripper"], position=[0.25, -1.0])
        joint_state.header.stamp = Time(sec=7, nanosec=5)

        def delivered() -> bool:  # best-effort: the first samples may go out before the match completes
            image_pub.publish(image_to_msg(frame, Time(sec=7, nanosec=5), "front_camera_optical_frame"))
            state_pub.publish(joint_state)
            return bool(images) and bool(states)

        wait_until(delivered, timeout=30.0, what="an image and a joint state to cross DDS")
        received = images[0]
        assert (received.height, received.width, received.encoding) == (48, 64, "rgb8")
        assert received.header.frame_id == "front_camera_optical_frame" and received.header.stamp.sec == 7
        np.testing.assert_array_equal(msg_to_image(received), frame)
        assert list(states[0].name) == ["shoulder_pan", "gripper"]
        np.testing.assert_allclose(states[0].position, [0.25, -1.0])
        assert states[0].header.stamp.nanosec == 5
    finally:
        graph.close()
