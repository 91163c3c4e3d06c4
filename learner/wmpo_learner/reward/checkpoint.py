"""Reward model checkpoints: a directory of JSON and safetensors, verified on load (no pickle).

<dir>/config.json          the transformers VideoMAEConfig
<dir>/model.safetensors    the weights
<dir>/reward_model.json    RewardModelMetadata: preprocessing, threshold and its validation
                           metrics, what it was trained on, sha256 of the two files above

The metadata file is the manifest of a `wmpo_core.checkpoint.CheckpointFormat`: written last,
and loading refuses symlinked entries, files that differ from their sha256 and weights that do
not fit the config (keys, shapes, dtypes) or are not finite.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import VideoMAEConfig, VideoMAEForVideoClassification
from wmpo_core.checkpoint import CheckpointError as BaseCheckpointError
from wmpo_core.checkpoint import CheckpointFormat

from wmpo_learner.reward.model import RewardModel
from wmpo_learner.reward.preprocessing import PreprocessConfig
from wmpo_learner.reward.threshold import EpisodeMetrics

FORMAT = "wmpo-reward-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "reward_model.json"


class CheckpointError(BaseCheckpointError, RuntimeError):
    """A reward model checkpoint is missing, malformed or does not match its recorded hashes."""


REWARD_FORMAT = CheckpointFormat(
    name=FORMAT,
    version=FORMAT_VERSION,
    manifest=METADATA_FILE,
    entries=(CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE),
    label="reward model checkpoint",
    error=CheckpointError,
)


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
    preprocessing: PreprocessConfig
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
    """Write the checkpoint; the metadata file is written last, so its presence means complete.
    Weights holding NaN or infinity are refused before anything is written."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()}
    REWARD_FORMAT.check_weights(state, state, source=f"{directory}: refusing to save")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA_FILE).unlink(missing_ok=True)
    model.classifier.config.to_json_file(directory / CONFIG_FILE)
    REWARD_FORMAT.save_tensors(directory / WEIGHTS_FILE, state, metadata={"format": FORMAT})
    meta = RewardModelMetadata(
        preprocessing=model.spec,
        threshold=model.threshold,
        validation=validation,
        training=training,
        sha256=REWARD_FORMAT.file_hashes(directory, (CONFIG_FILE, WEIGHTS_FILE)),
        created=_dt.datetime.now(_dt.UTC).isoformat(),
    )
    REWARD_FORMAT.write_manifest(directory, meta.model_dump(mode="json"))
    return meta


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return REWARD_FORMAT.is_checkpoint(path)


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
    """Load and verify: no symlinked entries, both files match their sha256, the weights fit the
    config exactly (keys, shapes, dtypes) and are finite."""
    directory = Path(directory)
    REWARD_FORMAT.check_entries(directory)
    meta = read_metadata(directory)
    REWARD_FORMAT.verify_file_hashes(
        directory, {name: meta.sha256.get(name, "") for name in (CONFIG_FILE, WEIGHTS_FILE)}
    )
    tensors, _ = REWARD_FORMAT.load_tensors(directory / WEIGHTS_FILE)
    try:
        config = VideoMAEConfig.from_json_file(directory / CONFIG_FILE)
        classifier = VideoMAEForVideoClassification(config)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{directory}: cannot build the reward model ({exc})") from exc
    REWARD_FORMAT.check_weights(tensors, classifier.state_dict(), source=str(directory))
    try:
        classifier.load_state_dict(tensors, strict=True)
        model = RewardModel(classifier, meta.preprocessing, threshold=meta.threshold)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{directory}: cannot build the reward model ({exc})") from exc
    return model.to(device).eval(), meta
