"""Durable files: atomic replacement with fsync, fsync of a directory tree, sha256 of a file.

A file written here is seen by readers whole, old or new, never torn, and survives a power cut
once the call returns: the bytes go to a temporary sibling that is fsynced, renamed over the
target (atomic on POSIX), and the directory entry is fsynced too. The episode store, the learner
service, the robot's download client and the checkpoints all write through these few functions.
The standard library has the parts (`os.replace`, `os.fsync`, `hashlib.file_digest`) but no
durable atomic write, hence this small module.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make the entries of directory `path` (a rename, a new file) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: StrPath) -> None:
    """fsync every file and directory under `root` (before renaming a staged tree into place)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextmanager
def atomic_output(path: StrPath) -> Iterator[Path]:
    """A temporary sibling of `path` to write (by any library); on leaving the block it is fsynced
    and renamed over `path`, then the directory entry is fsynced. On an error it is removed and
    `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Replace `path` with `data`: readers see the old file or the new one, even after a power cut."""
    with atomic_output(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def atomic_write_text(path: StrPath, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: StrPath, data: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """`atomic_write_bytes` of `data` as JSON text ending in a newline."""
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


def file_sha256(path: StrPath) -> str:
    """Hex sha256 of a file's bytes, read in blocks (weights can be many GB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tagged_sha256(data: bytes) -> str:
    """'sha256:<hex>' of `data`: the form content hashes take in manifests and episode metadata."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
