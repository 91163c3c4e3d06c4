"""Image <-> numpy conversion, joint order from the config, command messages (no DDS needed)."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory
from wmpo_core.robot_config import load_robot_config
from wmpo_ros.image_conversion import ImageEncodingError, image_to_msg, msg_to_image
from wmpo_ros.messages import (
    CommandCodec,
    JointOrderError,
    joint_positions,
    joint_state_msg,
    nanoseconds_to_stamp,
    stamp_to_seconds,
)

RNG = np.random.default_rng(0)
STAMP = Time(sec=12, nanosec=500)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_colour_round_trip_is_rgb_in_and_out(encoding):
    frame = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = image_to_msg(frame, STAMP, "cam", encoding)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, encoding)
    np.testing.assert_array_equal(msg_to_image(msg), frame)


def test_bgr8_bytes_are_blue_first():
    frame = np.zeros((1, 1, 3), dtype=np.uint8)
    frame[0, 0] = (10, 20, 30)  # RGB
    assert bytes(image_to_msg(frame, STAMP, "cam", "bgr8").data) == bytes([30, 20, 10])


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("bgr8", [[(30, 20, 10), (0, 0, 255)], [(255, 0, 0), (1, 2, 3)]]),
        ("bgra8", [[(30, 20, 10, 7), (0, 0, 255, 255)], [(255, 0, 0, 0), (1, 2, 3, 128)]]),
    ],
)
def test_bgr_encodings_decode_to_known_rgb(encoding, pixels):
    """Decoded by OpenCV; the RGB must be what the bytes say, alpha dropped, row padding ignored."""
    data = np.array(pixels, dtype=np.uint8)  # (2, 2, C) in the message's byte order
    padded = np.full((2, data.shape[1] * data.shape[2] + 3), 99, dtype=np.uint8)
    padded[:, : data.shape[1] * data.shape[2]] = data.reshape(2, -1)
    msg = Image(height=2, width=2, encoding=encoding, step=padded.shape[1], data=padded.tobytes())
    frame = msg_to_image(msg)
    expected = np.array([[(10, 20, 30), (255, 0, 0)], [(0, 0, 255), (3, 2, 1)]], dtype=np.uint8)
    assert frame.shape == (2, 2, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    np.testing.assert_array_equal(frame, expected)
    msg.data[0] = 0  # rclpy may reuse the buffer: the decoded frame must not change
    assert frame[0, 0, 2] == 30


def test_bgra8_is_decoded_but_not_written():
    """Camera drivers send bgra8; our configs never publish it, so encoding it is refused."""
    with pytest.raises(ImageEncodingError, match="unsupported encoding 'bgra8'"):
        image_to_msg(np.zeros((2, 2, 3), np.uint8), STAMP, "cam", "bgra8")


def test_empty_bgr8_image_decodes_to_an_empty_rgb_frame():
    assert msg_to_image(Image(height=0, width=0, encoding="bgr8", step=0, data=b"")).shape == (0, 0, 3)


def test_mono8_round_trip():
    frame = RNG.integers(0, 256, (4, 6, 1), dtype=np.uint8)
    out = msg_to_image(image_to_msg(frame[..., 0], STAMP, "cam", "mono8"))
    assert out.shape == (4, 6, 1)
    np.testing.assert_array_equal(out, frame)


def test_row_padding_is_dropped():
    frame = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    padded = np.zeros((3, 16), dtype=np.uint8)  # 12 bytes of pixels + 4 of padding per row
    padded[:, :12] = frame.reshape(3, 12)
    padded[:, 12:] = 255
    msg = Image(height=3, width=4, encoding="rgb8", step=16, data=padded.tobytes())
    np.testing.assert_array_equal(msg_to_image(msg), frame)


def test_received_frame_does_not_alias_the_message():
    msg = image_to_msg(np.zeros((2, 2, 3), dtype=np.uint8), STAMP, "cam")
    frame = msg_to_image(msg)
    msg.data[0] = 99  # rclpy may reuse a message buffer for the next message
    assert frame[0, 0, 0] == 0


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (Image(height=2, width=2, encoding="rgba8", step=8, data=bytes(16)), "unsupported encoding 'rgba8'"),
        (Image(height=2, width=2, encoding="rgb8", step=5, data=bytes(12)), "step 5 is shorter"),
        (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(10)), "has 10 bytes"),
    ],
)
def test_bad_images_are_refused_with_the_reason(msg, error):
    with pytest.raises(ImageEncodingError, match=error):
        msg_to_image(msg)


def test_image_to_msg_checks_shape_for_the_encoding():
    with pytest.raises(ImageEncodingError, match=r"needs \(H, W, 1\)"):
        image_to_msg(np.zeros((2, 2, 3), np.uint8), STAMP, "cam", "mono8")


def test_joint_order_comes_from_the_config_not_the_message():
    cfg = load_robot_config("so101_sim")
    msg = JointState(
        name=[*list(reversed(cfg.joint_names)), "extra_joint"], position=[6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 9.0]
    )
    np.testing.assert_allclose(joint_positions(msg, cfg.joint_names), [1, 2, 3, 4, 5, 6])
    with pytest.raises(JointOrderError, match=r"lacks joints \['gripper'\]"):
        joint_positions(JointState(name=cfg.joint_names[:5], position=[0.0] * 5), cfg.joint_names)
    out = joint_state_msg(cfg, np.arange(6.0), STAMP)
    assert list(out.name) == cfg.joint_names and out.header.stamp == STAMP


def test_stamp_conversions():
    assert stamp_to_seconds(nanoseconds_to_stamp(1_700_000_000_123_456_789)) == pytest.approx(
        1_700_000_000.123456789
    )


def test_float64_multiarray_command_round_trip():
    codec = CommandCodec(load_robot_config("so101_sim"))
    msg = codec.encode(np.array([0.1, -0.2, 0.3, 1.0]))
    assert isinstance(msg, Float64MultiArray) and msg.layout.dim[0].size == 4
    np.testing.assert_allclose(codec.decode(msg), [0.1, -0.2, 0.3, 1.0])
    with pytest.raises(ValueError, match="3 values, the action space has 4"):
        codec.decode(Float64MultiArray(data=[0.0, 0.0, 0.0]))


def test_joint_trajectory_command_for_ros2_control():
    cfg = load_robot_config("ur5e_ros2_control")
    codec = CommandCodec(cfg)
    action = np.linspace(-0.5, 0.5, 6)
    msg = codec.encode(action)
    assert isinstance(msg, JointTrajectory) and list(msg.joint_names) == cfg.action.names
    (point,) = msg.points
    assert (point.time_from_start.sec, point.time_from_start.nanosec) == (0, 100_000_000)
    np.testing.assert_allclose(codec.decode(msg), action)
    shuffled = JointTrajectory(joint_names=list(reversed(msg.joint_names)), points=[point])
    shuffled.points[0].positions = list(reversed(point.positions))
    np.testing.assert_allclose(codec.decode(shuffled), action)  # decoded by name, not position


@pytest.mark.parametrize("config", ["so101_sim", "ur5e_ros2_control"])
def test_a_hold_is_marked_in_the_command_message(config):
    cfg = load_robot_config(config)
    codec = CommandCodec(cfg)
    action = np.zeros(cfg.action.dim)
    held, chosen = codec.encode(action, hold=True), codec.encode(action)
    assert codec.is_hold(held) and not codec.is_hold(chosen)
    np.testing.assert_allclose(codec.decode(held), action)  # the arm executes it like any command
