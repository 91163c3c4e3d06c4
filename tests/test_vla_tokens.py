"""Action <-> token conversion: uniform bins over [-1, 1] after q01/q99 normalization."""

import numpy as np
import pytest
import torch
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.vla.action_tokens import ActionTokenizer

Q01 = np.array([-1.0, -0.4, -0.4, 0.0])
Q99 = np.array([1.0, 0.4, 0.4, 1.0])


@pytest.fixture
def tokenizer():
    return ActionTokenizer(ActionNormalizer(Q01, Q99), num_bins=256)


def test_round_trip_within_half_a_bin(tokenizer):
    rng = np.random.default_rng(0)
    actions = rng.uniform(Q01, Q99, size=(5000, 4))
    actions[:4] = Q01  # the range ends are in range too
    actions[4:8] = Q99
    tokens = tokenizer.actions_to_tokens(actions)
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() <= 255
    decoded = tokenizer.tokens_to_actions(tokens)
    half_bin = (Q99 - Q01) / 2 * (1.0 / 256)  # half of a 2/256-wide bin, in robot units
    assert np.all(np.abs(decoded - actions) <= half_bin + 1e-12)
    # and the error is not trivially zero: decoding gives bin centres
    assert np.abs(decoded - actions).max() > half_bin.min() / 2


def test_torch_and_numpy_agree_on_any_device_dtype(tokenizer):
    rng = np.random.default_rng(1)
    actions = rng.uniform(Q01 - 0.1, Q99 + 0.1, size=(3, 8, 4))  # some outside [q01, q99]
    np_tokens = tokenizer.actions_to_tokens(actions)
    torch_tokens = tokenizer.actions_to_tokens(torch.as_tensor(actions, dtype=torch.float32))
    assert isinstance(torch_tokens, torch.Tensor) and torch_tokens.dtype == torch.long
    # float32 input may land on the other side of a bin edge only for values within float32 eps of it
    assert (torch_tokens.numpy() != np_tokens).mean() < 1e-3
    decoded_t = tokenizer.tokens_to_actions(torch.as_tensor(np_tokens))
    assert decoded_t.dtype == torch.float64
    np.testing.assert_allclose(decoded_t.numpy(), tokenizer.tokens_to_actions(np_tokens), atol=1e-12)


def test_out_of_range_actions_clip_to_the_edge_bins(tokenizer):
    tokens = tokenizer.actions_to_tokens(np.array([[-5.0, -5.0, 5.0, 2.0]]))
    assert tokens.tolist() == [[0, 0, 255, 255]]


def test_bin_centres_are_uniform_over_minus_one_one():
    tok = ActionTokenizer(ActionNormalizer([-1.0], [1.0]), num_bins=256)
    centres = tok.tokens_to_actions(np.arange(256)[:, None])[:, 0]
    np.testing.assert_allclose(np.diff(centres), 2 / 256)
    assert centres[0] == pytest.approx(-1 + 1 / 256) and centres[-1] == pytest.approx(1 - 1 / 256)


def test_constant_dimension_decodes_to_its_value():
    tok = ActionTokenizer(ActionNormalizer([0.5, -1.0], [0.5, 1.0]))
    tokens = tok.actions_to_tokens(np.array([[0.5, 0.0]]))
    np.testing.assert_allclose(tok.tokens_to_actions(tokens)[0, 0], 0.5)


def test_bad_tokens_and_shapes_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tokenizer.tokens_to_actions(np.array([[0, 0, 0, 256]]))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tokenizer.tokens_to_actions(torch.tensor([[0, -1, 0, 0]]))
    with pytest.raises(ValueError, match="action dimension 4"):
        tokenizer.actions_to_tokens(np.zeros((2, 3)))
