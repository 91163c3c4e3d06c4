"""Train the reward model on stored episodes, then choose its threshold on held-out episodes.

Readable top to bottom: split episodes -> labelled clips -> class-balanced batches -> AdamW on
BCE-with-logits -> score every window of the held-out episodes -> best-F1 threshold -> save.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from wmpo_core.episode_arrays import load_episode
from wmpo_core.episode_store import EpisodeStore
from wmpo_core.robot_config import RobotConfig

from wmpo_learner.reward.checkpoint import RewardModelMetadata, TrainingRecord, Validation, save_checkpoint
from wmpo_learner.reward.dataset import (
    BalancedBatchSampler,
    ClipDataset,
    episode_clips,
    labelled_episodes,
    split_episodes,
)
from wmpo_learner.reward.model import RewardModel, success_loss, success_probability
from wmpo_learner.reward.threshold import episode_metrics, select_threshold

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)


@dataclass
class RewardTrainConfig:
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    holdout_fraction: float = 0.25
    seed: int = 0
    exclude_overlapping_negatives: bool = True
    max_shift_fraction: float = 1 / 16
    """Random translation of training clips, as a fraction of the input size (4 px at 64); 0 = none."""
    num_workers: int = 0
    eval_batch_size: int = 64
    log_every: int = 10


def score_stored_episodes(
    model: RewardModel, store: EpisodeStore, episode_ids: Sequence[str], batch_size: int = 64, group: int = 16
) -> list[np.ndarray]:
    """Window scores of stored episodes, `group` episodes at a time.

    Frames are resized to the model's input size as they are read (to bound memory with
    full-resolution cameras); `preprocess` leaves frames of that size unchanged, so the scores
    are the same as scoring the stored frames directly.
    """
    scores: list[np.ndarray] = []
    for start in tqdm(range(0, len(episode_ids), group), desc="scoring episodes", unit="group", leave=False):
        camera, size = model.spec.camera, model.spec.image_size
        frames = [
            load_episode(store, i, [camera], size, action=False).frames[camera]
            for i in episode_ids[start : start + group]
        ]
        scores += model.score_windows(frames, batch_size=batch_size)
    return scores


def train_reward_model(
    model: RewardModel,
    store: EpisodeStore,
    robot: RobotConfig,
    settings: RewardTrainConfig,
    out_dir: str,
    init: str,
    already_trained_on: Sequence[str] = (),
    writer: SummaryWriter | None = None,
) -> RewardModelMetadata:
    """Train `model` in place, choose its threshold, save it to `out_dir`; returns the metadata.

    `already_trained_on`: episodes the initial weights have seen (continuing a checkpoint); they
    are never held out. `writer`: an optional TensorBoard SummaryWriter.
    """
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    spec = model.spec
    metas = labelled_episodes(store, robot.name, spec.camera)
    train_ids, holdout_ids = split_episodes(
        metas, settings.holdout_fraction, settings.seed, already_trained_on
    )
    by_id = {m.episode_id: m for m in metas}
    log.info(
        "%d labelled episodes: %d for training, %d held out for the threshold",
        len(metas),
        len(train_ids),
        len(holdout_ids),
    )

    started = time.monotonic()
    if settings.steps > 0:
        clips = [
            clip
            for i in train_ids
            for clip in episode_clips(
                i,
                by_id[i].num_steps,
                bool(by_id[i].success),
                spec.num_frames,
                settings.exclude_overlapping_negatives,
            )
        ]
        dataset = ClipDataset(
            store, clips, spec, max_shift=round(settings.max_shift_fraction * spec.image_size)
        )
        sampler = BalancedBatchSampler(
            dataset.labels, settings.batch_size, settings.steps, seed=settings.seed
        )
        log.info("%d training clips (%d positive)", len(clips), int(dataset.labels.sum()))
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=settings.num_workers)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        model.train()
        progress = tqdm(loader, total=settings.steps, desc="training reward model", unit="step")
        for step, (pixels, labels) in enumerate(progress, start=1):
            pixels, labels = pixels.to(model.device), labels.to(model.device)
            logits = model(pixels)
            loss = success_loss(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % settings.log_every == 0 or step == settings.steps:
                accuracy = ((success_probability(logits) >= 0.5) == labels.bool()).float().mean().item()
                progress.set_postfix(loss=f"{loss.item():.4f}", acc=f"{accuracy:.2f}")
                if writer is not None:
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/clip_accuracy", accuracy, step)
    train_seconds = time.monotonic() - started

    holdout_scores = score_stored_episodes(model, store, holdout_ids, batch_size=settings.eval_batch_size)
    max_scores = np.asarray([s.max() for s in holdout_scores])
    truth = np.asarray([bool(by_id[i].success) for i in holdout_ids])
    chosen, _ = select_threshold(max_scores, truth)
    model.threshold = chosen.threshold
    early = [
        len(s) - 1 - int(np.argmax(s >= chosen.threshold))  # windows end at the last frame for the last score
        for s, positive in zip(holdout_scores, truth, strict=True)
        if positive and s.max() >= chosen.threshold
    ]
    validation = Validation(
        metrics=chosen,
        finish_steps_early=float(np.mean(early)) if early else None,
        metrics_at_half=episode_metrics(max_scores, truth, 0.5),
        episodes=holdout_ids,
        max_scores=[round(float(v), 6) for v in max_scores],
    )
    if writer is not None:
        for name in ("precision", "recall", "f1"):
            writer.add_scalar(f"holdout/{name}", getattr(chosen, name), settings.steps)
        writer.add_scalar("holdout/threshold", chosen.threshold, settings.steps)
        writer.add_pr_curve("holdout/episode_max_score", truth, max_scores, settings.steps)
        writer.flush()
    record = TrainingRecord(
        init=init,
        store=str(store.root),
        robot_config_name=robot.name,
        robot_config_hash=robot.content_hash,
        episodes=sorted(set(already_trained_on) | (set(train_ids) if settings.steps > 0 else set())),
        steps=settings.steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        exclude_overlapping_negatives=settings.exclude_overlapping_negatives,
        seconds=round(train_seconds, 1),
    )
    return save_checkpoint(model.eval(), out_dir, validation=validation, training=record)
