"""The reward model: VideoMAE with one success logit, and sliding-window detection.

One rule for training and scoring (the public WMPO code trained a 2-class softmax and scored it
with a sigmoid): the classifier outputs a single logit; training minimizes BCE-with-logits on it
(`success_loss`), scoring reads sigmoid(logit) (`success_probability`). The transformers config
carries `problem_type="multi_label_classification"`, so the model's own `labels=` loss is the
same BCE-with-logits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from wmpo_learner.reward.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    as_uint8_frames,
    preprocess,
)
from wmpo_learner.reward.windows import first_detection, window_ends, window_frame_indices

log = logging.getLogger(__name__)

NUM_FRAMES = 8
"""Clip length of the method (8 frames, as in the paper)."""
PROBLEM_TYPE = "multi_label_classification"
"""transformers' name for BCE-with-logits on each logit; with one label it is binary."""

PRESETS: dict[str, dict[str, int]] = {
    # Small enough to train on a CPU in minutes; for tests and CPU-scale experiments.
    "tiny": {
        "image_size": 64,
        "patch_size": 8,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    },
    # VideoMAE-base geometry, from scratch (prefer `from_pretrained("MCG-NJU/videomae-base")` on real data).
    "base": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}


def success_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Training loss: BCE-with-logits of the success logit (B,) against 0/1 labels (B,)."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def success_probability(logits: torch.Tensor) -> torch.Tensor:
    """Scoring: the probability of success that `success_loss` trains, sigmoid(logit)."""
    return torch.sigmoid(logits)


def videomae_config(preset: str, num_frames: int = NUM_FRAMES) -> VideoMAEConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown reward model preset '{preset}' (choose from {sorted(PRESETS)})")
    return VideoMAEConfig(
        **PRESETS[preset], num_frames=num_frames, tubelet_size=2, num_labels=1, problem_type=PROBLEM_TYPE
    )


class Detection(NamedTuple):
    """Result of sliding-window detection on one episode."""

    success: bool
    finish_step: int | None
    """End step (inclusive frame index) of the first window at or above the threshold."""
    scores: np.ndarray
    """Success probability of every stride-1 window; scores[i] belongs to the window ending at
    `windows.window_ends(T, num_frames)[i]` (= num_frames - 1 + i when T >= num_frames)."""


class RewardModel(nn.Module):
    """A VideoMAE classifier with its preprocessing and its decision threshold."""

    def __init__(
        self, classifier: VideoMAEForVideoClassification, spec: PreprocessConfig, threshold: float = 0.5
    ):
        super().__init__()
        config = classifier.config
        problems = []
        if config.num_labels != 1:
            problems.append(f"num_labels={config.num_labels} (needs 1: a single success logit)")
        if config.problem_type != PROBLEM_TYPE:
            problems.append(f"problem_type={config.problem_type!r} (needs {PROBLEM_TYPE!r})")
        if config.num_frames != spec.num_frames:
            problems.append(f"num_frames={config.num_frames} but preprocessing uses {spec.num_frames}")
        if config.image_size != spec.image_size:
            problems.append(f"image_size={config.image_size} but preprocessing uses {spec.image_size}")
        if config.num_channels != 3:
            problems.append(f"num_channels={config.num_channels} (needs 3)")
        if problems:
            raise ValueError("reward model config is inconsistent: " + "; ".join(problems))
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
        self.classifier = classifier
        self.spec = spec
        self.threshold = float(threshold)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_preset(cls, preset: str, camera: str, num_frames: int = NUM_FRAMES) -> RewardModel:
        """A randomly initialized model of a named size (`PRESETS`)."""
        config = videomae_config(preset, num_frames)
        spec = PreprocessConfig(camera=camera, image_size=config.image_size, num_frames=num_frames)
        return cls(VideoMAEForVideoClassification(config), spec)

    @classmethod
    def from_pretrained(cls, name_or_path: str, camera: str, num_frames: int = NUM_FRAMES) -> RewardModel:
        """Start from a pretrained VideoMAE (hub id or local directory); a fresh 1-logit head."""
        classifier = VideoMAEForVideoClassification.from_pretrained(
            name_or_path,
            num_labels=1,
            num_frames=num_frames,
            problem_type=PROBLEM_TYPE,
            ignore_mismatched_sizes=True,
        )
        mean, std = _pretrained_normalization(name_or_path)
        image_size = classifier.config.image_size
        spec = PreprocessConfig(
            camera=camera, image_size=image_size, num_frames=num_frames, mean=mean, std=std
        )
        return cls(classifier, spec)

    # ------------------------------------------------------------------ the one rule

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, num_frames, 3, S, S) preprocessed clips -> (B,) success logits."""
        return self.classifier(pixel_values=pixel_values).logits[:, 0]

    @torch.inference_mode()
    def clip_probabilities(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, num_frames, H, W, C) uint8 clips -> (B,) success probabilities (no gradient)."""
        pixels = preprocess(clips, self.spec).to(self.device)
        return success_probability(self(pixels))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ detection

    def score_windows(
        self,
        episodes: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
        lengths: Sequence[int] | None = None,
        batch_size: int = 64,
    ) -> list[np.ndarray]:
        """Success probability of every stride-1 window of every episode (see `Detection.scores`).

        `episodes`: one (N, T, H, W, C) uint8 array/tensor, or a sequence of (T_i, H, W, C) ones.
        `lengths`: use only the first lengths[i] frames of episode i (padded batches).
        """
        return self._score(_episode_list(episodes, lengths), batch_size)

    def detect_batch(
        self,
        episodes: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
        lengths: Sequence[int] | None = None,
        threshold: float | None = None,
        batch_size: int = 64,
    ) -> list[Detection]:
        """`detect` for many episodes at once (imagined rollouts in GRPO, relabelling).

        Windows of different episodes share forward batches of `batch_size` clips, so hundreds of
        short imagined episodes cost what their total number of windows costs.
        """
        threshold = self.threshold if threshold is None else float(threshold)
        frames = _episode_list(episodes, lengths)
        detections = []
        for episode, scores in zip(frames, self._score(frames, batch_size), strict=True):
            success, finish = first_detection(
                scores, window_ends(len(episode), self.spec.num_frames), threshold
            )
            detections.append(Detection(success, finish, scores))
        return detections

    def detect(
        self,
        frames: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
        threshold: float | None = None,
        batch_size: int = 64,
    ) -> Detection | list[Detection]:
        """Sliding-window success detection: (success, finish_step, scores).

        `frames`: one episode (T, H, W, C) uint8 -> a `Detection`; or a batch, (N, T, H, W, C) or a
        sequence of episodes -> a list of `Detection`. Success iff any stride-1 window scores at
        or above `threshold` (default: the checkpoint's); finish_step = end step of the first one.
        Episodes shorter than one window are padded at the start by repeating the first frame.
        """
        single = not isinstance(frames, Sequence) and np.ndim(frames) == 4
        detections = self.detect_batch(
            [frames] if single else frames, threshold=threshold, batch_size=batch_size
        )
        return detections[0] if single else detections

    @torch.inference_mode()
    def _score(self, frames: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.spec.num_frames
        was_training = self.training
        self.eval()
        scores = [np.empty(len(window_ends(len(f), n)), dtype=np.float32) for f in frames]
        for batch in _window_batches([len(f) for f in frames], n, batch_size):
            clips = []
            for ep, first, last in batch:  # the windows ending at first..last of episode ep
                lo = max(0, first - n + 1)
                pixels = preprocess(
                    frames[ep][lo : last + 1], self.spec
                )  # only the frames these windows cover
                idx = np.stack([window_frame_indices(e, n) - lo for e in range(first, last + 1)])
                clips.append(pixels[torch.from_numpy(idx)])
            probs = success_probability(self(torch.cat(clips).to(self.device))).float().cpu().numpy()
            offset = 0
            for ep, first, last in batch:
                count = last - first + 1
                position = first - (min(n, len(frames[ep])) - 1)  # index of window `first` in scores[ep]
                scores[ep][position : position + count] = probs[offset : offset + count]
                offset += count
        self.train(was_training)
        return scores


def _episode_list(
    episodes: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor, lengths: Sequence[int] | None
) -> list[np.ndarray]:
    if isinstance(episodes, (np.ndarray, torch.Tensor)):
        if episodes.ndim != 5:
            raise ValueError(f"a batch of episodes is (N, T, H, W, C), got shape {tuple(episodes.shape)}")
        episodes = list(episodes)
    frames = [as_uint8_frames(e) for e in episodes]
    for i, f in enumerate(frames):
        if f.ndim != 4:
            raise ValueError(f"episode {i}: expected (T, H, W, C) frames, got shape {f.shape}")
    if lengths is not None:
        if len(lengths) != len(frames):
            raise ValueError(f"{len(lengths)} lengths for {len(frames)} episodes")
        for i, (f, length) in enumerate(zip(frames, lengths, strict=True)):
            if not 1 <= length <= len(f):
                raise ValueError(f"episode {i}: length {length} outside [1, {len(f)}]")
        frames = [f[:length] for f, length in zip(frames, lengths, strict=True)]
    for i, f in enumerate(frames):
        if len(f) == 0:
            raise ValueError(f"episode {i} has no frames")
    return frames


def _window_batches(
    num_steps: list[int], num_frames: int, batch_size: int
) -> Iterator[list[tuple[int, int, int]]]:
    """Pack all windows of all episodes into batches of `batch_size`, in order.

    Yields lists of (episode, first_end, last_end): runs of consecutive windows of one episode.
    """
    batch: list[tuple[int, int, int]] = []
    room = batch_size
    for ep, steps in enumerate(num_steps):
        ends = window_ends(steps, num_frames)
        first, last = int(ends[0]), int(ends[-1])
        while first <= last:
            take = min(room, last - first + 1)
            batch.append((ep, first, first + take - 1))
            first += take
            room -= take
            if room == 0:
                yield batch
                batch, room = [], batch_size
    if batch:
        yield batch


def _pretrained_normalization(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pixel statistics a pretrained VideoMAE expects, from its image processor config."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
        return tuple(processor.image_mean), tuple(processor.image_std)
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: no image processor config (%s); using the ImageNet statistics", name_or_path, exc)
        return IMAGENET_MEAN, IMAGENET_STD
