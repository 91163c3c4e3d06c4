"""Receiving an upload: stream the request body to a spool file, hash it, enforce deadlines.

The size limit itself is FastAPI's per-route `max_body_size` (413 before or while reading); this
module adds what FastAPI does not do: a deadline for the whole upload and for each chunk (a
client that stalls or trickles cannot hold a slot forever), the sha256 check against the
`X-Content-SHA256` header, a free-space check, and a spool directory that a killed service
leaves nothing behind in (it is emptied at start).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request, status
from wmpo_core.protocol.models import ARCHIVE_MEDIA_TYPE, SHA256_HEADER

DISK_RESERVE_BYTES = 256 << 20
COPIES_ON_DISK = 3
"""An upload exists up to three times at once: the archive, the extracted tree, the store's copy."""


class SpoolLockedError(RuntimeError):
    pass


class Spool:
    """Scratch directory for uploads in flight, owned by one service (flock)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolLockedError(
                f"{self.root}: another learner service uses this spool directory"
            ) from None
        self._lock_fd: int | None = lock_fd
        for leftover in self.root.iterdir():  # parts of uploads a killed service was receiving
            if leftover.name != ".lock":
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()

    def new_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.root))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


@dataclass(frozen=True)
class ReceivedBody:
    path: Path
    size: int
    sha256: str


def check_upload_headers(request: Request, spool: Spool, max_bytes: int) -> None:
    """Refuse before reading a byte: wrong media type, declared too big, or not enough disk."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != ARCHIVE_MEDIA_TYPE:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"upload must be an uncompressed tar with Content-Type {ARCHIVE_MEDIA_TYPE}, got "
            f"'{media_type or 'none'}'",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > max_bytes:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"upload of {declared} bytes exceeds the limit of {max_bytes} bytes",
            )
        free = shutil.disk_usage(spool.root).free
        if free < COPIES_ON_DISK * int(declared) + DISK_RESERVE_BYTES:
            raise HTTPException(
                status.HTTP_507_INSUFFICIENT_STORAGE,
                f"learner disk is too full for a {int(declared)}-byte upload ({free} bytes free)",
            )


async def receive_body(
    request: Request, dest: Path, expected_sha256: str, idle_timeout_s: float, deadline_s: float
) -> ReceivedBody:
    """Write the request body to `dest`; raises HTTPException 408 (too slow) or 400 (sha256 mismatch)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    digest = hashlib.sha256()
    size = 0
    chunks = request.stream().__aiter__()
    with open(dest, "wb") as f:
        while True:
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(min(idle_timeout_s, max(remaining, 0.0))):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise HTTPException(
                    status.HTTP_408_REQUEST_TIMEOUT,
                    f"upload too slow: no data for {idle_timeout_s:g} s or not finished within "
                    f"{deadline_s:g} s",
                ) from None
            # Plain blocking writes: a chunk is at most a few hundred KiB and lands in the page cache.
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    sha = digest.hexdigest()
    if sha != expected_sha256:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"body sha256 {sha} ({size} bytes) does not match the {SHA256_HEADER} header {expected_sha256}: "
            "truncated or corrupted upload",
        )
    return ReceivedBody(dest, size, sha)
