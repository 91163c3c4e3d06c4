"""Image preprocessing shared by every consumer of camera frames.

The policy on the robot, the world model, the reward model and imagination rollouts must see
frames resized in exactly the same way, or imagined frames drift out of the distribution the
policy was trained on. All of them call `resize_frames`.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_frames(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (..., H, W, C) uint8 frames to `size` (square side, or (height, width)).

    Area interpolation when shrinking (no aliasing of thin edges such as the gripper), bilinear
    when enlarging. Returns the input unchanged when it already has the target size.
    """
    height, width = (size, size) if isinstance(size, int) else size
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3:
        raise ValueError(f"expected (..., H, W, C) uint8 frames, got {frames.shape} {frames.dtype}")
    in_h, in_w, channels = frames.shape[-3:]
    if (in_h, in_w) == (height, width):
        return frames
    interp = cv2.INTER_AREA if height <= in_h and width <= in_w else cv2.INTER_LINEAR
    flat = frames.reshape(-1, in_h, in_w, channels)
    out = np.empty((flat.shape[0], height, width, channels), dtype=np.uint8)
    for i, frame in enumerate(flat):
        resized = cv2.resize(frame, (width, height), interpolation=interp)
        out[i] = resized.reshape(height, width, channels)
    return out.reshape(*frames.shape[:-3], height, width, channels)
