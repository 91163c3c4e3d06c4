"""GRPO as WMPO runs it, as plain tensor functions (read top to bottom, CleanRL style).

- Rewards are 0/1 per trajectory; trajectories come in groups of G that share an initial frame.
- Dynamic sampling: groups where every trajectory succeeded, or every one failed, carry no
  learning signal (zero advantage) and are dropped; the trainer samples more until the batch is full.
- Advantage = (R - mean of the group) / (std of the group + 1e-6), the same value for every token
  of the trajectory up to its finish step. The std is the sample (unbiased) std, as in the
  authors' code.
- Per-token importance ratio with asymmetric ("clip-higher") clipping, eps_low = 0.2 and
  eps_high = 0.28; the loss is averaged over all valid tokens of the mini-batch (not per chunk,
  not per trajectory). No KL term, no entropy bonus, no reference model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 8
    """G: imagined rollouts per initial frame."""
    groups_per_batch: int = 64
    """Initial frames per iteration (64 x 8 = 512 trajectories in the paper)."""
    minibatch_trajectories: int = 128
    epochs: int = 1
    lr: float = 5e-6
    max_grad_norm: float = 1.0
    clip_low: float = 0.20
    clip_high: float = 0.28
    temperature: float = 1.6
    iterations: int = 100
    advantage_eps: float = 1e-6
    max_resample_rounds: int = 8
    """Dynamic sampling gives up (and trains on what it has) after this many extra rounds."""


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(num_groups, G) 0/1 rewards -> bool mask of groups that are neither all-success nor all-failure."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (num_groups, group_size), got {tuple(rewards.shape)}")
    return rewards.amax(dim=1) != rewards.amin(dim=1)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(num_groups, G) rewards -> (num_groups, G) group-normalized advantages."""
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True)
    return (rewards - mean) / (std + eps)


def token_mask(finish_steps: torch.Tensor, num_chunks: int, chunk_size: int, action_dim: int) -> torch.Tensor:
    """Valid tokens of each trajectory: those of steps up to and including its finish step.

    finish_steps: (B,) long, the step at which the reward model detected success, or -1 (failure:
    every token counts). Returns (B, num_chunks, chunk_size, action_dim) float.
    """
    steps = torch.arange(num_chunks * chunk_size, device=finish_steps.device).view(1, num_chunks, chunk_size)
    limit = torch.where(
        finish_steps < 0, torch.full_like(finish_steps, num_chunks * chunk_size), finish_steps
    )
    valid = steps <= limit.view(-1, 1, 1)
    return valid.unsqueeze(-1).expand(-1, -1, -1, action_dim).float()


@dataclass
class LossOutput:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    """Mean (old - new) log-prob over valid tokens: a drift diagnostic, not a loss term."""


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.20,
    clip_high: float = 0.28,
    num_valid_tokens: float | torch.Tensor | None = None,
) -> LossOutput:
    """Token-level clipped surrogate, averaged over all valid tokens.

    log_probs, old_log_probs, mask: (B, ...) per token; advantages: (B,) per trajectory.
    `num_valid_tokens`: the denominator when this call sees only part of a mini-batch (gradient
    accumulation, several processes); default: the valid tokens of this call.
    """
    adv = advantages.view(-1, *([1] * (log_probs.ndim - 1))).to(log_probs.dtype)
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    denom = (
        mask.sum().clamp_min(1.0)
        if num_valid_tokens is None
        else torch.as_tensor(num_valid_tokens).clamp_min(1.0)
    )
    loss = (per_token * mask).sum() / denom
    with torch.no_grad():
        clip_fraction = ((clipped > unclipped).float() * mask).sum() / denom
        approx_kl = ((old_log_probs - log_probs) * mask).sum() / denom
    return LossOutput(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl)
