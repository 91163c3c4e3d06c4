"""Clip geometry and the detection rule, shared by the training data and by scoring.

A window is identified by its *end step* `e` (inclusive): it covers frames `e - n + 1 .. e`.
Windows slide with stride 1 and exist for `e = n - 1 .. T - 1`. An episode shorter than one
window (`T < n`) has exactly one window, ending at its last frame, padded at the start by
repeating the first frame: such an episode is scored like any other, never counted as a failure
because it is short (the public WMPO code's `min_steps=100` scored every short video as failure).
The windows are `wmpo_core.window_sampler`'s with `pad_short=True`.
"""

from __future__ import annotations

import numpy as np
from wmpo_core.window_sampler import window_starts, window_steps


def window_ends(num_steps: int, num_frames: int) -> np.ndarray:
    """End steps of all stride-1 windows of an episode with `num_steps` frames."""
    if num_frames < 1:
        raise ValueError(f"a window needs at least one frame, got {num_frames}")
    return window_starts(num_steps, num_frames, pad_short=True) + (num_frames - 1)


def window_frame_indices(end: int, num_frames: int) -> np.ndarray:
    """Frame indices of the window ending at `end`; indices before 0 repeat frame 0 (padding)."""
    return window_steps(end - num_frames + 1, num_frames, end + 1)


def first_detection(scores: np.ndarray, ends: np.ndarray, threshold: float) -> tuple[bool, int | None]:
    """The detection rule: success iff any window scores at or above `threshold`.

    Returns (success, finish_step) where finish_step is the end step of the first such window
    (the last frame of the episode that counts; GRPO masks the policy loss after it).
    """
    scores = np.asarray(scores)
    if scores.shape != np.asarray(ends).shape:
        raise ValueError(f"{scores.shape[0]} scores for {np.asarray(ends).shape[0]} windows")
    above = np.flatnonzero(scores >= threshold)
    if above.size == 0:
        return False, None
    return True, int(ends[above[0]])
