"""Reward model checkpoints: a directory of JSON and safetensors, verified on load (no pickle).

<dir>/config.json          the transformers VideoMAEConfig
<dir>/model.safetensors    the weights
<dir>/reward_model.json    RewardModelMetadata: preprocessing, threshold and its validation
                           metrics, what it was trained on, sha256 of the two files above
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from transformers import VideoMAEConfig, VideoMAEForVideoClassification
from wmpo_core.durable import atomic_write_json, file_sha256

from wmpo_learner.reward.model import RewardModel
from wmpo_learner.reward.preprocessing import PreprocessSpec
from wmpo_learner.reward.threshold import EpisodeMetrics

FORMAT = "wmpo-reward-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "reward_model.json"


class CheckpointError(RuntimeError):
    """A reward model checkpoint is missing, malformed or does not match its recorded hashes."""


class Validation(BaseModel):
    """How the threshold was chosen and how well it does on the held-out episodes."""

    model_config = ConfigDict(extra="forbid")

    metrics: EpisodeMetrics
    """Episode-level metrics at the chosen threshold, on the held-out episodes it was chosen on."""
    metrics_at_half: EpisodeMetrics
    """The same episodes at the untuned threshold 0.5 (no selection on them: an unbiased number)."""
    finish_steps_early: float | None
    """Mean number of steps between detection (finish step) and the last frame, over the
    held-out successful episodes detected at the chosen threshold."""
    episodes: list[str]
    max_scores: list[float]
    """Highest window score of each held-out episode (same order): the sweep can be redone."""


class TrainingRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    init: str
    """'preset:<name>', a pretrained VideoMAE id/path, or 'checkpoint:<dir>'."""
    store: str
    robot_config_name: str
    robot_config_hash: str
    episodes: list[str]
    """Every episode this model's weights have seen, including those of the checkpoint it continued."""
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    exclude_overlapping_negatives: bool
    seconds: float


class RewardModelMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["wmpo-reward-model"] = FORMAT
    format_version: int = FORMAT_VERSION
    scoring: Literal["sigmoid(logit); trained with BCE-with-logits"] = (
        "sigmoid(logit); trained with BCE-with-logits"
    )
    preprocessing: PreprocessSpec
    threshold: float = Field(ge=0.0, le=1.0)
    validation: Validation | None = None
    training: TrainingRecord | None = None
    sha256: dict[str, str]
    created: str


def save_checkpoint(
    model: RewardModel,
    directory: str | os.PathLike[str],
    validation: Validation | None = None,
    training: TrainingRecord | None = None,
) -> RewardModelMetadata:
    """Write the checkpoint; the metadata file is written last, so its presence means complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA_FILE).unlink(missing_ok=True)
    model.classifier.config.to_json_file(directory / CONFIG_FILE)
    state = {k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE, metadata={"format": FORMAT})
    meta = RewardModelMetadata(
        preprocessing=model.spec,
        threshold=model.threshold,
        validation=validation,
        training=training,
        sha256={name: file_sha256(directory / name) for name in (CONFIG_FILE, WEIGHTS_FILE)},
        created=_dt.datetime.now(_dt.UTC).isoformat(),
    )
    atomic_write_json(directory / METADATA_FILE, meta.model_dump(mode="json"))
    return meta


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def read_metadata(directory: str | os.PathLike[str]) -> RewardModelMetadata:
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a reward model checkpoint (no {METADATA_FILE})")
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if isinstance(raw, dict) and raw.get("format_version") not in (None, FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: format version {raw.get('format_version')!r}; this version reads {FORMAT_VERSION}"
        )
    try:
        return RewardModelMetadata.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise CheckpointError(
            f"{path}: invalid metadata at {'.'.join(map(str, err['loc']))}: {err['msg']}"
        ) from None


def load_checkpoint(
    directory: str | os.PathLike[str], device: str = "cpu"
) -> tuple[RewardModel, RewardModelMetadata]:
    """Load and verify: both files must match their sha256 and the weights the config exactly."""
    directory = Path(directory)
    meta = read_metadata(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: {name} is missing")
        expected = meta.sha256.get(name)
        actual = file_sha256(path)
        if expected != actual:
            raise CheckpointError(
                f"{path}: sha256 {actual} does not match the recorded {expected}; refusing to load"
            )
    try:
        config = VideoMAEConfig.from_json_file(directory / CONFIG_FILE)
        classifier = VideoMAEForVideoClassification(config)
        classifier.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
        model = RewardModel(classifier, meta.preprocessing, threshold=meta.threshold)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{directory}: cannot build the reward model ({exc})") from exc
    return model.to(device).eval(), meta
