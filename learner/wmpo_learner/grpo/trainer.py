"""The GRPO loop: collect groups (dynamic sampling), compute advantages, clipped token-level update.

One iteration, as in WMPO:
1. sample groups of G trajectories from the current policy at temperature T, from a rollout
   source (imagination or the simulator); drop the groups whose G rewards are all equal and keep
   sampling until `groups_per_batch` informative groups are in hand (dynamic sampling);
2. advantage of each trajectory = its reward normalized within its group, for every token up to
   the trajectory's finish step;
3. `epochs` passes over the batch in mini-batches of `minibatch_trajectories`; each mini-batch is
   one optimizer step of the clipped surrogate averaged over its valid tokens (no KL, no entropy).

Collapse guard (optional, `guard`): a score of the *greedy* policy (the one the robot runs), e.g.
its imagined success from held-out real start frames, measured before the first update and after
every iteration. Sampled-rollout success can stay flat while the arg-max actions collapse (measured
on the tiny VLA: imagined sampled success 0.34-0.66, real greedy success 0/16), so the weights of
the best-scoring iterate are kept, and the parent's when no iterate beats it.

Runs as one process, or as several under torchrun (each process collects its share of the groups;
gradients are averaged and the token-level average is global).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from wmpo_learner.grpo.algorithm import (
    GRPOConfig,
    clipped_policy_loss,
    group_advantages,
    informative_groups,
    token_mask,
)
from wmpo_learner.grpo.rollouts import BudgetExhausted, RolloutBatch


@dataclass
class IterationLog:
    iteration: int
    success_rate: float
    """Mean reward of every trajectory sampled this iteration (before dynamic sampling)."""
    kept_group_fraction: float
    groups_kept: int
    trajectories_sampled: int
    loss: float
    clip_fraction: float
    entropy: float
    """Mean per-token entropy (nats) of the sampling distribution over the valid tokens."""
    approx_kl: float
    """Estimated during the update, against the policy that sampled: 0 on the first minibatch pass."""
    grad_norm: float
    real_episodes_used: int
    seconds: float
    greedy_score: float | None = None
    """The collapse guard's score of the greedy policy after this iteration (None without a guard)."""
    post_update_kl: float = 0.0
    """KL(sampling policy || updated policy) on this iteration's trajectories, measured after the
    update (k3 estimator over the valid tokens): how far the iteration moved the policy."""


@dataclass
class GuardResult:
    """What the collapse guard kept: iteration -1 is the parent (no update beat it)."""

    parent_score: float
    best_score: float
    best_iteration: int


def collect_informative(source, policy, config: GRPOConfig, num_groups: int, generator: torch.Generator):
    """Dynamic sampling: (batch of informative groups or None, all sampled rewards, groups sampled)."""
    kept: list[RolloutBatch] = []
    rewards: list[torch.Tensor] = []
    sampled_groups = kept_groups = 0
    for _ in range(config.max_resample_rounds + 1):
        need = num_groups - kept_groups
        if need <= 0:
            break
        try:
            batch = source.collect(policy, need, config.group_size, config.temperature, generator)
        except BudgetExhausted:
            break
        rewards.append(batch.rewards)
        sampled_groups += batch.num_groups
        keep = informative_groups(batch.group_rewards())
        if keep.any():
            kept.append(batch.select_groups(keep))
            kept_groups += int(keep.sum())
    all_rewards = torch.cat(rewards) if rewards else torch.zeros(0)
    return (RolloutBatch.concat(kept) if kept else None), all_rewards, sampled_groups


class TokenScorer(torch.nn.Module):
    """The VLA's differentiable token log-probs and entropies as a module's forward (what DDP wraps)."""

    def __init__(self, vla):
        super().__init__()
        self.vla = vla

    def forward(self, inputs, tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vla.log_probs_and_entropy(inputs, tokens, temperature)


def update(
    scorer, optimizer, batch: RolloutBatch, config: GRPOConfig, microbatch: int, world=None
) -> dict[str, float]:
    """`config.epochs` passes of clipped-surrogate steps over `batch`; returns averaged statistics."""
    vla = (scorer.module if isinstance(scorer, DistributedDataParallel) else scorer).vla
    advantages = group_advantages(batch.group_rewards(), config.advantage_eps).view(-1)
    _, num_chunks, k, dim = batch.tokens.shape
    mask = token_mask(batch.finish_steps, num_chunks, k, dim) * batch.executed.unsqueeze(-1).float()
    size = len(batch.instructions)
    stats = {"loss": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "approx_kl": 0.0, "grad_norm": 0.0}
    steps = 0
    scorer.train()
    for _ in range(config.epochs):
        order = torch.randperm(size)
        for start in range(0, size, config.minibatch_trajectories):
            rows = order[start : start + config.minibatch_trajectories]
            valid = mask[rows].sum()
            if world is not None and world.enabled:
                valid = world.sum(valid)
            if valid.item() == 0:
                continue
            scale = world.world_size if world is not None and world.enabled else 1  # DDP averages gradients
            optimizer.zero_grad(set_to_none=True)
            sums = dict.fromkeys(("loss", "clip_fraction", "entropy", "approx_kl"), 0.0)
            for micro in rows.split(microbatch):
                idx = micro.numpy()
                frames = batch.observations[idx].reshape(-1, *batch.observations.shape[2:])
                texts = [batch.instructions[i] for i in idx for _ in range(num_chunks)]
                inputs = vla.encode_inputs(frames, texts)
                log_probs, entropy = scorer(
                    inputs, batch.tokens[micro].reshape(-1, k, dim), config.temperature
                )
                log_probs = log_probs.view(len(micro), num_chunks, k, dim)
                entropy = entropy.view(len(micro), num_chunks, k, dim)
                out = clipped_policy_loss(
                    log_probs,
                    batch.old_log_probs[micro].to(log_probs.device),
                    advantages[micro].to(log_probs.device),
                    mask[micro].to(log_probs.device),
                    config.clip_low,
                    config.clip_high,
                    num_valid_tokens=valid.to(log_probs.device),
                )
                (out.loss * scale).backward()
                sums["loss"] += out.loss.item()
                sums["clip_fraction"] += out.clip_fraction.item()
                sums["approx_kl"] += out.approx_kl.item()
                sums["entropy"] += (
                    entropy.detach() * mask[micro].to(entropy.device)
                ).sum().item() / valid.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(scorer.parameters(), config.max_grad_norm)
            optimizer.step()
            for key, value in sums.items():
                stats[key] += value
            stats["grad_norm"] += float(grad_norm)
            steps += 1
    result = {key: value / max(steps, 1) for key, value in stats.items()}
    result["post_update_kl"] = post_update_kl(vla, batch, mask, config, microbatch) if steps else 0.0
    return result


@torch.no_grad()
def post_update_kl(
    vla, batch: RolloutBatch, mask: torch.Tensor, config: GRPOConfig, microbatch: int
) -> float:
    """KL(sampling policy || current policy) over `batch`'s valid tokens, k3 estimator
    (exp(d) - 1 - d with d = log p_new - log p_old: unbiased and never negative). Called on the VLA
    itself, not through DDP: a forward pass here must not take part in any collective."""
    _, num_chunks, k, dim = batch.tokens.shape
    was_training = vla.training
    vla.eval()
    total, count = 0.0, 0.0
    for micro in torch.arange(len(batch.instructions)).split(microbatch):
        idx = micro.numpy()
        frames = batch.observations[idx].reshape(-1, *batch.observations.shape[2:])
        texts = [batch.instructions[i] for i in idx for _ in range(num_chunks)]
        tokens = batch.tokens[micro].reshape(-1, k, dim)
        log_probs, _ = vla.log_probs_and_entropy(vla.encode_inputs(frames, texts), tokens, config.temperature)
        d = log_probs.view(len(micro), num_chunks, k, dim) - batch.old_log_probs[micro].to(log_probs.device)
        m = mask[micro].to(d.device)
        total += float(((d.exp() - 1 - d) * m).sum())
        count += float(m.sum())
    vla.train(was_training)
    return total / max(count, 1.0)


def train(
    vla,
    source,
    config: GRPOConfig,
    generator: torch.Generator,
    microbatch: int = 16,
    on_iteration: Callable[[IterationLog], None] | None = None,
    world=None,
    progress: bool = True,
    guard: Callable[[torch.nn.Module], float] | None = None,
) -> tuple[list[IterationLog], GuardResult | None]:
    """Run `config.iterations` GRPO iterations on `vla` with trajectories from `source`, in place.

    With a `guard`, `vla` ends with the weights of the best-scoring iterate (or the parent's)."""
    from tqdm import tqdm

    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    parent_score = None
    if guard is not None:
        parent_score = guard(vla)
        best = (parent_score, -1, {k: v.detach().clone() for k, v in vla.state_dict().items()})

    scorer = TokenScorer(vla)
    if world is not None and world.enabled:
        scorer = DistributedDataParallel(
            scorer, device_ids=[world.device.index] if world.device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=config.lr, weight_decay=0.0)
    ranks = world.world_size if world is not None and world.enabled else 1
    groups_here = max(1, config.groups_per_batch // ranks)
    history: list[IterationLog] = []
    bar = tqdm(range(config.iterations), desc="grpo", unit="it", disable=not progress, dynamic_ncols=True)
    for iteration in bar:
        t0 = time.time()
        vla.eval()
        batch, rewards, sampled_groups = collect_informative(source, vla, config, groups_here, generator)
        if world is not None and world.enabled:
            # Every process must take the same number of optimizer steps: train on as many
            # informative groups as the process with the fewest has.
            shared = int(world.min(torch.tensor(batch.num_groups if batch is not None else 0)))
            batch = batch.select_groups(torch.arange(batch.num_groups) < shared) if shared else None
        if batch is None and not rewards.numel():
            bar.write(
                f"grpo: no more trajectories (real-episode budget spent after {len(history)} iterations)"
            )
            break
        stats = (
            update(scorer, optimizer, batch, config, microbatch, world)
            if batch is not None
            else dict.fromkeys(
                ("loss", "clip_fraction", "entropy", "approx_kl", "grad_norm", "post_update_kl"), 0.0
            )
        )
        log = IterationLog(
            iteration=iteration,
            success_rate=float(rewards.mean()) if rewards.numel() else 0.0,
            kept_group_fraction=(batch.num_groups if batch is not None else 0) / max(sampled_groups, 1),
            groups_kept=batch.num_groups if batch is not None else 0,
            trajectories_sampled=int(rewards.numel()),
            real_episodes_used=int(getattr(source, "real_episodes_used", 0)),
            seconds=time.time() - t0,
            **stats,
        )
        if guard is not None and batch is not None:
            log.greedy_score = guard(vla)
            if log.greedy_score > best[0]:
                best = (
                    log.greedy_score,
                    iteration,
                    {k: v.detach().clone() for k, v in vla.state_dict().items()},
                )
        elif guard is not None:  # no update this iteration: the weights, and so the score, are unchanged
            log.greedy_score = history[-1].greedy_score if history else parent_score
        history.append(log)
        bar.set_postfix(
            success=f"{log.success_rate:.2f}",
            kept=f"{log.kept_group_fraction:.2f}",
            clip=f"{log.clip_fraction:.3f}",
            **({"greedy": f"{log.greedy_score:.2f}"} if log.greedy_score is not None else {}),
        )
        if on_iteration is not None:
            on_iteration(log)
    if best is None:
        return history, None
    vla.load_state_dict(best[2])
    return history, GuardResult(parent_score=parent_score, best_score=best[0], best_iteration=best[1])


def log_to_tensorboard(writer) -> Callable[[IterationLog], None]:
    """An `on_iteration` callback writing every statistic under `grpo/`."""

    def write(log: IterationLog) -> None:
        for key, value in asdict(log).items():
            if key != "iteration" and value is not None:
                writer.add_scalar(f"grpo/{key}", value, log.iteration)
        writer.flush()

    return write
