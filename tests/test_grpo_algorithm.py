"""GRPO maths against hand-computed values, and one step on a toy policy."""

from __future__ import annotations

import math

import pytest
import torch
from wmpo_learner.grpo.algorithm import (
    clipped_policy_loss,
    group_advantages,
    informative_groups,
    token_mask,
)


def test_group_advantages_match_hand_computation() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    # group 0: mean 0.25, unbiased std = sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    # group 1: mean 0.75, unbiased std = 0.5
    expected = torch.tensor([[1.5, -0.5, -0.5, -0.5], [0.5, 0.5, -1.5, 0.5]])
    torch.testing.assert_close(group_advantages(rewards, eps=0.0), expected)
    assert group_advantages(rewards).sum(dim=1).abs().max() < 1e-5


def test_dynamic_sampling_drops_exactly_the_uniform_groups() -> None:
    rewards = torch.tensor(
        [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 0], [0, 0, 0, 0]],
        dtype=torch.float32,
    )
    assert informative_groups(rewards).tolist() == [False, False, True, True, True, False]
    with pytest.raises(ValueError, match="num_groups, group_size"):
        informative_groups(rewards.flatten())


def test_token_mask_stops_after_the_finish_step() -> None:
    mask = token_mask(torch.tensor([5, -1, 0]), num_chunks=2, chunk_size=4, action_dim=3)
    assert mask.shape == (3, 2, 4, 3)
    per_step = mask[..., 0].reshape(3, 8)
    assert per_step[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]  # steps 0..5
    assert per_step[1].tolist() == [1] * 8  # failure: every token
    assert per_step[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


def test_clipped_loss_matches_hand_computation() -> None:
    old = torch.zeros(2, 3)
    new = torch.log(torch.tensor([[1.5, 1.1, 0.5], [1.5, 0.7, 0.9]]))
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = clipped_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # trajectory 0 (A=+1): ratio 1.5 -> min(1.5, 1.28) = 1.28; 1.1 -> 1.1; 0.5 -> min(0.5, 0.8) = 0.5
    # (unclipped branch)
    # per-token loss = -A * chosen: -1.28, -1.1, -0.5
    # trajectory 1 (A=-2): ratio 1.5 -> max(-2*-1.5=3.0, -2*-1.28=2.56) = 3.0; 0.7 -> max(1.4, 1.6) = 1.6;
    # third masked
    expected = (-1.28 - 1.1 - 0.5 + 3.0 + 1.6) / 5
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-6)
    assert math.isclose(out.clip_fraction.item(), 2 / 5, rel_tol=1e-6)  # the 1.5 (A>0) and 0.7 (A<0) tokens


def test_one_grpo_step_moves_probability_toward_positive_advantage_tokens() -> None:
    """Toy problem: a categorical policy over 256 bins for 4 tokens; reward = token 0 is in the upper half."""
    torch.manual_seed(0)
    logits = torch.zeros(4, 256, requires_grad=True)
    optimizer = torch.optim.AdamW([logits], lr=0.05, weight_decay=0.0)
    group_size = 8
    with torch.no_grad():
        dist = torch.distributions.Categorical(logits=logits / 1.6)
        tokens = dist.sample((group_size,))  # (G, 4)
        old_log_probs = dist.log_prob(tokens)
    rewards = (tokens[:, 0] >= 128).float().view(1, group_size)
    assert informative_groups(rewards).all(), "seed should give a mixed group"
    advantages = group_advantages(rewards).view(-1)
    new_log_probs = torch.distributions.Categorical(logits=logits / 1.6).log_prob(tokens)
    out = clipped_policy_loss(new_log_probs, old_log_probs, advantages, torch.ones_like(new_log_probs))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = torch.distributions.Categorical(logits=logits / 1.6).log_prob(tokens)
    change = (after - old_log_probs)[:, 0]
    positive, negative = advantages > 0, advantages < 0
    assert (change[positive] > 0).all() and (change[negative] < 0).all()
