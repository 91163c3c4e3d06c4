"""Fixed-length windows over episodes, with the padding rules stated once.

Every trainer cuts episodes into windows of `length` consecutive steps: SFT action chunks, world
model context + predicted frames, reward model clips. A window is named by its start step `s`
(it covers `s .. s + length - 1`); steps before 0 repeat the first frame, steps past the end
repeat the last. Which starts exist is the padding rule, explicit in three numbers:

- `pad_before`: how far a window may begin before the episode (starts from `-pad_before`);
- `pad_after`: how far it may run past the end (starts up to `T - length + pad_after`);
- `pad_short`: an episode with no window under these rules (too short) still gets exactly one,
  ending at its last step and padded at the start, instead of being dropped.

As in diffusion_policy's `SequenceSampler`, the (episode, start) index of every window is
computed once, in episode order then start order, so window `i` means the same thing in every
epoch and a uniform draw over windows is one integer draw. The project's three uses:

    SFT chunks of K actions:          length=K,   pad_after=K-1  (one window per step)
    world model, C context + P new:   length=C+P, pad_before=C-1 (a rollout starts from frame 0)
    reward model clips of n frames:   length=n,   pad_short=True (short episodes still scored)

Written by hand (a few lines of numpy): diffusion_policy is not a dependency of this stack and
its sampler also owns the data loading, which here is `wmpo_core.episode_arrays`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_starts(
    num_steps: int, length: int, pad_before: int = 0, pad_after: int = 0, pad_short: bool = False
) -> np.ndarray:
    """Start steps (int64, ascending) of the windows of one episode of `num_steps` steps."""
    if num_steps < 1:
        raise ValueError(f"an episode needs at least one step, got {num_steps}")
    if length < 1:
        raise ValueError(f"a window needs at least one step, got {length}")
    if pad_before < 0 or pad_after < 0:
        raise ValueError(f"padding cannot be negative (pad_before={pad_before}, pad_after={pad_after})")
    starts = np.arange(-pad_before, num_steps - length + pad_after + 1, dtype=np.int64)
    if starts.size == 0 and pad_short:
        return np.array([num_steps - length], dtype=np.int64)
    return starts


def window_steps(start: int | np.ndarray, length: int, num_steps: int | np.ndarray) -> np.ndarray:
    """Step indices (..., length) of the windows starting at `start`, clamped into the episode:
    steps before 0 read step 0, steps past the end read the last step."""
    steps = np.asarray(start)[..., None] + np.arange(length)
    return np.clip(steps, 0, np.asarray(num_steps)[..., None] - 1)


class WindowSampler:
    """Every window of a set of episodes, indexed once (see the module docstring for the rules)."""

    def __init__(
        self,
        episode_lengths: Sequence[int],
        length: int,
        pad_before: int = 0,
        pad_after: int = 0,
        pad_short: bool = False,
    ):
        self.length = length
        self.lengths = np.asarray(episode_lengths, dtype=np.int64)
        self.offsets = np.cumsum(self.lengths) - self.lengths
        """Index of each episode's first step in the episodes' steps concatenated in order."""
        per_episode = [window_starts(int(t), length, pad_before, pad_after, pad_short) for t in self.lengths]
        self.episode = np.repeat(np.arange(len(per_episode)), [len(s) for s in per_episode])
        """Episode of each window (int64)."""
        self.start = np.concatenate(per_episode) if per_episode else np.zeros(0, dtype=np.int64)
        """Start step of each window within its episode (negative when padded before)."""

    def __len__(self) -> int:
        return len(self.start)

    def steps(self, windows: int | np.ndarray) -> np.ndarray:
        """Step indices (..., length) within the episode of each window in `windows`."""
        windows = np.asarray(windows)
        return window_steps(self.start[windows], self.length, self.lengths[self.episode[windows]])

    def flat_steps(self, windows: int | np.ndarray) -> np.ndarray:
        """Indices (..., length) into the episodes' steps concatenated in order."""
        windows = np.asarray(windows)
        return self.steps(windows) + self.offsets[self.episode[windows]][..., None]
