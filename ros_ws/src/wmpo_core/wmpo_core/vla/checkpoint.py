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

Importing this module registers the format with `wmpo_core.policy.load_policy`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wmpo_core.devices import choose_device
from wmpo_core.durable import atomic_write_json, tagged_sha256
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.policy import PolicyLoadError, register_directory_format
from wmpo_core.robot_config import RobotConfig
from wmpo_core.vla.config import VLAConfig, VLAConfigError
from wmpo_core.vla.model import VLA

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


class CheckpointError(PolicyLoadError):
    """A VLA checkpoint that is missing, damaged, tampered with or made for another robot."""


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and raw bytes of every tensor, in sorted-name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(_canonical([name, str(tensor.dtype), list(tensor.shape)]))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return "sha256:" + digest.hexdigest()


def check_weights(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> None:
    """Refuse weights that do not fit the model: missing or unexpected keys, other shapes, other
    dtypes (load_state_dict would cast int8 or float16 silently), NaN or infinite values."""
    missing_keys = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    common = sorted(set(expected) & set(tensors))
    bad_shapes = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in common
        if tensors[k].shape != expected[k].shape
    ]
    bad_dtypes = [
        f"{k}: stored as {tensors[k].dtype}, model has {expected[k].dtype}"
        for k in common
        if tensors[k].dtype != expected[k].dtype
    ]
    non_finite = [
        k
        for k in common
        if (tensors[k].is_floating_point() or tensors[k].is_complex())
        and not bool(torch.isfinite(tensors[k]).all())
    ]
    parts = []
    if missing_keys:
        parts.append(f"missing {len(missing_keys)} weights (e.g. {missing_keys[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[:3]})")
    if bad_shapes:
        parts.append(f"{len(bad_shapes)} shape mismatches (e.g. {bad_shapes[:3]})")
    if bad_dtypes:
        parts.append(f"{len(bad_dtypes)} dtype mismatches (e.g. {bad_dtypes[:3]})")
    if non_finite:
        parts.append(f"{len(non_finite)} tensors hold NaN or infinite values (e.g. {non_finite[:3]})")
    if parts:
        raise CheckpointError(
            f"{source}: weights do not fit the model its config describes: " + "; ".join(parts)
        )


def check_entries(root: Path) -> None:
    """Refuse a checkpoint whose policy entries are, or contain, symlinks or non-regular files:
    loading reads only regular files that really are inside `root`."""
    base = root.resolve()
    for entry in CHECKPOINT_ENTRIES:
        top = root / entry
        paths = [top]
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirnames, filenames in os.walk(top):  # does not follow symlinked directories
                paths += [Path(dirpath) / name for name in dirnames + filenames]
        for path in paths:
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # a missing entry is reported as such by the caller
            if stat.S_ISLNK(mode):
                raise CheckpointError(
                    f"{path}: is a symlink (to {os.readlink(path)}); a checkpoint must hold its own files"
                )
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or not path.resolve().is_relative_to(base):
                raise CheckpointError(f"{path}: not a regular file inside the checkpoint directory")


def _rebuild(
    config: VLAConfig, backbone_config: Any, tokenizer: Any, normalization: Mapping[str, Any]
) -> VLA:
    """The model these configs describe, with fresh weights, as the loader builds it (on the
    current default device: under `torch.device("meta")` only shapes and dtypes, no memory)."""
    from transformers import AutoModel

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
        digest.update(_canonical(str(path.relative_to(root))))
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
    from safetensors.torch import save_file

    root = Path(path)
    # Checked first: a model that does not fit the robot, or whose weights are not finite or not of
    # the dtypes the loader rebuilds, is never written (and an existing checkpoint there is untouched).
    layout = robot_layout(robot_config, model)
    _check_robot(layout, robot_config, model, source=str(root))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    normalization = _normalization_dict(model)
    with torch.device("meta"):  # what load_checkpoint will rebuild: shapes and dtypes, no memory
        reference = _rebuild(model.config, model.backbone.config, model.tokenizer, normalization).state_dict()
    check_weights(tensors, reference, source=f"{root}: refusing to save")
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
        "normalization_sha256": tagged_sha256(_canonical(normalization)),
        "config_sha256": config_sha256(root),
    }
    tmp_weights = root / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp_weights), metadata=metadata)
    os.replace(tmp_weights, root / WEIGHTS)

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
    atomic_write_json(root / MANIFEST, manifest, sort_keys=True)
    model.version, model.parent_version = version, parent_version
    return manifest


def is_vla_checkpoint(path: Path) -> bool:
    manifest = Path(path) / MANIFEST
    if manifest.is_symlink():
        return True  # never followed: load_checkpoint refuses it and says why
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{root}: not a VLA checkpoint (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root}/{MANIFEST}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{root}: {MANIFEST} is not a '{FORMAT}' manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{root}: checkpoint format version {manifest.get('format_version')!r}; this version reads "
            f"{FORMAT_VERSION}"
        )
    return manifest


def update_provenance(path: str | os.PathLike[str], **entries: Any) -> dict[str, Any]:
    """Add entries to a checkpoint's free-form provenance (not covered by the weight hashes)."""
    root = Path(path)
    manifest = read_manifest(root)
    manifest["provenance"] = {**manifest.get("provenance", {}), **entries}
    atomic_write_json(root / MANIFEST, manifest, sort_keys=True)
    return manifest


def load_checkpoint(
    path: str | os.PathLike[str],
    robot_config: RobotConfig | None,
    device: str | torch.device = "cpu",
) -> VLA:
    """Load and verify a checkpoint for `robot_config` (None skips only the robot check, for tools
    that inspect checkpoints). The model is returned in eval mode with `version` set."""
    from safetensors import SafetensorError, safe_open

    root = Path(path)
    check_entries(root)
    manifest = read_manifest(root)
    missing = [e for e in CHECKPOINT_ENTRIES if not (root / e).exists()]
    if missing:
        raise CheckpointError(f"{root}: checkpoint is incomplete, missing {missing}")

    try:
        with safe_open(str(root / WEIGHTS), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (not a dict, not iterable)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{root}/{WEIGHTS}: unreadable safetensors file ({exc})") from None
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
    if tagged_sha256(_canonical(normalization)) != metadata.get("normalization_sha256"):
        raise CheckpointError(
            f"{root}/{NORMALIZATION}: statistics do not match the hash recorded with the weights; "
            "the policy would decode actions with statistics it was not trained with"
        )
    if config_sha256(root) != metadata.get("config_sha256"):
        raise CheckpointError(
            f"{root}: {CONFIG}, {BACKBONE_DIR}/ or {TOKENIZER_DIR}/ differ from what was saved with the "
            "weights"
        )

    from transformers import AutoConfig, AutoTokenizer

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
    check_weights(tensors, model.state_dict(), source=str(root))
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
    from wmpo_core.vla.policy import VLAPolicy

    return VLAPolicy(load_checkpoint(path, robot_config, device=choose_device()), robot_config)


def default_device() -> str:
    """`wmpo_core.devices.choose_device("auto")` as a string, for callers that pass strings."""
    return str(choose_device("auto"))


register_directory_format(is_vla_checkpoint, _load_policy)
