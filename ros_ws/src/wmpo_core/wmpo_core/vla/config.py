"""VLA configuration: the model (what goes into a checkpoint) and named recipes (model + SFT settings).

A recipe is a JSON file `{"model": {...}, "sft": {...}}`; `tiny` and `realistic` ship with the
package (`wmpo_core/vla/configs/`). Only the `model` part is stored in a checkpoint; the `sft`
part holds the trainer's defaults for that model size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

CONFIG_DIR = Path(__file__).parent / "configs"
IMAGE_PLACEHOLDER = "<image>"
"""Where the camera features go in `prompt_template` (not tokenized: features are spliced in)."""


class VLAConfigError(ValueError):
    """A VLA config or recipe that cannot be used; the message names the field."""


@dataclass(frozen=True)
class BackboneConfig:
    """Where the vision-language backbone comes from.

    `pretrained`: `transformers.AutoModel.from_pretrained(name_or_path)` (hub id or local dir) and
    its tokenizer. `from_config`: `AutoModel.from_config(config)` with random weights and a small
    byte-level BPE tokenizer built locally (`tokenizer_vocab_size`), so nothing is downloaded.
    """

    kind: Literal["pretrained", "from_config"]
    name_or_path: str | None = None
    config: dict[str, Any] | None = None
    tokenizer_vocab_size: int = 512

    def __post_init__(self) -> None:
        if self.kind == "pretrained" and not self.name_or_path:
            raise VLAConfigError(
                "backbone.kind 'pretrained' needs backbone.name_or_path (hub id or local directory)"
            )
        if self.kind == "from_config" and not isinstance(self.config, dict):
            raise VLAConfigError(
                "backbone.kind 'from_config' needs backbone.config (a transformers config mapping)"
            )
        if self.kind not in ("pretrained", "from_config"):
            raise VLAConfigError(f"backbone.kind must be 'pretrained' or 'from_config', got {self.kind!r}")


@dataclass(frozen=True)
class VLAConfig:
    """Everything that defines the VLA's architecture and its input/output layout."""

    backbone: BackboneConfig
    chunk_size: int = 8
    """K actions predicted per forward pass."""
    num_bins: int = 256
    """Uniform bins per action dimension over [-1, 1] (after q01/q99 normalization)."""
    image_size: int = 64
    """Side of the square image fed to the vision encoder; must equal the backbone's."""
    cameras: tuple[str, ...] | None = None
    """Robot-config cameras the policy sees, in order; None = the robot config's first camera."""
    use_state: bool = False
    """Feed the (q01/q99-normalized) joint state as one extra token after the image."""
    prompt_template: str = "<image>What action should the robot take to {instruction}?"
    max_suffix_tokens: int = 24
    """Text tokens after the image (instruction included) are padded to this fixed length."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    head_hidden_size: int | None = None
    """Hidden width of the action head MLP; None = the language model's hidden size."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise VLAConfigError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.num_bins < 2:
            raise VLAConfigError(f"num_bins must be >= 2, got {self.num_bins}")
        if self.image_size < 8:
            raise VLAConfigError(f"image_size must be >= 8, got {self.image_size}")
        if self.prompt_template.count(IMAGE_PLACEHOLDER) != 1:
            raise VLAConfigError(
                f"prompt_template must contain '{IMAGE_PLACEHOLDER}' exactly once: {self.prompt_template!r}"
            )
        if "{instruction}" not in self.prompt_template.split(IMAGE_PLACEHOLDER)[1]:
            raise VLAConfigError("prompt_template needs '{instruction}' after the image placeholder")
        if self.cameras is not None and len(self.cameras) == 0:
            raise VLAConfigError(
                "cameras must name at least one camera (or be null for the robot's first camera)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        if not isinstance(data, dict):
            raise VLAConfigError(f"a VLA model config is a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VLAConfigError(f"unknown VLA model config fields {unknown}; known: {sorted(known)}")
        if "backbone" not in data:
            raise VLAConfigError("VLA model config needs a 'backbone' section")
        values = dict(data)
        backbone = values.pop("backbone")
        if not isinstance(backbone, dict):
            raise VLAConfigError("'backbone' must be a mapping")
        bad = sorted(set(backbone) - {f.name for f in fields(BackboneConfig)})
        if bad:
            raise VLAConfigError(f"unknown backbone fields {bad}")
        for name in ("cameras", "image_mean", "image_std"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        try:
            return cls(backbone=BackboneConfig(**backbone), **values)
        except TypeError as exc:
            raise VLAConfigError(f"invalid VLA model config: {exc}") from None


@dataclass(frozen=True)
class SFTRecipeConfig:
    """Behaviour-cloning defaults that belong to a model size (overridable on the command line)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    augment_shift_px: int = 0
    """Random-shift augmentation (pad + random crop, in pixels of the model image)."""
    save_every: int = 500
    autocast_dtype: str | None = None
    """e.g. 'bfloat16' on a GPU; None trains in the model's dtype."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTRecipeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VLAConfigError(f"unknown sft settings {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class Recipe:
    name: str
    model: VLAConfig
    sft: SFTRecipeConfig = field(default_factory=SFTRecipeConfig)


def available_recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name ('tiny', 'realistic') or a JSON file path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise VLAConfigError(
                f"no VLA recipe named '{name_or_path}'; available: {available_recipes()} or a JSON file path"
            )
    if not path.is_file():
        raise VLAConfigError(f"{path}: VLA recipe file not found")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise VLAConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise VLAConfigError(
            f"{path}: a recipe is a JSON object with a 'model' section (and optionally 'sft')"
        )
    unknown = sorted(set(data) - {"model", "sft", "description"})
    if unknown:
        raise VLAConfigError(f"{path}: unknown recipe sections {unknown}")
    try:
        return Recipe(
            name=path.stem,
            model=VLAConfig.from_dict(data["model"]),
            sft=SFTRecipeConfig.from_dict(data.get("sft", {})),
        )
    except VLAConfigError as exc:
        raise VLAConfigError(f"{path}: {exc}") from None
