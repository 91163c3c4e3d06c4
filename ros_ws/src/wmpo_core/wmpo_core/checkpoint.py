"""What every checkpoint of the project shares: a manifest, safetensors, hashes, verification.

A checkpoint is a directory of JSON and safetensors (never a pickle) with one JSON manifest that
names its format and version, records the sha256 of what it covers, and is written last and
atomically, so its presence means the rest is complete. Loading verifies before it builds:

- every entry of the checkpoint is a regular file or directory inside it (no symlink, no device
  file: nothing outside the directory is ever read);
- the manifest is this format at this version;
- the recorded hashes match the files (or the tensors);
- the weights fit the model: no missing or unexpected key, same shapes and dtypes (a silent cast
  of int8 or float16 weights is refused), no NaN or infinity. Saving applies the same check, so a
  diverged run never writes a checkpoint.

`CheckpointFormat` holds these rules for one format; the VLA (`wmpo_core.vla.checkpoint`), the
reward model and the world model each declare theirs and add only what is theirs (the robot
layout check, the preprocessing, the diffusers folders). Each raises its own error class, a
subclass of `CheckpointError` and of what its callers already catch.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from wmpo_core.durable import atomic_output, atomic_write_json, file_sha256

StrPath = str | os.PathLike[str]


class CheckpointError(Exception):
    """A checkpoint that is missing, damaged, tampered with or does not fit its model."""


def canonical_json(data: Any) -> bytes:
    """The bytes a JSON value is hashed as: sorted keys, no whitespace."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and raw bytes of every tensor, in sorted-name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(canonical_json([name, str(tensor.dtype), list(tensor.shape)]))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return "sha256:" + digest.hexdigest()


def weight_problems(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps `tensors` from loading into a model whose state dict is `expected`: missing or
    unexpected keys, other shapes, other dtypes (load_state_dict would cast silently), NaN or
    infinite values. Empty when they fit."""
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
    return parts


@dataclass(frozen=True)
class CheckpointFormat:
    """The manifest, entries and error class of one checkpoint format."""

    name: str
    """Value of the manifest's `format` field, e.g. 'wmpo-vla'."""
    version: int
    """The `format_version` this code writes and reads."""
    manifest: str
    """File name of the manifest, written last."""
    entries: tuple[str, ...]
    """Files and directories that make up the checkpoint (checked for symlinks; what to ship)."""
    label: str
    """What the checkpoint is called in messages, e.g. 'VLA checkpoint'."""
    error: type[CheckpointError] = CheckpointError

    # -------------------------------------------------------------------------- manifest

    def is_checkpoint(self, path: StrPath) -> bool:
        """A directory whose manifest names this format (a symlinked manifest counts: loading
        refuses it and says why, instead of another loader trying it)."""
        manifest = Path(path) / self.manifest
        if manifest.is_symlink():
            return True
        if not manifest.is_file():
            return False
        try:
            return json.loads(manifest.read_text()).get("format") == self.name
        except (OSError, ValueError, AttributeError):
            return False

    def write_manifest(self, path: StrPath, manifest: Mapping[str, Any]) -> None:
        """Atomically (and durably) replace the manifest: the last write of a save."""
        atomic_write_json(Path(path) / self.manifest, dict(manifest), sort_keys=True)

    def read_manifest(self, path: StrPath) -> dict[str, Any]:
        """The manifest, refused unless it is a JSON object of this format and version."""
        root = Path(path)
        try:
            manifest = json.loads((root / self.manifest).read_text())
        except FileNotFoundError:
            raise self.error(f"{root}: not a {self.label} (no {self.manifest})") from None
        except (OSError, ValueError) as exc:
            raise self.error(f"{root}/{self.manifest}: unreadable ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != self.name:
            raise self.error(f"{root}: {self.manifest} is not a '{self.name}' manifest")
        if manifest.get("format_version") != self.version:
            raise self.error(
                f"{root}: checkpoint format version {manifest.get('format_version')!r}; "
                f"this version reads {self.version}"
            )
        return manifest

    # -------------------------------------------------------------------------- entries and files

    def check_entries(self, path: StrPath) -> None:
        """Refuse a checkpoint whose entries are, or contain, symlinks or non-regular files:
        loading reads only regular files that really are inside the directory."""
        root = Path(path)
        base = root.resolve()
        for entry in self.entries:
            top = root / entry
            paths = [top]
            if top.is_dir() and not top.is_symlink():
                for dirpath, dirnames, filenames in os.walk(top):  # does not follow symlinked dirs
                    paths += [Path(dirpath) / name for name in dirnames + filenames]
            for p in paths:
                try:
                    mode = p.lstat().st_mode
                except FileNotFoundError:
                    continue  # a missing entry is reported as such by `check_complete`
                if stat.S_ISLNK(mode):
                    raise self.error(
                        f"{p}: is a symlink (to {os.readlink(p)}); a checkpoint must hold its own files"
                    )
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or not p.resolve().is_relative_to(base):
                    raise self.error(f"{p}: not a regular file inside the checkpoint directory")

    def check_complete(self, path: StrPath, entries: Iterable[str] | None = None) -> None:
        """Refuse a checkpoint missing any of `entries` (default: all of them)."""
        root = Path(path)
        missing = [e for e in (self.entries if entries is None else entries) if not (root / e).exists()]
        if missing:
            raise self.error(f"{root}: checkpoint is incomplete, missing {missing}")

    def file_hashes(self, path: StrPath, names: Iterable[str]) -> dict[str, str]:
        """Hex sha256 of each file (a directory: each file under it, by relative POSIX path)."""
        root = Path(path)
        hashes: dict[str, str] = {}
        for name in names:
            target = root / name
            files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
            for file in files:
                hashes[file.relative_to(root).as_posix()] = file_sha256(file)
        return hashes

    def verify_file_hashes(self, path: StrPath, recorded: Mapping[str, str]) -> None:
        """Every file in `recorded` exists and has its recorded sha256."""
        root = Path(path)
        for name, expected in recorded.items():
            file = root / name
            if not file.is_file():
                raise self.error(f"{root}: {name} is missing")
            actual = file_sha256(file)
            if actual != expected:
                raise self.error(
                    f"{file}: sha256 {actual} does not match the recorded {expected}; refusing to load"
                )

    # -------------------------------------------------------------------------- weights

    def check_weights(
        self, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
    ) -> None:
        """Refuse weights that do not fit the model (see `weight_problems`)."""
        parts = weight_problems(tensors, expected)
        if parts:
            raise self.error(
                f"{source}: weights do not fit the model its config describes: " + "; ".join(parts)
            )

    def save_tensors(
        self, path: StrPath, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
    ) -> None:
        """Write a safetensors file through a fsynced temporary and one atomic rename."""
        with atomic_output(path) as tmp:
            save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata is not None else None)

    def load_tensors(self, path: StrPath) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors on the CPU, header metadata) of a safetensors file; unreadable is refused."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (not iterable)
        except (SafetensorError, OSError, ValueError) as exc:
            raise self.error(f"{path}: unreadable safetensors file ({exc})") from None
        return tensors, metadata
