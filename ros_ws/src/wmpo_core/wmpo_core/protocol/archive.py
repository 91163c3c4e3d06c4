"""The upload format: one directory as an uncompressed POSIX tar, checked by its sha256.

    <name>/                 one top-level directory, named by the episode id or policy version
    <name>/<relative path>  regular files and directories only

Uncompressed because the payload is already compressed (blosc image chunks, safetensors are
incompressible); a tar because the standard library reads and writes it as a stream, so
neither side holds an archive in memory. The sender computes the sha256 of the archive bytes
and sends it in the `X-Content-SHA256` header; the receiver refuses a body that does not match,
which catches truncation and corruption before anything is unpacked.

Extraction refuses anything but regular files and directories (no links, devices, FIFOs or
sparse files), any member outside `<name>/`, and then extracts with tarfile's 'data' filter
(no absolute paths, no '..', no special permission bits) as a second line of defence.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

CHUNK_BYTES = 1 << 20
MAX_MEMBERS = 100_000


class ArchiveError(ValueError):
    """An archive that cannot be built or must not be extracted; the message says why."""


@dataclass(frozen=True)
class ArchiveInfo:
    sha256: str
    size: int


class _HashingWriter:
    """File-like sink that hashes and counts what tarfile writes through it."""

    def __init__(self, sink: BinaryIO):
        self._sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def write_dir_archive(src_dir: str | os.PathLike[str], name: str, out: BinaryIO) -> ArchiveInfo:
    """Write `src_dir` as `<name>/...` into `out` (a binary stream); returns sha256 and size.

    Refuses symlinks and special files rather than following them: an episode or checkpoint
    directory is plain files, and following links could ship files from elsewhere on the machine.
    """
    root = Path(src_dir)
    if not root.is_dir():
        raise ArchiveError(f"{root}: not a directory")
    sink = _HashingWriter(out)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.add(root, arcname=name, recursive=False, filter=_anonymous)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for entry in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / entry
                mode = path.lstat().st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise ArchiveError(
                        f"{path}: not a regular file or directory (links and special files are not shipped)"
                    )
                rel = path.relative_to(root).as_posix()
                tar.add(path, arcname=f"{name}/{rel}", recursive=False, filter=_anonymous)
    return ArchiveInfo(sink.hash.hexdigest(), sink.size)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The robot's user and group names are none of the learner's business.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def extract_dir_archive(archive: str | os.PathLike[str], dest: str | os.PathLike[str], name: str) -> Path:
    """Extract an archive written by `write_dir_archive` into `dest`; returns `dest/<name>`.

    Every member is checked before anything is written, so a refused archive leaves `dest` empty.
    """
    dest = Path(dest)
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = []
            for member in tar:
                _check_member(member, name)
                members.append(member)
                if len(members) > MAX_MEMBERS:
                    raise ArchiveError(f"archive has more than {MAX_MEMBERS} members")
            if not any(m.name == name and m.isdir() for m in members):
                raise ArchiveError(f"archive has no top-level directory '{name}/'")
            tar.extractall(dest, members=members, filter="data")
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"not a valid uncompressed tar archive ({exc})") from None
    return dest / name


def _check_member(member: tarfile.TarInfo, name: str) -> None:
    path = PurePosixPath(member.name)
    if member.name != name and not member.name.startswith(name + "/"):
        raise ArchiveError(f"archive member '{member.name}' is outside the top-level directory '{name}/'")
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(f"archive member '{member.name}' has an unsafe path")
    if not (member.isreg() or member.isdir()) or member.issparse():
        kind = "link" if member.issym() or member.islnk() else "special or sparse file"
        raise ArchiveError(
            f"archive member '{member.name}' is a {kind}; only regular files and directories are accepted"
        )
