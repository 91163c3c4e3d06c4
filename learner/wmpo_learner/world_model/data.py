"""Training data for the world model: episode selection, random frames, random latent windows.

A window of C context + P predicted frames starting at step s covers frames s .. s+C+P-1 of an
episode; predicted frame s+j (j >= C) is conditioned on action s+j-1, the command that produced
it. Windows are taken at stride 1 from s = 1-C (context = the first frame repeated, predicted =
frames 1..P: exactly how an imagined rollout starts) to the last window inside the episode;
indices before 0 are padded with the first frame (`wmpo_core.window_sampler` with pad_before =
C-1). Context frames carry no action.

Frames are encoded to latents once (the VAE is frozen while the transformer trains) and kept in
memory, so a training step costs only the transformer: about 8 KB per frame for SDXL latents at
256 px in float16, 2 KB at the tiny config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from wmpo_core.episode_arrays import load_episode
from wmpo_core.episode_store import EpisodeMeta, EpisodeStore
from wmpo_core.image_ops import resize_frames
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.window_sampler import WindowSampler


def select_episodes(
    store: EpisodeStore,
    spec: str | None = None,
    source: str | None = None,
    success: bool | None = None,
    policy_version: str | None = None,
    exclude: Sequence[str] = (),
) -> list[EpisodeMeta]:
    """Episodes matching the filters, oldest first, then narrowed by `spec`:
    None/"all", "first:N", "last:N", or comma-separated episode ids (which must all exist)."""
    metas = [
        m
        for m in store.select(source=source, success=success, policy_version=policy_version)
        if m.episode_id not in set(exclude)
    ]
    if spec in (None, "", "all"):
        return metas
    kind, _, count = spec.partition(":")
    if kind in ("first", "last") and count:
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"episode selection '{spec}': N must be a positive integer")
        n = int(count)
        return metas[:n] if kind == "first" else metas[-n:]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    by_id = {m.episode_id: m for m in metas}
    missing = [w for w in wanted if w not in by_id]
    if missing:
        raise ValueError(
            f"episode selection: {missing} not in {store.root} (or excluded by the other filters)"
        )
    return [by_id[w] for w in wanted]


def latent_windows(episode_lengths: Sequence[int], context: int, predicted: int) -> WindowSampler:
    """The world model's windows: C + P steps at stride 1, the context padded with frame 0 by up to
    C - 1 steps (the first window is how an imagined rollout starts)."""
    return WindowSampler(episode_lengths, context + predicted, pad_before=context - 1)


def window_starts(num_steps: int, context: int, predicted: int) -> np.ndarray:
    """Valid window starts s of one episode (stride 1, early windows padded)."""
    return latent_windows([num_steps], context, predicted).start


def read_episode(
    store: EpisodeStore, meta: EpisodeMeta, camera: str, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, R, R, 3) uint8 at the model's resolution, actions (T, A) float64 robot units)."""
    arrays = load_episode(store, meta, [camera], resolution)
    return arrays.frames[camera], arrays.action


class FrameSampler:
    """Random single frames from the store, for training the VAE; reads only what it samples."""

    def __init__(self, store: EpisodeStore, episodes: Sequence[EpisodeMeta], camera: str, resolution: int):
        if not episodes:
            raise ValueError("no episodes to sample frames from")
        self._readers = [store.episode(m.episode_id) for m in episodes]
        self._lengths = np.array([m.num_steps for m in episodes])
        self._camera = camera
        self._resolution = resolution

    def sample(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """(batch, R, R, 3) uint8, uniformly over all frames."""
        flat = rng.integers(0, int(self._lengths.sum()), size=batch)
        bounds = np.cumsum(self._lengths)
        episode = np.searchsorted(bounds, flat, side="right")
        step = flat - (bounds[episode] - self._lengths[episode])
        out = np.empty((batch, self._resolution, self._resolution, 3), dtype=np.uint8)
        for e in np.unique(episode):
            rows = np.nonzero(episode == e)[0]
            frames = self._readers[e].frames_at(self._camera, step[rows])
            out[rows] = resize_frames(frames, self._resolution)
        return out


@dataclass
class LatentEpisode:
    episode_id: str
    latents: torch.Tensor
    """(T, C, h, w) float16 scaled latents."""
    actions: torch.Tensor
    """(T, A) float32 normalized actions."""


class LatentWindowSampler:
    """Random windows (stride 1 over every episode) of in-memory latents and normalized actions."""

    def __init__(self, episodes: Sequence[LatentEpisode], context: int, predicted: int):
        self.episodes = list(episodes)
        self.context, self.predicted = context, predicted
        self._windows = latent_windows([len(ep.latents) for ep in self.episodes], context, predicted)
        if not len(self._windows):
            raise ValueError(
                f"no training windows: every episode is shorter than {predicted + 1} steps "
                f"(a window predicts {predicted} frames after the first)"
            )

    def __len__(self) -> int:
        return len(self._windows)

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window i: latents (C+P, C, h, w) float32, actions (C+P, A) (zeros on context rows)."""
        ep = self.episodes[int(self._windows.episode[i])]
        frames = torch.from_numpy(self._windows.steps(i))
        actions = torch.zeros(len(frames), ep.actions.shape[1])
        actions[self.context :] = ep.actions[frames[self.context :] - 1]
        return ep.latents[frames].float(), actions

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C+P, C, h, w) latents and (B, C+P, A) actions, windows drawn uniformly with replacement."""
        picks = torch.randint(len(self._windows), (batch,), generator=generator).tolist()
        latents, actions = zip(*(self.window(i) for i in picks), strict=True)
        return torch.stack(latents), torch.stack(actions)


def fit_normalizer(store: EpisodeStore, episodes: Sequence[EpisodeMeta]) -> ActionNormalizer:
    """q01/q99 statistics of the actions of `episodes`."""
    actions = np.concatenate([store.episode(m.episode_id).action() for m in episodes])
    return ActionNormalizer.from_actions(actions)
