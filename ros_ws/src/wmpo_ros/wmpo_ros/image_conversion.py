"""sensor_msgs/Image <-> numpy, for the encodings our configs allow (rgb8, bgr8, mono8).

Hand-written because cv_bridge ships only with a ROS distribution (it is not on PyPI, so it is
absent from a pip-installed ROS 2), and we need a few lines of it. Row padding (`step` larger
than width x channels, as some camera drivers send) is handled; frames come out as (H, W, C)
uint8 RGB (or mono), the layout the episode store and the policies use.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


class ImageEncodingError(ValueError):
    """An Image message this module cannot convert; the message says what is wrong."""


def image_to_msg(frame: np.ndarray, stamp: Time, frame_id: str, encoding: str = "rgb8") -> Image:
    """(H, W, C) uint8 RGB (or (H, W[, 1]) mono) -> Image in `encoding`."""
    if encoding not in CHANNELS:
        raise ImageEncodingError(f"unsupported encoding '{encoding}' (supported: {sorted(CHANNELS)})")
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != CHANNELS[encoding]:
        raise ImageEncodingError(f"a {encoding} image needs (H, W, {CHANNELS[encoding]}) uint8, got {frame.shape} {frame.dtype}")
    if encoding == "bgr8":
        frame = frame[..., ::-1]
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(frame.shape[0]), int(frame.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * CHANNELS[encoding]
    msg.data = np.ascontiguousarray(frame).tobytes()
    return msg


def msg_to_image(msg: Image) -> np.ndarray:
    """Image -> (H, W, C) uint8, RGB for colour encodings (bgr8 is converted), C=1 for mono8.

    Always a copy: rclpy may reuse a received message's buffer for the next message.
    """
    channels = CHANNELS.get(msg.encoding)
    if channels is None:
        raise ImageEncodingError(f"unsupported encoding '{msg.encoding}' (supported: {sorted(CHANNELS)})")
    row = msg.width * channels
    if msg.step < row:
        raise ImageEncodingError(f"step {msg.step} is shorter than a {msg.width}-pixel {msg.encoding} row ({row} bytes)")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size < msg.step * msg.height:
        raise ImageEncodingError(f"image data has {buffer.size} bytes, {msg.height} rows of step {msg.step} need {msg.step * msg.height}")
    rows = buffer[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    frame = rows.reshape(msg.height, msg.width, channels)
    if msg.encoding == "bgr8":
        frame = frame[..., ::-1]
    return np.array(frame, order="C", copy=True)
