"""The policy registry: published checkpoint versions on disk, and which one robots should run.

    <registry>/registry.json                 marker {"wmpo_policy_registry": {"format_version": 1}}
    <registry>/versions/<version>/version.json   PolicyVersion: per-file size and sha256, manifest
    <registry>/versions/<version>/files/...      the checkpoint directory exactly as published
    <registry>/deployments.json              every deploy/rollback event, oldest first
    <registry>/.staging/                     versions being copied in (removed on open)
    <registry>/.writer.lock                  flock held by the single writer

Format-agnostic on purpose: a version is a directory of files; the registry records each file's
size and sha256 at publish time and reads nothing but an optional top-level manifest.json (shown
in listings). Loading and checking the weights is the robot's job. Publishing copies into
`.staging/` and renames into `versions/` (atomic: a version is listed complete or not at all);
deploy events are one JSON file replaced atomically. Deploying re-hashes the version's files so
a registry damaged on disk never reaches a robot.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError
from wmpo_core.durable import atomic_write_json, file_sha256, fsync_dir
from wmpo_core.ids import UnsafeNameError, child_path, is_valid_id
from wmpo_core.protocol.archive import CHUNK_BYTES
from wmpo_core.protocol.models import (
    NAME_PATTERN,
    DeployEvent,
    Deployment,
    DeploymentHistory,
    FileEntry,
    PolicyVersion,
)

MARKER = "wmpo_policy_registry"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20


class RegistryError(RuntimeError):
    """Base class; the message says what is wrong and with which version."""


class VersionExistsError(RegistryError):
    pass


class VersionNotFoundError(RegistryError):
    pass


class InvalidCheckpointError(RegistryError, ValueError):
    pass


class RegistryIntegrityError(RegistryError):
    """A published file no longer matches the size or sha256 recorded when it was published."""


class NothingToRollBackError(RegistryError):
    pass


class RegistryLockedError(RegistryError):
    pass


def _copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy one file and hash it in the same pass (one read of possibly many GB of weights)."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while chunk := fi.read(CHUNK_BYTES):
            fo.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return size, digest.hexdigest()


class PolicyRegistry:
    """Open with `PolicyRegistry.open(path)`; one writer per registry (flock), readers any time."""

    def __init__(self, root: Path, lock_fd: int | None):
        self.root = root
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        self._versions: dict[str, PolicyVersion] = {}
        self._events: list[DeployEvent] = []
        self.refresh()

    @classmethod
    def open(cls, path: str | os.PathLike[str], writable: bool = True) -> PolicyRegistry:
        root = Path(path)
        marker = root / "registry.json"
        if writable and (not root.exists() or (root.is_dir() and not any(root.iterdir()))):
            root.mkdir(parents=True, exist_ok=True)
            (root / "versions").mkdir(exist_ok=True)
            atomic_write_json(marker, {MARKER: {"format_version": FORMAT_VERSION, "created": time.time()}})
        try:
            info = json.loads(marker.read_text())[MARKER]
        except (OSError, ValueError, KeyError, TypeError):
            raise RegistryError(f"{root}: not a policy registry (no valid registry.json)") from None
        if info.get("format_version") != FORMAT_VERSION:
            raise RegistryError(
                f"{root}: registry format {info.get('format_version')!r}, this stack reads {FORMAT_VERSION}"
            )
        if not writable:
            return cls(root, lock_fd=None)
        lock_fd = os.open(root / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise RegistryLockedError(f"{root}: another process is writing to this registry") from None
        shutil.rmtree(root / ".staging", ignore_errors=True)
        (root / ".staging").mkdir()
        return cls(root, lock_fd=lock_fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Pick up versions and deploy events written since the last call (for read-only opens)."""
        for entry in sorted((self.root / "versions").iterdir()):
            if entry.name in self._versions or not is_valid_id(entry.name):
                continue
            try:
                record = PolicyVersion.model_validate_json((entry / "version.json").read_bytes())
            except (OSError, ValidationError) as exc:
                raise RegistryError(f"{entry}: unreadable version record ({exc})") from None
            self._versions[entry.name] = record
        path = self.root / "deployments.json"
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self._events = [DeployEvent.model_validate(e) for e in raw["events"]]
            except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
                raise RegistryError(f"{path}: unreadable deploy history ({exc})") from None

    def versions(self) -> list[PolicyVersion]:
        return sorted(self._versions.values(), key=lambda v: (v.published_at, v.version))

    def get(self, version: str) -> PolicyVersion:
        try:
            return self._versions[version]
        except KeyError:
            raise VersionNotFoundError(f"no policy version '{version}' in the registry") from None

    def file_path(self, version: str, rel_path: str) -> tuple[Path, FileEntry]:
        """Where a published file lives; only files listed in the version record are served."""
        record = self.get(version)
        for entry in record.files:
            if entry.path == rel_path:
                return self.root / "versions" / version / "files" / entry.path, entry
        raise VersionNotFoundError(f"policy version '{version}' has no file '{rel_path}'")

    def verify(self, version: str) -> None:
        """Re-hash every file of a version; raises RegistryIntegrityError naming the first mismatch."""
        record = self.get(version)
        base = self.root / "versions" / version / "files"
        for entry in record.files:
            path = base / entry.path
            try:
                size = path.stat().st_size
                sha = file_sha256(path) if size == entry.size else None
            except OSError as exc:
                raise RegistryIntegrityError(
                    f"policy version '{version}': file '{entry.path}' unreadable ({exc})"
                ) from None
            if sha != entry.sha256:
                raise RegistryIntegrityError(
                    f"policy version '{version}': file '{entry.path}' no longer matches the sha256 recorded "
                    "at "
                    "publish time; the registry copy is damaged or was modified"
                )

    def history(self) -> DeploymentHistory:
        return DeploymentHistory(events=list(self._events), stack=self._stack())

    def deployment(self) -> Deployment:
        stack = self._stack()
        current = stack[-1] if stack else None
        return Deployment(
            version=current,
            generation=len(self._events),
            deployed_at=self._events[-1].at if self._events else None,
            rollback_to=stack[-2] if len(stack) > 1 else None,
            policy=self._versions.get(current) if current else None,
        )

    def _stack(self) -> list[str]:
        """Deploy pushes a version, rollback pops one: rolling back twice goes back two deploys."""
        stack: list[str] = []
        for event in self._events:
            if event.action == "deploy":
                stack.append(event.version)
            elif stack:
                stack.pop()
        return stack

    # ------------------------------------------------------------------------------ writing

    def _require_writer(self) -> None:
        if self._lock_fd is None:
            raise RegistryError(f"{self.root}: opened read-only")

    def publish(self, src_dir: str | os.PathLike[str], version: str) -> PolicyVersion:
        """Copy a checkpoint directory in as `version`; refuses duplicates and non-plain files."""
        self._require_writer()
        src = Path(src_dir)
        if not is_valid_id(version):
            raise InvalidCheckpointError(f"invalid version name '{version}' (allowed: {NAME_PATTERN})")
        if not src.is_dir():
            raise InvalidCheckpointError(f"{src}: not a checkpoint directory")
        manifest = self._read_manifest(src)
        try:
            final = child_path(self.root / "versions", version, "policy version")
            staged = child_path(
                self.root / ".staging", f"{version}.{secrets.token_hex(4)}", "staging directory"
            )
        except UnsafeNameError as exc:
            raise InvalidCheckpointError(str(exc)) from None
        with self._mutex:
            if version in self._versions or final.exists():
                raise VersionExistsError(
                    f"policy version '{version}' already exists; versions are immutable, publish a new one"
                )
            try:
                files = self._copy_tree(src, staged / "files")
                if not files:
                    raise InvalidCheckpointError(f"{src}: the checkpoint directory has no files")
                record = PolicyVersion(
                    version=version,
                    published_at=time.time(),
                    files=files,
                    total_bytes=sum(f.size for f in files),
                    manifest=manifest,
                )
                (staged / "version.json").write_text(record.model_dump_json(indent=1))
                fsync_dir(staged)
                os.rename(staged, final)
                fsync_dir(self.root / "versions")
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            self._versions[version] = record
            return record

    @staticmethod
    def _read_manifest(src: Path) -> dict[str, Any] | None:
        path = src / MANIFEST
        if not path.exists():
            return None
        if not path.is_file() or path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InvalidCheckpointError(f"{path}: must be a JSON file of at most {MAX_MANIFEST_BYTES} bytes")
        try:
            manifest = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidCheckpointError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise InvalidCheckpointError(f"{path}: must hold a JSON object")
        return manifest

    @staticmethod
    def _copy_tree(src: Path, dst: Path) -> list[FileEntry]:
        files: list[FileEntry] = []
        dst.mkdir(parents=True)
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(src)
            for name in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / name
                mode = path.lstat().st_mode
                target = dst / rel_dir / name
                if stat.S_ISDIR(mode):
                    target.mkdir()
                elif stat.S_ISREG(mode):
                    size, sha = _copy_hashed(path, target)
                    files.append(
                        FileEntry(path=PurePosixPath(rel_dir / name).as_posix(), size=size, sha256=sha)
                    )
                else:
                    raise InvalidCheckpointError(
                        f"{path}: not a regular file or directory (links are not published)"
                    )
            fsync_dir(dst / rel_dir)
        return files

    def deploy(self, version: str, reason: str = "") -> Deployment:
        """Mark `version` as the one robots should run (after re-verifying its files)."""
        self._require_writer()
        with self._mutex:
            self.get(version)
            self.verify(version)
            stack = self._stack()
            self._append_event(
                DeployEvent(
                    action="deploy",
                    version=version,
                    previous=stack[-1] if stack else None,
                    at=time.time(),
                    reason=reason,
                )
            )
            return self.deployment()

    def rollback(self, reason: str = "") -> Deployment:
        """Go back to the version deployed before the current one."""
        self._require_writer()
        with self._mutex:
            stack = self._stack()
            if len(stack) < 2:
                raise NothingToRollBackError(
                    "nothing to roll back to: "
                    + (f"'{stack[0]}' is the first deployed version" if stack else "nothing is deployed")
                )
            self.verify(stack[-2])
            self._append_event(
                DeployEvent(
                    action="rollback", version=stack[-2], previous=stack[-1], at=time.time(), reason=reason
                )
            )
            return self.deployment()

    def _append_event(self, event: DeployEvent) -> None:
        events = [*self._events, event]
        atomic_write_json(
            self.root / "deployments.json", {"events": [e.model_dump(mode="json") for e in events]}
        )
        self._events = events
