"""Where GRPO's trajectories come from: imagination (WMPO) or the simulator (the real-env baseline).

Both sources return the same `RolloutBatch`, so the update in `trainer.py` cannot tell them apart:
groups of G trajectories that share an initial state, the frame the policy saw before each chunk,
the sampled tokens with their log-probs, a 0/1 reward and the step at which success was reached.

- `ImaginationSource`: the policy and the world model take turns from real first frames; the
  reward model's sliding-window detector scores each imagined video and gives its finish step.
  Costs no real episodes.
- `SimSource`: the same policy, sampling at the same temperature, acts in the simulator through
  the robot's safety filter; the env's success signal is the reward. Every trajectory is a real
  episode, counted against a budget P: this is "GRPO in the real environment" of the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from wmpo_core.robot_config import RobotConfig
from wmpo_core.safety import SafetyFilter
from wmpo_core.sim_env import SimArm


@dataclass
class RolloutBatch:
    """B = num_groups * group_size trajectories of C chunks of K actions (rows g*G .. g*G+G-1 = group g)."""

    observations: np.ndarray
    """(B, C, H, W, 3) uint8: the frame the policy saw before each chunk."""
    instructions: list[str]
    tokens: torch.Tensor
    """(B, C, K, A) long."""
    old_log_probs: torch.Tensor
    """(B, C, K, A) float32 log-probs at sampling time (temperature included)."""
    rewards: torch.Tensor
    """(B,) float32, 1 = success."""
    finish_steps: torch.Tensor
    """(B,) long: the step at which success was reached (tokens after it do not count), -1 if never."""
    executed: torch.Tensor
    """(B, C, K) bool: the step was executed (a simulated episode that ended early executes fewer)."""
    group_size: int
    frames: np.ndarray | None = None
    """(B, T+1, H, W, 3) uint8 imagined videos (imagination only; for reports)."""

    @property
    def num_groups(self) -> int:
        return len(self.instructions) // self.group_size

    def group_rewards(self) -> torch.Tensor:
        return self.rewards.view(self.num_groups, self.group_size)

    def select_groups(self, keep: torch.Tensor) -> RolloutBatch:
        rows = torch.nonzero(keep.repeat_interleave(self.group_size)).flatten()
        idx = rows.numpy()
        return RolloutBatch(
            observations=self.observations[idx],
            instructions=[self.instructions[i] for i in idx],
            tokens=self.tokens[rows],
            old_log_probs=self.old_log_probs[rows],
            rewards=self.rewards[rows],
            finish_steps=self.finish_steps[rows],
            executed=self.executed[rows],
            group_size=self.group_size,
            frames=self.frames[idx] if self.frames is not None else None,
        )

    @staticmethod
    def concat(batches: Sequence[RolloutBatch]) -> RolloutBatch:
        if not batches:
            raise ValueError("nothing to concatenate")
        with_frames = (
            all(b.frames is not None for b in batches) and len({b.frames.shape[1:] for b in batches}) == 1
        )
        return RolloutBatch(
            observations=np.concatenate([b.observations for b in batches]),
            instructions=[i for b in batches for i in b.instructions],
            tokens=torch.cat([b.tokens for b in batches]),
            old_log_probs=torch.cat([b.old_log_probs for b in batches]),
            rewards=torch.cat([b.rewards for b in batches]),
            finish_steps=torch.cat([b.finish_steps for b in batches]),
            executed=torch.cat([b.executed for b in batches]),
            group_size=batches[0].group_size,
            frames=np.concatenate([b.frames for b in batches]) if with_frames else None,
        )


class ImaginationSource:
    """Groups of imagined rollouts from real first frames, scored by the reward model."""

    def __init__(
        self,
        world_model,
        reward_model,
        first_frames: np.ndarray,
        instructions: Sequence[str],
        horizon: int,
        sampling_steps: int | None = None,
        seed: int = 0,
        sampler: str | None = None,
        checkpoint: str | Path | None = None,
    ):
        """`sampler`/`sampling_steps` choose the world model's ODE solver; when neither is given,
        the few-step sampler certified for the weights in `checkpoint` (`wmpo wm-few-step`) is
        used, else the model's default."""
        # imported here as `collect` imports `imagine`: the world-model package pulls in diffusers,
        # which the simulator baseline does not need
        from wmpo_learner.world_model.few_step import imagination_sampler

        if len(first_frames) == 0:
            raise ValueError("imagination needs at least one real first frame")
        if len(first_frames) != len(instructions):
            raise ValueError(f"{len(first_frames)} first frames but {len(instructions)} instructions")
        self.world_model = world_model
        self.reward_model = reward_model
        self.first_frames = np.asarray(first_frames)
        self.instructions = list(instructions)
        self.horizon = horizon
        self.sampler, self.sampling_steps, self.sampler_reason = imagination_sampler(
            checkpoint, sampling_steps, sampler
        )
        self._rng = np.random.default_rng(seed)
        self.real_episodes_used = 0

    def collect(
        self, policy, num_groups: int, group_size: int, temperature: float, generator: torch.Generator
    ) -> RolloutBatch:
        from wmpo_learner.world_model.imagine import imagine

        pick = self._rng.choice(
            len(self.first_frames), size=num_groups, replace=len(self.first_frames) < num_groups
        )
        rollouts = imagine(
            self.world_model,
            policy,
            self.first_frames[pick],
            [self.instructions[i] for i in pick],
            horizon=self.horizon,
            group_size=group_size,
            temperature=temperature,
            generator=generator,
            sampling_steps=self.sampling_steps,
            sampler=self.sampler,
        )
        detections = self.reward_model.detect_batch(rollouts.frames)
        # frames[:, 0] is the real start and frames[:, t + 1] the result of step t: a success first
        # seen in frame f was reached by step f - 1, the last step whose tokens count.
        finish = [d.finish_step - 1 if d.success and d.finish_step is not None else -1 for d in detections]
        batch, steps, dim = rollouts.tokens.shape
        k = rollouts.chunk_size
        shape = (batch, steps // k, k, dim)
        return RolloutBatch(
            observations=rollouts.observations,
            instructions=rollouts.instructions,
            tokens=rollouts.tokens.view(shape),
            old_log_probs=rollouts.log_probs.view(shape),
            rewards=torch.tensor([float(d.success) for d in detections]),
            finish_steps=torch.tensor(finish, dtype=torch.long).clamp_min(-1),
            executed=torch.ones(shape[:3], dtype=torch.bool),
            group_size=group_size,
            frames=rollouts.frames,
        )


class BudgetExhausted(RuntimeError):
    """The real-episode budget of the simulator baseline is spent."""


class SimSource:
    """Groups of G simulated episodes from one seed each, run in lockstep; reward = env success."""

    def __init__(
        self,
        robot_config: RobotConfig,
        seeds: Sequence[int],
        budget_episodes: int,
        instruction: str | None = None,
    ):
        if budget_episodes < 1:
            raise ValueError(f"the real-episode budget must be >= 1, got {budget_episodes}")
        self.config = robot_config
        self.seeds = list(seeds)
        self.budget = budget_episodes
        self.instruction = instruction or robot_config.tasks[0]
        self.real_episodes_used = 0
        self._next_seed = 0
        self._arms: list[SimArm] = []

    def close(self) -> None:
        for arm in self._arms:
            arm.close()
        self._arms = []

    def collect(
        self, policy, num_groups: int, group_size: int, temperature: float, generator: torch.Generator
    ) -> RolloutBatch:
        batches = []
        for _ in range(num_groups):
            if self.real_episodes_used + group_size > self.budget:
                if not batches:
                    raise BudgetExhausted(f"{self.real_episodes_used} of {self.budget} real episodes used")
                break
            seed = self.seeds[self._next_seed % len(self.seeds)]
            self._next_seed += 1
            batches.append(self._group(policy, seed, group_size, temperature, generator))
            self.real_episodes_used += group_size
        return RolloutBatch.concat(batches)

    def _group(
        self, policy, seed: int, group_size: int, temperature: float, generator: torch.Generator
    ) -> RolloutBatch:
        while len(self._arms) < group_size:
            self._arms.append(SimArm(self.config))
        arms = self._arms[:group_size]
        camera = self.config.cameras[0].name
        k = policy.chunk_size
        num_chunks = -(-self.config.max_episode_steps // k)
        observations = [arm.reset(seed=seed) for arm in arms]
        filters = [SafetyFilter(self.config.action) for _ in arms]
        for f, obs in zip(filters, observations, strict=True):
            f.reset(obs.state if self.config.action.space == "joint_position" else None)
        shape = observations[0].images[camera].shape
        seen = np.zeros((group_size, num_chunks, *shape), dtype=np.uint8)
        tokens = torch.zeros((group_size, num_chunks, k, policy.action_dim), dtype=torch.long)
        log_probs = torch.zeros((group_size, num_chunks, k, policy.action_dim))
        executed = torch.zeros((group_size, num_chunks, k), dtype=torch.bool)
        finish = torch.full((group_size,), -1, dtype=torch.long)
        done = np.zeros(group_size, dtype=bool)
        step = 0
        for c in range(num_chunks):
            active = np.flatnonzero(~done)
            if active.size == 0:
                break
            frames = np.stack([observations[i].images[camera] for i in active])
            seen[active, c] = frames
            with torch.no_grad():
                chunk_tokens, chunk_log_probs = policy.sample(
                    policy.encode_inputs(frames, [self.instruction] * len(active)),
                    temperature=temperature,
                    generator=generator,
                )
            actions = np.asarray(policy.tokens_to_actions(chunk_tokens.cpu()))
            tokens[active, c] = chunk_tokens.cpu()
            log_probs[active, c] = chunk_log_probs.float().cpu()
            for j in range(k):
                if step + j >= self.config.max_episode_steps:
                    break
                for row, i in enumerate(active):
                    if done[i]:
                        continue
                    safe, _ = filters[i].filter(actions[row, j])
                    if safe is None:  # nothing safe to send: the episode ends as a failure
                        done[i] = True
                        continue
                    observations[i] = arms[i].step(safe)
                    executed[i, c, j] = True
                    if observations[i].success and finish[i] < 0:
                        finish[i] = step + j
                    if observations[i].terminated or observations[i].truncated:
                        done[i] = True
            step += k
        return RolloutBatch(
            observations=seen,
            instructions=[self.instruction] * group_size,
            tokens=tokens,
            old_log_probs=log_probs,
            rewards=(finish >= 0).float(),
            finish_steps=finish,
            executed=executed,
            group_size=group_size,
        )
