"""The VLA checkpoint: a directory of safetensors + JSON (no pickle), verified on every load.

    <ckpt>/manifest.json        format, version, parent_version, created, the robot config it was
                                trained for (name, content hash, action/joint/camera layout),
                                tensors_sha256, free-form provenance (data, world model, ...)
    <ckpt>/vla_config.json      wmpo_core.vla.config.VLAConfig (architecture, I/O layout)
    <ckpt>/backbone/config.json the transformers config of the vision-language backbone
    <ckpt>/tokenizer/           the text tokenizer (tokenizer.json, tokenizer_config.json, ...)
    <ckpt>/normalization.json   {"action": {"q01", "q99"}, "state": {...} | null}
    <ckpt>/model.safetensors    every weight; header metadata: format, version, parent_version,
                                tensors_sha256, normalization_sha256, config_sha256

Loading refuses (CheckpointError, a PolicyLoadError) a checkpoint that holds a symlink or a
non-regular file among its entries (nothing outside the directory is ever read), whose tensors,
statistics or config files do not match the hashes in the metadata, whose metadata disagrees with
the manifest, whose weights miss or add keys, change shapes or dtypes, or hold a NaN or an
infinity, or whose robot layout (name, action dims, joints, cameras) differs from the robot config
it is loaded for. Saving refuses non-finite weights and weights whose dtype differs from the model
the loader would rebuild from the saved config, so a diverged run never writes a checkpoint.
Anything else in the directory (e.g. a trainer's `training/` state) is not part of the policy and
is ignored.

The manifest, entry, hash and weight checks are `wmpo_core.checkpoint`'s, shared with the world
model and reward model checkpoints; the robot layout check is this format's own.

Importing this module registers the format with `wmpo_core.policy.load_policy`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wmpo_core.checkpoint import CheckpointError as BaseCheckpointError
from wmpo_core.checkpoint import CheckpointFormat, canonical_json, tensors_sha256
from wmpo_core.devices import choose_device
from wmpo_core.durable import atomic_write_json, tagged_sha256
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.policy import PolicyLoadError, register_directory_format
from wmpo_core.robot_config import RobotConfig
from wmpo_core.vla.config import VLAConfig, VLAConfigError
from wmpo_core.vla.model import VLA
from wmpo_core.vla.policy import VLAPolicy

FORMAT = "wmpo-vla"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CONFIG = "vla_config.json"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
NORMALIZATION = "normalization.json"
CHECKPOINT_ENTRIES = (MANIFEST, WEIGHTS, CONFIG, BACKBONE_DIR, TOKENIZER_DIR, NORMALIZATION)
"""The files and directories that make up the policy (what to copy when shipping it)."""


class CheckpointError(BaseCheckpointError, PolicyLoadError):
    """A VLA checkpoint that is missing, damaged, tampered with or made for another robot."""


VLA_FORMAT = CheckpointFormat(
    name=FORMAT,
    version=FORMAT_VERSION,
    manifest=MANIFEST,
    entries=CHECKPOINT_ENTRIES,
    label="VLA checkpoint",
    error=CheckpointError,
)


def _rebuild(
    config: VLAConfig, backbone_config: Any, tokenizer: Any, normalization: Mapping[str, Any]
) -> VLA:
    """The model these configs describe, with fresh weights, as the loader builds it (on the
    current default device: under `torch.device("meta")` only shapes and dtypes, no memory)."""
    from transformers import AutoModel  # seconds to import: only when a model is built, as in vla.model

    action_norm = ActionNormalizer.from_dict(normalization["action"])
    state_norm = ActionNormalizer.from_dict(normalization["state"]) if normalization.get("state") else None
    return VLA(config, AutoModel.from_config(backbone_config), tokenizer, action_norm, state_norm)


def _config_files(root: Path) -> list[Path]:
    files = [
        root / CONFIG,
        *sorted((root / BACKBONE_DIR).rglob("*")),
        *sorted((root / TOKENIZER_DIR).rglob("*")),
    ]
    return [f for f in files if f.is_file()]


def config_sha256(root: Path) -> str:
    """Hash of the config and tokenizer files (relative names and bytes)."""
    digest = hashlib.sha256()
    for path in _config_files(root):
        digest.update(canonical_json(str(path.relative_to(root))))
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()


def _normalization_dict(model: VLA) -> dict[str, Any]:
    state = model.state_normalizer.to_dict() if model.state_normalizer is not None else None
    return {"action": model.action_tokenizer.normalizer.to_dict(), "state": state}


def robot_layout(robot_config: RobotConfig, model: VLA) -> dict[str, Any]:
    """What of the robot config the weights depend on; checked on every load."""
    return {
        "name": robot_config.name,
        "content_hash": robot_config.content_hash,
        "action_space": robot_config.action.space,
        "action_names": robot_config.action.names,
        "action_kinds": [d.kind for d in robot_config.action.dims],
        "joint_names": robot_config.joint_names,
        "cameras": list(model.cameras),
        "uses_state": model.state_normalizer is not None,
    }


def _replace_dir(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def save_checkpoint(
    model: VLA,
    path: str | os.PathLike[str],
    robot_config: RobotConfig,
    version: str | None = None,
    parent_version: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    version_prefix: str = "vla",
) -> dict[str, Any]:
    """Write `model` as a checkpoint directory (created or overwritten); returns the manifest.

    `version` defaults to '<version_prefix>-<first 12 hex of the tensor hash>', unique per weights.
    The manifest is written last, so a save interrupted half-way leaves a directory that fails
    verification, never a wrong policy.
    """
    root = Path(path)
    # Checked first: a model that does not fit the robot, or whose weights are not finite or not of
    # the dtypes the loader rebuilds, is never written (and an existing checkpoint there is untouched).
    layout = robot_layout(robot_config, model)
    _check_robot(layout, robot_config, model, source=str(root))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    normalization = _normalization_dict(model)
    with torch.device("meta"):  # what load_checkpoint will rebuild: shapes and dtypes, no memory
        reference = _rebuild(model.config, model.backbone.config, model.tokenizer, normalization).state_dict()
    VLA_FORMAT.check_weights(tensors, reference, source=f"{root}: refusing to save")
    root.mkdir(parents=True, exist_ok=True)
    tensor_hash = tensors_sha256(tensors)
    version = version or f"{version_prefix}-{tensor_hash.split(':')[1][:12]}"

    atomic_write_json(root / CONFIG, model.config.to_dict(), sort_keys=True)
    tmp = root / (BACKBONE_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.backbone.config.save_pretrained(tmp)
    _replace_dir(tmp, root / BACKBONE_DIR)
    tmp = root / (TOKENIZER_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, root / TOKENIZER_DIR)
    atomic_write_json(root / NORMALIZATION, normalization, sort_keys=True)

    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "version": version,
        "parent_version": parent_version or "",
        "tensors_sha256": tensor_hash,
        "normalization_sha256": tagged_sha256(canonical_json(normalization)),
        "config_sha256": config_sha256(root),
    }
    VLA_FORMAT.save_tensors(root / WEIGHTS, tensors, metadata)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "parent_version": parent_version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(),
        "robot": layout,
        "chunk_size": model.chunk_size,
        "action_dim": model.action_dim,
        "num_bins": model.num_bins,
        "tensors_sha256": tensor_hash,
        "provenance": dict(provenance or {}),
    }
    VLA_FORMAT.write_manifest(root, manifest)
    model.version, model.parent_version = version, parent_version
    return manifest


def is_vla_checkpoint(path: Path) -> bool:
    return VLA_FORMAT.is_checkpoint(path)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    return VLA_FORMAT.read_manifest(path)


def update_provenance(path: str | os.PathLike[str], **entries: Any) -> dict[str, Any]:
    """Add entries to a checkpoint's free-form provenance (not covered by the weight hashes)."""
    root = Path(path)
    manifest = read_manifest(root)
    manifest["provenance"] = {**manifest.get("provenance", {}), **entries}
    VLA_FORMAT.write_manifest(root, manifest)
    return manifest


def load_checkpoint(
    path: str | os.PathLike[str],
    robot_config: RobotConfig | None,
    device: str | torch.device = "cpu",
) -> VLA:
    """Load and verify a checkpoint for `robot_config` (None skips only the robot check, for tools
    that inspect checkpoints). The model is returned in eval mode with `version` set."""
    root = Path(path)
    VLA_FORMAT.check_entries(root)
    manifest = read_manifest(root)
    VLA_FORMAT.check_complete(root)
    tensors, metadata = VLA_FORMAT.load_tensors(root / WEIGHTS)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{root}/{WEIGHTS}: metadata does not identify a '{FORMAT}' checkpoint")
    for key, expected in (
        ("version", manifest.get("version")),
        ("parent_version", manifest.get("parent_version") or ""),
    ):
        if metadata.get(key) != expected:
            raise CheckpointError(
                f"{root}: {WEIGHTS} metadata says {key}={metadata.get(key)!r} but {MANIFEST} says "
                f"{expected!r}"
            )
    if metadata.get("tensors_sha256") != manifest.get("tensors_sha256"):
        raise CheckpointError(f"{root}: tensor hash in {WEIGHTS} metadata differs from {MANIFEST}")
    actual = tensors_sha256(tensors)
    if actual != metadata.get("tensors_sha256"):
        raise CheckpointError(
            f"{root}/{WEIGHTS}: weights do not match their recorded sha256 (recorded "
            f"{metadata.get('tensors_sha256')}, "
            f"actual {actual}); the file is damaged or was modified"
        )
    try:
        normalization = json.loads((root / NORMALIZATION).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root}/{NORMALIZATION}: unreadable ({exc})") from None
    if tagged_sha256(canonical_json(normalization)) != metadata.get("normalization_sha256"):
        raise CheckpointError(
            f"{root}/{NORMALIZATION}: statistics do not match the hash recorded with the weights; "
            "the policy would decode actions with statistics it was not trained with"
        )
    if config_sha256(root) != metadata.get("config_sha256"):
        raise CheckpointError(
            f"{root}: {CONFIG}, {BACKBONE_DIR}/ or {TOKENIZER_DIR}/ differ from what was saved with the "
            "weights"
        )

    from transformers import AutoConfig, AutoTokenizer  # seconds to import: only when loading

    try:
        config = VLAConfig.from_dict(json.loads((root / CONFIG).read_text()))
        model = _rebuild(
            config,
            AutoConfig.from_pretrained(root / BACKBONE_DIR),
            AutoTokenizer.from_pretrained(root / TOKENIZER_DIR),
            normalization,
        )
    except (VLAConfigError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{root}: cannot rebuild the model from its config ({exc})") from None
    if robot_config is not None:
        _check_robot(manifest.get("robot") or {}, robot_config, model, source=str(root))
    VLA_FORMAT.check_weights(tensors, model.state_dict(), source=str(root))
    model.load_state_dict(tensors, strict=True)
    model.version = str(manifest["version"])
    model.parent_version = manifest.get("parent_version")
    return model.to(device).eval()


def _check_robot(layout: Mapping[str, Any], robot_config: RobotConfig, model: VLA, source: str) -> None:
    """Refuse a checkpoint whose inputs/outputs do not fit `robot_config`, saying exactly why."""
    trained_for = layout.get("name")
    if trained_for != robot_config.name:
        raise CheckpointError(
            f"{source}: policy was trained for robot config '{trained_for}', refusing to run it on "
            f"'{robot_config.name}'"
        )
    problems = []
    if layout.get("action_names") != robot_config.action.names or model.action_dim != robot_config.action.dim:
        problems.append(
            f"action dims: checkpoint {layout.get('action_names')} ({model.action_dim}), robot "
            f"{robot_config.action.names}"
        )
    kinds = [d.kind for d in robot_config.action.dims]
    if layout.get("action_space") != robot_config.action.space or layout.get("action_kinds") != kinds:
        problems.append(
            f"action space: checkpoint {layout.get('action_space')} {layout.get('action_kinds')}, "
            f"robot {robot_config.action.space} {kinds}"
        )
    for camera in model.cameras:
        if camera not in robot_config.camera_names:
            problems.append(
                f"camera '{camera}' used by the policy is not in the robot config "
                f"({robot_config.camera_names})"
            )
        elif robot_config.camera(camera).channels != 3:
            problems.append(f"camera '{camera}' is not RGB in the robot config")
    if model.state_normalizer is not None and (
        layout.get("joint_names") != robot_config.joint_names
        or model.state_normalizer.dim != len(robot_config.joints)
    ):
        problems.append(f"joints: checkpoint {layout.get('joint_names')}, robot {robot_config.joint_names}")
    if problems:
        raise CheckpointError(
            f"{source}: policy does not fit robot config '{robot_config.name}': " + "; ".join(problems)
        )
    if layout.get("content_hash") != robot_config.content_hash:
        warnings.warn(
            f"{source}: robot config '{robot_config.name}' changed since this policy was trained "
            f"({layout.get('content_hash')} -> {robot_config.content_hash}); its action and camera layout "
            "still match",
            stacklevel=3,
        )


def _load_policy(path: str, robot_config: RobotConfig):
    return VLAPolicy(load_checkpoint(path, robot_config, device=choose_device()), robot_config)


register_directory_format(is_vla_checkpoint, _load_policy)
