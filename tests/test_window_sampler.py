"""The shared window sampler reproduces, window for window, the three samplers it replaced.

The reference functions below are the formulas SFT (`sft.chunk_indices`), the world model
(`world_model.data.window_starts` + the clamp in `LatentWindowSampler.window`) and the reward
model (`reward.windows.window_ends` / `window_frame_indices`) used before they moved onto
`wmpo_core.window_sampler`; they are kept here, verbatim in effect, as the behaviour to keep.
"""

import numpy as np
import pytest
from wmpo_core.window_sampler import WindowSampler, window_starts, window_steps

LENGTHS = [1, 2, 3, 5, 8, 13, 21]


def reference_sft_chunks(starts, episode_end, chunk_size):
    idx = starts[:, None] + np.arange(chunk_size)[None, :]
    return np.minimum(idx, episode_end[starts][:, None] - 1)


def reference_wm_windows(num_steps, context, predicted):
    return [
        (s, np.maximum(np.arange(s, s + context + predicted), 0))
        for s in range(1 - context, num_steps - context - predicted + 1)
    ]


def reference_reward_windows(num_steps, num_frames):
    ends = np.arange(min(num_frames, num_steps) - 1, num_steps)
    return [(int(e), np.maximum(np.arange(e - num_frames + 1, e + 1), 0)) for e in ends]


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 8])
def test_sft_chunks_are_the_old_chunk_indices(chunk_size):
    ends = np.concatenate([np.full(t, end) for t, end in zip(LENGTHS, np.cumsum(LENGTHS), strict=True)])
    sampler = WindowSampler(LENGTHS, chunk_size, pad_after=chunk_size - 1)
    assert len(sampler) == sum(LENGTHS)  # one chunk per step: window i starts at flat step i
    every = np.arange(len(ends))
    assert np.array_equal(sampler.flat_steps(every), reference_sft_chunks(every, ends, chunk_size))
    draws = np.random.default_rng(0).integers(0, len(ends), size=64)
    assert np.array_equal(sampler.flat_steps(draws), reference_sft_chunks(draws, ends, chunk_size))


@pytest.mark.parametrize(("context", "predicted"), [(1, 1), (1, 4), (2, 3), (4, 8)])
def test_world_model_windows_are_the_old_window_starts(context, predicted):
    sampler = WindowSampler(LENGTHS, context + predicted, pad_before=context - 1)
    expected = [
        (e, s, idx) for e, t in enumerate(LENGTHS) for s, idx in reference_wm_windows(t, context, predicted)
    ]
    assert len(sampler) == len(expected)
    for i, (episode, start, idx) in enumerate(expected):
        assert (sampler.episode[i], sampler.start[i]) == (episode, start)
        assert np.array_equal(sampler.steps(i), idx)


@pytest.mark.parametrize("num_frames", [1, 2, 8, 16])
def test_reward_windows_are_the_old_window_ends(num_frames):
    for t in LENGTHS:
        starts = window_starts(t, num_frames, pad_short=True)
        expected = reference_reward_windows(t, num_frames)
        assert (starts + num_frames - 1).tolist() == [e for e, _ in expected]
        for start, (_, idx) in zip(starts, expected, strict=True):
            assert np.array_equal(window_steps(start, num_frames, t), idx)


def test_padding_rules_are_explicit():
    assert window_starts(5, 3).tolist() == [0, 1, 2]
    assert window_starts(5, 3, pad_before=2).tolist() == [-2, -1, 0, 1, 2]
    assert window_starts(5, 3, pad_after=2).tolist() == [0, 1, 2, 3, 4]
    assert window_starts(2, 3).tolist() == []  # too short and no padding: no window
    assert window_starts(2, 3, pad_short=True).tolist() == [-1]  # one window ending at the last step
    assert window_steps(-1, 3, 2).tolist() == [0, 0, 1]
    assert window_steps(3, 3, 5).tolist() == [3, 4, 4]
    with pytest.raises(ValueError, match="at least one step"):
        window_starts(0, 3)
    with pytest.raises(ValueError, match="padding cannot be negative"):
        window_starts(5, 3, pad_before=-1)
    assert len(WindowSampler([], 3)) == 0
