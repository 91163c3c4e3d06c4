"""Training clips from the episode store: labels, the hold-out split, class-balanced batches.

Labels (episodes with `success is None` are not used):
- positive: the last window of a successful episode (its last `num_frames` frames);
- negative: every window of a failed episode, and the windows of a successful episode that
  share no frame with its last window.
Windows of a successful episode that *overlap* its last window are left out as ambiguous: a
recording ends when success is reached, so a window one step earlier shows almost the same
clip as the positive one (the block one step lower). Labelling it negative would teach the
classifier a boundary it cannot see and make the finish step jitter; leaving it out only lets
detection fire a few steps early. `exclude_overlapping=False` keeps them as negatives.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm
from wmpo_core.episode_arrays import load_episode
from wmpo_core.episode_store import EpisodeMeta, EpisodeStore

from wmpo_learner.reward.preprocessing import PreprocessConfig, preprocess
from wmpo_learner.reward.windows import window_ends, window_frame_indices


@dataclass(frozen=True)
class Clip:
    episode_id: str
    end: int
    """End step (inclusive) of the window."""
    label: bool


def episode_clips(
    episode_id: str, num_steps: int, success: bool, num_frames: int, exclude_overlapping: bool = True
) -> list[Clip]:
    """The labelled training windows of one episode (see the module docstring)."""
    ends = window_ends(num_steps, num_frames)
    if not success:
        return [Clip(episode_id, int(e), False) for e in ends]
    last = int(ends[-1])
    negatives_until = last - num_frames if exclude_overlapping else last - 1  # inclusive
    return [Clip(episode_id, int(e), False) for e in ends if e <= negatives_until] + [
        Clip(episode_id, last, True)
    ]


def labelled_episodes(store: EpisodeStore, robot_config_name: str, camera: str) -> list[EpisodeMeta]:
    """Episodes of this robot config with a success label and the camera; clear errors otherwise."""
    metas = store.select(robot_config_name=robot_config_name)
    if not metas:
        names = sorted({m.robot_config_name for m in store})
        raise ValueError(
            f"{store.root}: no episodes recorded with robot config '{robot_config_name}' "
            f"({len(store)} episodes; robot configs present: {names or 'none'})"
        )
    labelled = [m for m in metas if m.success is not None]
    for m in labelled:
        if camera not in m.cameras:
            raise ValueError(f"episode {m.episode_id} has no camera '{camera}' (cameras: {list(m.cameras)})")
    return labelled


def split_episodes(
    metas: Sequence[EpisodeMeta], holdout_fraction: float, seed: int, never_holdout: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Episode-level split into (training, held-out) ids, stratified by success.

    `never_holdout`: episodes a model has already been trained on (e.g. the checkpoint being
    continued); they always go to training, so held-out episodes are unseen by the weights.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    seen = set(never_holdout)
    rng = np.random.default_rng(seed)
    train: list[str] = []
    holdout: list[str] = []
    for outcome in (True, False):
        ids = sorted(m.episode_id for m in metas if m.success is outcome)
        eligible = [i for i in ids if i not in seen]
        want = min(max(1, round(holdout_fraction * len(ids))), len(ids) - 1)
        word = "successful" if outcome else "failed"
        if len(ids) < 2 or not eligible:
            raise ValueError(
                f"need at least 2 {word} episodes, one of them not yet trained on, to train and to hold "
                f"out; have {len(ids)} ({len(ids) - len(eligible)} already trained on)"
            )
        chosen = set(rng.permutation(eligible)[: min(want, len(eligible))].tolist())
        holdout += sorted(chosen)
        train += [i for i in ids if i not in chosen]
    return sorted(train), sorted(holdout)


class ClipDataset(Dataset):
    """(pixels (num_frames, 3, S, S), label) for each clip, through `preprocess`.

    When the resized frames of all its episodes fit in `cache_bytes` they are read once and kept
    in memory (small data, CPU training); otherwise each clip is read from the store on demand
    (only the chunks it covers), in whichever process the DataLoader runs it.

    `max_shift` > 0 augments each clip with one random translation of up to that many pixels
    (the same for all its frames, borders replicated): positives are few (one clip per
    successful episode), and without it the classifier memorizes them.
    """

    def __init__(
        self,
        store: EpisodeStore,
        clips: Sequence[Clip],
        spec: PreprocessConfig,
        cache_bytes: int = 2 << 30,
        max_shift: int = 0,
    ):
        if not clips:
            raise ValueError("no training clips")
        self.root = store.root
        self.clips = list(clips)
        self.spec = spec
        self.labels = np.asarray([c.label for c in self.clips], dtype=bool)
        episode_ids = sorted({c.episode_id for c in self.clips})
        self._metas = {i: store.meta(i) for i in episode_ids}
        channels = {m.cameras[spec.camera][2] for m in self._metas.values()}
        frame_bytes = spec.image_size * spec.image_size * max(channels)
        self._cache: dict[str, np.ndarray] = {}
        if sum(m.num_steps for m in self._metas.values()) * frame_bytes <= cache_bytes:
            for i in tqdm(episode_ids, desc="reading episodes", unit="ep", leave=False):
                arrays = load_episode(store, self._metas[i], [spec.camera], spec.image_size, action=False)
                self._cache[i] = arrays.frames[spec.camera]
        self.max_shift = max_shift
        self._store: EpisodeStore | None = None
        self._store_pid = -1

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.clips[index]
        idx = window_frame_indices(clip.end, self.spec.num_frames)
        cached = self._cache.get(clip.episode_id)
        frames = (
            cached[idx]
            if cached is not None
            else self._reader_store().episode(clip.episode_id).frames_at(self.spec.camera, idx)
        )
        pixels = preprocess(frames, self.spec)
        if self.max_shift > 0:
            pixels = random_shift(pixels, self.max_shift)
        return pixels, torch.tensor(float(clip.label))

    def _reader_store(self) -> EpisodeStore:
        if self._store is None or self._store_pid != os.getpid():  # one handle per DataLoader worker
            self._store = EpisodeStore.open(self.root, mode="r")
            self._store_pid = os.getpid()
        return self._store


def random_shift(pixels: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate a (T, C, H, W) clip by one random (dy, dx) in [-max_shift, max_shift]."""
    height, width = pixels.shape[-2:]
    padded = F.pad(pixels, (max_shift,) * 4, mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * max_shift + 1, (2,)))
    return padded[..., dy : dy + height, dx : dx + width]


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of exactly half positive, half negative clips.

    Each class is drawn from its own reshuffled cycle, so every positive is used once before any
    is repeated (positives are few: one per successful episode) and likewise for negatives.
    """

    def __init__(self, labels: Sequence[bool] | np.ndarray, batch_size: int, num_batches: int, seed: int = 0):
        labels = np.asarray(labels, dtype=bool)
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"a balanced batch needs an even batch size >= 2, got {batch_size}")
        self.positives = np.flatnonzero(labels)
        self.negatives = np.flatnonzero(~labels)
        if self.positives.size == 0 or self.negatives.size == 0:
            raise ValueError(
                f"class balancing needs positive and negative clips; got {self.positives.size} positive, "
                f"{self.negatives.size} negative"
            )
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)
        half = self.batch_size // 2
        pos = _cycle(self.positives, rng)
        neg = _cycle(self.negatives, rng)
        for _ in range(self.num_batches):
            batch = [next(pos) for _ in range(half)] + [next(neg) for _ in range(half)]
            yield [int(i) for i in rng.permutation(batch)]


def _cycle(indices: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    while True:
        yield from rng.permutation(indices).tolist()
