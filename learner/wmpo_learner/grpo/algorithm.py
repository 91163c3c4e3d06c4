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
from wmpo_core.config_cli import option

GROUP = "GRPO"


@dataclass(frozen=True)
class GRPOConfig:
    """The algorithm's hyper-parameters; the defaults are the WMPO paper's."""

    group_size: int = option(8, "G: rollouts per initial state", group=GROUP)
    groups_per_batch: int = option(
        64, "informative groups per iteration (64 x 8 = 512 trajectories in the paper)", group=GROUP
    )
    minibatch_trajectories: int = option(
        128, "trajectories per optimizer step", flag="--minibatch", group=GROUP
    )
    epochs: int = option(1, "passes over each iteration's batch", group=GROUP)
    lr: float = option(5e-6, "AdamW learning rate", group=GROUP)
    max_grad_norm: float = option(1.0, "gradient-norm clip", group=GROUP)
    clip_low: float = option(0.20, "lower clip of the importance ratio (1 - eps_low)", group=GROUP)
    clip_high: float = option(
        0.28, "upper clip of the importance ratio (1 + eps_high, clip-higher)", group=GROUP
    )
    temperature: float = option(1.6, "sampling temperature of the rollouts", group=GROUP)
    iterations: int = option(100, "GRPO iterations", group=GROUP)
    advantage_eps: float = option(1e-6, "added to the group's std in the advantage", group=GROUP)
    max_resample_rounds: int = option(
        8,
        "dynamic sampling: extra sampling rounds per iteration before training on fewer groups",
        group=GROUP,
    )

    def problems(self) -> list[str]:
        """What is out of range, named by flag (empty when the config can run)."""
        return [
            message
            for message, ok in [
                ("--group-size must be >= 2", self.group_size >= 2),
                ("--groups-per-batch must be >= 1", self.groups_per_batch >= 1),
                ("--minibatch must be >= 1", self.minibatch_trajectories >= 1),
                ("--iterations must be >= 1", self.iterations >= 1),
                ("--temperature must be > 0", self.temperature > 0),
                ("--clip-low must be in (0, 1)", 0 < self.clip_low < 1),
                ("--clip-high must be > 0", self.clip_high > 0),
            ]
            if not ok
        ]


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
