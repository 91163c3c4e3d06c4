"""Imagination: batched autoregressive rollouts of a policy inside the world model.

From real first frames, the policy and the world model take turns: the policy sees the newest
frame (the real one at the start, a generated one afterwards) and samples a chunk of K action
tokens with their log-probs; the world model generates the K frames those actions produce; its
last `context_frames` latents become the next context. Every initial frame is rolled out
`group_size` times at once (GRPO groups), all in one batch.

The policy side is any object with the `ChunkSamplingPolicy` interface (the project's VLA has it).
The policy sees frames at the world model's resolution, the real first frame included (resized
with `resize_frames`), so every observation in a rollout went through the same resize path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from .model import WorldModel


@runtime_checkable
class ChunkSamplingPolicy(Protocol):
    """A token policy that samples action chunks with exact per-token log-probs."""

    chunk_size: int
    action_dim: int
    image_size: int

    def encode_inputs(
        self, frames: np.ndarray, instructions: Sequence[str], state: np.ndarray | None = None
    ) -> dict[str, Any]:
        """(B, H, W, 3) uint8 frames at any resolution + one instruction per frame -> model inputs."""

    def sample(
        self,
        inputs: dict[str, Any],
        temperature: float = 1.6,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (B, K, A) long, log-probs (B, K, A) under softmax(logits / temperature)."""

    def tokens_to_actions(self, tokens: torch.Tensor) -> np.ndarray | torch.Tensor:
        """(B, K, A) tokens -> (B, K, A) float64 actions in robot units."""


@dataclass
class ImaginedRollouts:
    """B = len(first_frames) * group_size rollouts of T = num_chunks * K steps.

    Row b belongs to initial frame `initial_index[b]` (rows i*G .. i*G+G-1 form group i).
    Step t: the policy acted on `frames[:, t]` with `actions[:, t]` (tokens `tokens[:, t]`),
    and the world model imagined the result `frames[:, t + 1]`.
    """

    frames: np.ndarray
    """(B, T + 1, R, R, 3) uint8 at the world model's resolution; frames[:, 0] is the real first frame."""
    actions: np.ndarray
    """(B, T, A) float64 robot units, as decoded from the tokens."""
    tokens: torch.Tensor
    """(B, T, A) long action tokens."""
    log_probs: torch.Tensor
    """(B, T, A) float32 log-probs of the tokens at the sampling temperature (no gradient)."""
    instructions: list[str]
    initial_index: np.ndarray
    """(B,) index into the `first_frames` each row started from."""
    chunk_size: int
    temperature: float

    @property
    def num_chunks(self) -> int:
        return self.actions.shape[1] // self.chunk_size

    @property
    def observations(self) -> np.ndarray:
        """(B, num_chunks, R, R, 3) uint8: the frame the policy saw before each chunk (frames[:, c*K]),
        for recomputing log-probs with gradients in GRPO."""
        return self.frames[:, : self.num_chunks * self.chunk_size : self.chunk_size]


@torch.no_grad()
def imagine(
    world_model: WorldModel,
    policy: ChunkSamplingPolicy,
    first_frames: np.ndarray,
    instructions: str | Sequence[str],
    horizon: int,
    group_size: int = 8,
    temperature: float = 1.6,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    sampling_steps: int | None = None,
    progress: bool = False,
    sampler: str | None = None,
) -> ImaginedRollouts:
    """Roll `policy` out in `world_model` from each of `first_frames` (N, H, W, 3) uint8, `group_size`
    times, for `horizon` steps rounded up to whole chunks. `generator` seeds the policy's token
    sampling and the world model's noise (a seeded run is reproducible). `sampler` and
    `sampling_steps` choose the world model's ODE solver and its steps (default: Euler at the
    model's steps; `few_step.imagination_sampler` picks a certified cheaper one)."""
    first_frames = np.asarray(first_frames)
    if first_frames.ndim != 4 or first_frames.shape[-1] != 3 or first_frames.dtype != np.uint8:
        raise ValueError(
            f"first_frames must be (N, H, W, 3) uint8, got {first_frames.shape} {first_frames.dtype}"
        )
    if horizon < 1 or group_size < 1:
        raise ValueError(f"horizon and group_size must be >= 1, got {horizon} and {group_size}")
    if policy.action_dim != world_model.normalizer.dim:
        raise ValueError(
            f"policy acts in {policy.action_dim} dims, the world model takes {world_model.normalizer.dim}"
        )
    num = len(first_frames)
    texts = [instructions] * num if isinstance(instructions, str) else list(instructions)
    if len(texts) != num:
        raise ValueError(f"got {len(texts)} instructions for {num} first frames")
    k = policy.chunk_size
    num_chunks = -(-horizon // k)
    initial_index = np.repeat(np.arange(num), group_size)
    texts = [texts[i] for i in initial_index]

    start = world_model.prepare_frames(first_frames)[initial_index]  # (B, R, R, 3)
    context = world_model.context_from_frames(first_frames)[initial_index]  # each first frame encoded once
    batch = len(initial_index)
    frames = np.empty((batch, num_chunks * k + 1, *start.shape[1:]), dtype=np.uint8)
    frames[:, 0] = start
    tokens, log_probs, actions = [], [], []
    for c in tqdm(range(num_chunks), desc="imagine", disable=not progress, dynamic_ncols=True):
        observation = frames[:, c * k]
        chunk_tokens, chunk_log_probs = policy.sample(
            policy.encode_inputs(observation, texts),
            temperature=temperature,
            greedy=greedy,
            generator=generator,
        )
        chunk_actions = policy.tokens_to_actions(chunk_tokens)
        if isinstance(chunk_actions, torch.Tensor):
            chunk_actions = chunk_actions.detach().cpu().numpy()
        chunk_actions = np.asarray(chunk_actions, dtype=np.float64)
        if chunk_actions.shape != (batch, k, world_model.normalizer.dim):
            raise ValueError(
                f"policy returned actions {chunk_actions.shape}, "
                f"expected {(batch, k, world_model.normalizer.dim)}"
            )
        latents, context = world_model.rollout_latents(
            context, world_model.normalize_actions(chunk_actions), generator, sampling_steps, sampler
        )
        frames[:, c * k + 1 : (c + 1) * k + 1] = world_model.decode_frames(latents)
        tokens.append(chunk_tokens.detach().cpu())
        log_probs.append(chunk_log_probs.detach().float().cpu())
        actions.append(chunk_actions)
    return ImaginedRollouts(
        frames=frames,
        actions=np.concatenate(actions, axis=1),
        tokens=torch.cat(tokens, dim=1).long(),
        log_probs=torch.cat(log_probs, dim=1),
        instructions=texts,
        initial_index=initial_index,
        chunk_size=k,
        temperature=temperature,
    )
