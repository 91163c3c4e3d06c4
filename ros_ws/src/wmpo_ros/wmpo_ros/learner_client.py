"""Typed HTTP client for the learner service, used by the robot's sync node and by learner jobs.

Nothing here waits without a deadline: every request has connect/read/write/pool timeouts,
uploads and downloads also have a deadline for the whole transfer, and long-polls are bounded.
Errors come in three kinds, so callers can decide what to retry:

- `LearnerUnavailable`: the service could not be reached or failed (network, timeout, 5xx);
  retry later with backoff.
- `LearnerRejected`: the service refused the request (4xx) with its reason; `retryable` is true
  only for statuses that a later retry can fix (auth misconfiguration, 408, 429).
- `IntegrityError`: downloaded bytes do not match the registry's sha256; never used.

Downloads are atomic: files go to a hidden temporary directory next to the destination, every
file's size and sha256 are checked against the version listing, and only then is the directory
renamed into place. A robot never sees a half-downloaded or tampered version.

Everything the learner sends is untrusted: answers are parsed into the strict wire models (a
version or episode id must match `wmpo_core.ids.ID_PATTERN`), and a path built from a version or
a listed file is checked to stay inside the download directory before anything is written or
deleted there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from wmpo_core.durable import file_sha256, fsync_dir, fsync_tree
from wmpo_core.episode_store import EpisodeMeta
from wmpo_core.ids import check_id, child_path
from wmpo_core.protocol.archive import CHUNK_BYTES, write_dir_archive
from wmpo_core.protocol.models import (
    API_PREFIX,
    ARCHIVE_MEDIA_TYPE,
    SHA256_HEADER,
    Deployment,
    DeploymentHistory,
    DeployRequest,
    EpisodeLabel,
    EpisodeList,
    EpisodeUploadResult,
    FileEntry,
    Health,
    PolicyVersion,
    PolicyVersionList,
    RollbackRequest,
    Run,
    RunCreate,
    RunList,
    RunState,
    RunSummary,
    RunUpdate,
    finite_or_none,
)
from wmpo_core.protocol.token import load_token

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
LONG_POLL_S = 30.0
"""Length of one long-poll request; `wait_for_deployed` chains them up to its own timeout."""
RETRYABLE_STATUSES = frozenset({401, 403, 408, 425, 429})
"""4xx answers a retry can cure: a token being rotated, a slow link, a busy service."""

M = TypeVar("M", bound=BaseModel)


class LearnerError(Exception):
    retryable: bool = True


class LearnerUnavailable(LearnerError):
    """Unreachable, timed out, or a server-side failure: try again later."""


class LearnerRejected(LearnerError):
    """The service answered 4xx; `detail` is its reason."""

    def __init__(self, status_code: int, detail: str, what: str):
        super().__init__(f"{what}: learner refused with {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retryable = status_code in RETRYABLE_STATUSES


class IntegrityError(LearnerError):
    """Downloaded data does not match the sha256 (or size, or path rules) of the listing."""

    retryable = False


class LearnerClient:
    """One client per process; thread-safe like httpx.Client. Close it (or use `with`)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        spool_dir: str | os.PathLike[str] | None = None,
    ):
        """`base_url` like 'https://learner:8765'; `verify` a CA bundle path for a private CA;
        `spool_dir` where upload archives are built (default: the system temp directory)."""
        if isinstance(verify, (str, os.PathLike)):
            verify = ssl.create_default_context(cafile=os.fspath(verify))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url + API_PREFIX, headers=headers, timeout=timeout, verify=verify
        )
        self._spool_dir = spool_dir

    @classmethod
    def from_env(
        cls, base_url: str, token_file: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> LearnerClient:
        """Token from `token_file`, else from WMPO_LEARNER_TOKEN (the same rules as the service)."""
        return cls(base_url, load_token(token_file), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LearnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------- plumbing

    def _request(
        self, method: str, path: str, what: str, *, expected: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise LearnerUnavailable(
                f"{what}: learner at {self.base_url} timed out ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise LearnerUnavailable(
                f"{what}: learner at {self.base_url} unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        return self._check(response, what, expected)

    def _check(self, response: httpx.Response, what: str, expected: tuple[int, ...]) -> httpx.Response:
        if response.status_code in expected:
            return response
        detail = _detail(response)
        if response.status_code >= 500 or response.status_code < 400:
            raise LearnerUnavailable(f"{what}: learner answered {response.status_code}: {detail}")
        raise LearnerRejected(response.status_code, detail, what)

    def _model(self, model: type[M], response: httpx.Response, what: str) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise LearnerUnavailable(
                f"{what}: unexpected answer from the learner ({exc.error_count()} schema errors; first: "
                f"{where}: {first['msg']})"
            ) from exc

    def _json(
        self, model: type[M], method: str, path: str, what: str, body: BaseModel | None = None, **kwargs: Any
    ) -> M:
        if body is not None:
            kwargs["content"] = body.model_dump_json(exclude_unset=True)
            kwargs["headers"] = {"Content-Type": "application/json"}
        response = self._request(method, path, what, expected=(200, 201), **kwargs)
        return self._model(model, response, what)

    def _upload(self, path: str, src_dir: Path, name: str, what: str, deadline_s: float) -> httpx.Response:
        """Archive `src_dir` as `<name>/` into a temporary file (the sha256 header needs the whole
        archive first), then stream that file with Content-Length and a deadline."""
        with tempfile.TemporaryFile(dir=self._spool_dir) as archive:
            info = write_dir_archive(src_dir, name, archive)
            archive.seek(0)
            deadline = time.monotonic() + deadline_s
            return self._request(
                "PUT",
                path,
                what,
                expected=(200, 201),
                content=_read_until(archive, deadline, what),
                headers={
                    SHA256_HEADER: info.sha256,
                    "Content-Type": ARCHIVE_MEDIA_TYPE,
                    "Content-Length": str(info.size),
                },
                timeout=httpx.Timeout(
                    connect=self._timeout.connect,
                    write=self._timeout.write,
                    pool=self._timeout.pool,
                    read=deadline_s,
                ),
            )

    # -------------------------------------------------------------------------------- service

    def health(self) -> Health:
        return self._json(Health, "GET", "/health", "health")

    def answers(self, timeout_s: float = 2.0) -> bool:
        """Whether the service answers its health endpoint within `timeout_s`: the cheap probe a
        waiting outbox or sync node uses to retry the moment the learner is back."""
        try:
            return self._http.get("/health", timeout=timeout_s).status_code == 200
        except (httpx.HTTPError, RuntimeError):  # RuntimeError: this client was closed (shutting down)
            return False

    # -------------------------------------------------------------------------------- episodes

    def episode(self, episode_id: str) -> EpisodeMeta | None:
        """The learner's copy of an episode's metadata, or None when it has not got it."""
        try:
            return self._json(EpisodeMeta, "GET", f"/episodes/{_q(episode_id)}", f"episode {episode_id}")
        except LearnerRejected as exc:
            if exc.status_code == 404:
                return None
            raise

    def list_episodes(self, offset: int = 0, limit: int = 1000) -> EpisodeList:
        return self._json(
            EpisodeList, "GET", "/episodes", "list episodes", params={"offset": offset, "limit": limit}
        )

    def upload_episode(
        self, episode_dir: str | os.PathLike[str], episode_id: str, *, deadline_s: float = 600.0
    ) -> EpisodeUploadResult:
        """Upload one committed episode directory (e.g. `EpisodeStore.episode_path(id)`).

        Idempotent: an episode the learner already has is not sent again.
        """
        what = f"upload episode {episode_id}"
        known = self.episode(episode_id)
        if known is not None:
            return EpisodeUploadResult(
                episode_id=episode_id, status="already_stored", num_steps=known.num_steps, archive_bytes=0
            )
        src = Path(episode_dir)
        if not (src / "zarr.json").is_file():
            raise FileNotFoundError(f"{src}: not a committed episode directory (no zarr.json)")
        response = self._upload(f"/episodes/{_q(episode_id)}", src, episode_id, what, deadline_s)
        return self._model(EpisodeUploadResult, response, what)

    def label_episode(self, episode_id: str, success: bool | None, labeled_by: str) -> EpisodeMeta:
        body = EpisodeLabel(success=success, labeled_by=labeled_by)
        return self._json(
            EpisodeMeta, "PUT", f"/episodes/{_q(episode_id)}/label", f"label episode {episode_id}", body
        )

    # -------------------------------------------------------------------------------- policies

    def list_versions(self) -> list[PolicyVersion]:
        return self._json(PolicyVersionList, "GET", "/policies", "list policy versions").versions

    def get_version(self, version: str) -> PolicyVersion:
        return self._json(PolicyVersion, "GET", f"/policies/{_q(version)}", f"policy version {version}")

    def publish_version(
        self, checkpoint_dir: str | os.PathLike[str], version: str, *, deadline_s: float = 3600.0
    ) -> PolicyVersion:
        """Publish a checkpoint directory as `version` (immutable; an existing version is a 409)."""
        what = f"publish policy {version}"
        try:
            self.get_version(version)
        except LearnerRejected as exc:
            if exc.status_code != 404:
                raise
        else:
            raise LearnerRejected(409, f"policy version '{version}' already exists", what)
        response = self._upload(f"/policies/{_q(version)}", Path(checkpoint_dir), version, what, deadline_s)
        return self._model(PolicyVersion, response, what)

    def download_version(
        self, version: str, dest_root: str | os.PathLike[str], *, deadline_s: float = 3600.0
    ) -> Path:
        """Download `version` to `dest_root/<version>`, every file verified; returns that path.

        Atomic: a complete, verified directory appears at once, or nothing (IntegrityError on any
        mismatch). A verified copy already there is reused. A `version` that is not a valid id, or
        whose directory would resolve outside `dest_root`, raises UnsafeNameError before anything
        is asked, written or deleted.
        """
        check_id(version, "policy version")
        record = self.get_version(version)
        if record.version != version:
            raise IntegrityError(
                f"asked the learner for version '{version}', it listed '{record.version}'; refusing this "
                "version"
            )
        dest_root = Path(dest_root)
        dest_root.mkdir(parents=True, exist_ok=True)
        final = child_path(dest_root, version, "policy version")
        for stale in dest_root.glob(f".{version}.*.partial"):  # left by a killed download
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            if verify_version_dir(final, record) is None:
                return final
            shutil.rmtree(final)
        deadline = time.monotonic() + deadline_s
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".partial", dir=dest_root))
        try:
            for entry in record.files:
                self._download_file(version, entry, tmp / _safe_relpath(entry.path), deadline)
            fsync_tree(tmp)
            os.rename(tmp, final)
            fsync_dir(dest_root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _download_file(self, version: str, entry: FileEntry, target: Path, deadline: float) -> None:
        what = f"download {version}/{entry.path}"
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        try:
            with self._http.stream("GET", f"/policies/{_q(version)}/files/{_q(entry.path)}") as response:
                self._check(response, what, (200,))
                header = response.headers.get(SHA256_HEADER)
                if header is not None and header != entry.sha256:
                    raise IntegrityError(
                        f"{what}: the server's {SHA256_HEADER} {header} disagrees with the listing "
                        f"{entry.sha256}"
                    )
                with open(target, "wb") as f:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        if time.monotonic() > deadline:
                            raise LearnerUnavailable(f"{what}: download deadline exceeded")
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
        except httpx.TimeoutException as exc:
            raise LearnerUnavailable(f"{what}: timed out") from exc
        except httpx.TransportError as exc:
            raise LearnerUnavailable(f"{what}: transfer failed ({type(exc).__name__}: {exc})") from exc
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise IntegrityError(
                f"{what}: got {size} bytes with sha256 {digest.hexdigest()}, the registry lists {entry.size} "
                "bytes "
                f"with sha256 {entry.sha256}; refusing this version"
            )

    # ------------------------------------------------------------------------------ deployment

    def deployment(self) -> Deployment:
        return self._json(Deployment, "GET", "/deployment", "deployment")

    def wait_for_deployed(self, after: str | None, timeout_s: float) -> Deployment:
        """Block until the deployed version differs from `after` (the one this robot runs, None
        for none) or `timeout_s` passes (then `changed` is False). Long-polls; no busy polling."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            poll = min(remaining, LONG_POLL_S)
            deployment = self._json(
                Deployment,
                "GET",
                "/deployment",
                "wait for deployment",
                params={"after": after or "", "timeout_s": round(poll, 3)},
                timeout=httpx.Timeout(
                    connect=self._timeout.connect,
                    write=self._timeout.write,
                    pool=self._timeout.pool,
                    read=poll + 10.0,
                ),
            )
            if deployment.changed or time.monotonic() >= deadline:
                return deployment

    def deploy(self, version: str, reason: str = "") -> Deployment:
        return self._json(
            Deployment,
            "PUT",
            "/deployment",
            f"deploy {version}",
            DeployRequest(version=version, reason=reason),
        )

    def rollback(self, reason: str = "") -> Deployment:
        return self._json(
            Deployment, "POST", "/deployment/rollback", "rollback", RollbackRequest(reason=reason)
        )

    def deployment_history(self) -> DeploymentHistory:
        return self._json(DeploymentHistory, "GET", "/deployment/history", "deployment history")

    # ------------------------------------------------------------------------------------ runs

    def create_run(
        self,
        kind: str,
        *,
        run_id: str | None = None,
        stage: str = "",
        progress: float | None = None,
        state: RunState = "running",
        message: str = "",
        params: Mapping[str, str | int | float | bool | None] | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> RunSummary:
        body = RunCreate(
            run_id=run_id,
            kind=kind,
            stage=stage,
            progress=progress,
            state=state,
            message=message,
            params=dict(params or {}),
            metrics=finite_or_none(dict(metrics or {})),
        )
        return self._json(RunSummary, "POST", "/runs", f"create {kind} run", body)

    def update_run(
        self,
        run_id: str,
        *,
        stage: str | None = None,
        progress: float | None = None,
        state: RunState | None = None,
        message: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
        step: int | None = None,
    ) -> RunSummary:
        """Report progress; only the arguments given are changed. Non-finite metrics become null."""
        given = {"stage": stage, "progress": progress, "state": state, "message": message, "step": step}
        body = RunUpdate(
            **{k: v for k, v in given.items() if v is not None}, metrics=finite_or_none(dict(metrics or {}))
        )
        return self._json(RunSummary, "PATCH", f"/runs/{_q(run_id)}", f"update run {run_id}", body)

    def get_run(self, run_id: str, history_limit: int = 1000) -> Run:
        return self._json(
            Run, "GET", f"/runs/{_q(run_id)}", f"run {run_id}", params={"history_limit": history_limit}
        )

    def list_runs(
        self, state: RunState | None = None, kind: str | None = None, limit: int = 100
    ) -> list[RunSummary]:
        params = {k: v for k, v in {"state": state, "kind": kind, "limit": limit}.items() if v is not None}
        return self._json(RunList, "GET", "/runs", "list runs", params=params).runs


def verify_version_dir(path: str | os.PathLike[str], record: PolicyVersion) -> str | None:
    """None when `path` holds exactly the version's files with their sha256; else what differs."""
    root = Path(path)
    listed = {_safe_relpath(e.path): e for e in record.files}
    present = {p.relative_to(root) for p in root.rglob("*") if not p.is_dir()}
    if present != set(listed):
        extra = sorted(map(str, present - set(listed)))
        missing = sorted(map(str, set(listed) - present))
        return f"files differ from the listing (extra: {extra}, missing: {missing})"
    for rel, entry in listed.items():
        file = root / rel
        if file.is_symlink() or file.stat().st_size != entry.size:
            return f"{rel}: size differs from the listing"
        if file_sha256(file) != entry.sha256:
            return f"{rel}: sha256 differs from the listing"
    return None


def _safe_relpath(path: str) -> Path:
    """A listed path as a local relative path; a listing that points outside is an attack."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(part in ("", ".", "..") for part in pure.parts) or "\\" in path:
        raise IntegrityError(
            f"the version listing contains an unsafe file path '{path}'; refusing this version"
        )
    return Path(*pure.parts)


def _read_until(f: BinaryIO, deadline: float, what: str) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_BYTES):
        if time.monotonic() > deadline:
            raise LearnerUnavailable(f"{what}: upload deadline exceeded")
        yield chunk


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="/")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase
    return detail if isinstance(detail, str) else str(detail)[:1000]
