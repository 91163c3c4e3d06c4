"""Episode ingestion over real HTTP: stored identically, idempotent, and every bad upload is a 4xx
that writes nothing (no episode, no staging leftovers, no spool leftovers)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_harness import (
    TOKEN,
    archive_bytes,
    auth,
    record_episodes,
    send_partial_upload,
    spool_leftovers,
    start_learner,
    store_listing,
    wait_for_spool_file,
)
from wmpo_core.episode_store import EpisodeStore
from wmpo_ros.learner_client import LearnerClient, LearnerRejected

MAX_EPISODE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    learner = start_learner(
        tmp_path_factory.mktemp("learner"),
        "--max-episode-bytes",
        str(MAX_EPISODE_BYTES),
        "--upload-idle-timeout-s",
        "2",
    )
    yield learner
    learner.stop()


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    """A robot-side store with ordinary episodes, one too big, and one of another arm."""
    path = tmp_path_factory.mktemp("robot") / "robot.zarr"
    ids = record_episodes(path, n=6, steps=5)
    (big,) = record_episodes(path, n=1, steps=30, seed=1)  # ~1.5 MB of incompressible frames
    (other_arm,) = record_episodes(path, n=1, steps=2, robot="so101_real", seed=2, noise=False)
    store = EpisodeStore.open(path)
    yield store, ids, big, other_arm
    store.close()


@pytest.fixture
def client(learner):
    with LearnerClient(learner.url, TOKEN) as c:
        yield c


def put_episode(
    learner, episode_id: str, body: bytes, sha: str | None = None, content_type: str = "application/x-tar"
) -> httpx.Response:
    headers = {**auth(), "Content-Type": content_type}
    if sha != "":
        headers["X-Content-SHA256"] = sha or hashlib.sha256(body).hexdigest()
    return httpx.put(f"{learner.url}/v1/episodes/{episode_id}", content=body, headers=headers, timeout=30)


def wait_until_clean(learner, timeout_s: float = 10.0) -> list[str]:
    """The spool is emptied by the request that used it, which may finish just after the response."""
    deadline = time.monotonic() + timeout_s
    while spool_leftovers(learner.spool) and time.monotonic() < deadline:
        time.sleep(0.05)
    return spool_leftovers(learner.spool)


def test_upload_stores_an_identical_episode(learner, robot, client):
    store, ids, *_ = robot
    result = client.upload_episode(store.episode_path(ids[0]), ids[0])
    assert result.status == "stored" and result.num_steps == 5 and result.archive_bytes > 0
    with EpisodeStore.open(learner.store) as learned:
        assert ids[0] in learned
        assert learned.meta(ids[0]) == store.meta(ids[0])
        mine, theirs = store.episode(ids[0]), learned.episode(ids[0])
        for read in ("state", "action", "time", "state_time"):
            np.testing.assert_array_equal(getattr(mine, read)(), getattr(theirs, read)())
        np.testing.assert_array_equal(mine.frames("front"), theirs.frames("front"))
    assert client.episode(ids[0]).num_steps == 5
    assert ids[0] in [m.episode_id for m in client.list_episodes().episodes]
    assert wait_until_clean(learner) == []


def test_reupload_is_idempotent_and_writes_nothing(learner, robot, client):
    store, ids, *_ = robot
    client.upload_episode(store.episode_path(ids[1]), ids[1])
    meta_file = learner.store / "episodes" / ids[1] / "zarr.json"
    stamp = meta_file.stat().st_mtime_ns
    before = store_listing(learner.store)
    # The client skips a known episode without sending it ...
    assert client.upload_episode(store.episode_path(ids[1]), ids[1]).archive_bytes == 0
    # ... and a raw re-upload (e.g. a retry after a lost response) is answered 200, nothing written.
    r = put_episode(learner, ids[1], archive_bytes(store.episode_path(ids[1]), ids[1]))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "already_stored"
    assert store_listing(learner.store) == before and meta_file.stat().st_mtime_ns == stamp
    assert wait_until_clean(learner) == []


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"{}", linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def _episode_copy(store, episode_id: str, tmp_path: Path) -> Path:
    copy = tmp_path / episode_id
    shutil.copytree(store.episode_path(episode_id), copy)
    return copy


def _bad_uploads(store, ids, other_arm, tmp_path) -> dict[str, tuple[str, bytes, str | None, str, int, str]]:
    """name -> (episode id in the URL, body, sha header (None: correct one), content type, status,
    message)."""
    target = ids[2]
    good = archive_bytes(store.episode_path(target), target)
    cases = {
        "not a tar": (target, b"hello, this is not an archive" * 100, None, "application/x-tar", 400, "tar"),
        "truncated archive": (target, good[: len(good) // 2 + 100], None, "application/x-tar", 400, "tar"),
        "sha256 mismatch": (
            target,
            good,
            hashlib.sha256(b"other").hexdigest(),
            "application/x-tar",
            400,
            "sha256",
        ),
        "gzip-compressed tar": (target, gzip.compress(good), None, "application/x-tar", 400, "tar"),
        "wrong content type": (target, good, None, "application/json", 415, "Content-Type"),
        "missing sha256 header": (target, good, "", "application/x-tar", 422, "X-Content-SHA256"),
        "symlink member": (
            target,
            _tar_with(
                [
                    _member(target, tarfile.DIRTYPE),
                    _member(f"{target}/zarr.json", tarfile.SYMTYPE, linkname="/etc/passwd"),
                ]
            ),
            None,
            "application/x-tar",
            400,
            "link",
        ),
        "hard link member": (
            target,
            _tar_with(
                [
                    _member(target, tarfile.DIRTYPE),
                    _member(f"{target}/a", data=b"x"),
                    _member(f"{target}/b", tarfile.LNKTYPE, linkname=f"{target}/a"),
                ]
            ),
            None,
            "application/x-tar",
            400,
            "link",
        ),
        "device file": (
            target,
            _tar_with([_member(target, tarfile.DIRTYPE), _member(f"{target}/dev", tarfile.CHRTYPE)]),
            None,
            "application/x-tar",
            400,
            "special",
        ),
        "path traversal": (
            target,
            _tar_with([_member(target, tarfile.DIRTYPE), _member(f"{target}/../../evil.json")]),
            None,
            "application/x-tar",
            400,
            "unsafe",
        ),
        "absolute path": (
            target,
            _tar_with([_member(target, tarfile.DIRTYPE), _member("/tmp/evil.json")]),
            None,
            "application/x-tar",
            400,
            "outside",
        ),
        "member outside the episode": (
            target,
            _tar_with([_member(target, tarfile.DIRTYPE), _member("other/zarr.json")]),
            None,
            "application/x-tar",
            400,
            "outside",
        ),
        "no episode metadata": (
            target,
            _tar_with([_member(target, tarfile.DIRTYPE), _member(f"{target}/notes.txt", data=b"hi")]),
            None,
            "application/x-tar",
            422,
            "zarr.json",
        ),
        "archive of another episode": (
            target,
            archive_bytes(store.episode_path(ids[3]), target),
            None,
            "application/x-tar",
            422,
            ids[3],
        ),
        "episode of another robot": (
            other_arm,
            archive_bytes(store.episode_path(other_arm), other_arm),
            None,
            "application/x-tar",
            422,
            "robot config",
        ),
        "invalid episode id": ("-bad..id", good, None, "application/x-tar", 422, "pattern"),
    }
    missing_array = _episode_copy(store, target, tmp_path / "missing")
    shutil.rmtree(missing_array / "action")
    cases["missing array"] = (
        target,
        archive_bytes(missing_array, target),
        None,
        "application/x-tar",
        422,
        "action",
    )
    corrupt = _episode_copy(store, target, tmp_path / "corrupt")
    shard = next(
        p for p in (corrupt / "images" / "front").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    shard.write_bytes(
        shard.read_bytes()[: shard.stat().st_size // 2]
    )  # a shard cut short on the robot's disk
    cases["truncated image shard"] = (
        target,
        archive_bytes(corrupt, target),
        None,
        "application/x-tar",
        422,
        "unreadable",
    )
    bad_meta = _episode_copy(store, target, tmp_path / "badmeta")
    meta = json.loads((bad_meta / "zarr.json").read_text())
    meta["attributes"]["wmpo_episode"]["num_steps"] = 50
    (bad_meta / "zarr.json").write_text(json.dumps(meta))
    cases["metadata disagrees with arrays"] = (
        target,
        archive_bytes(bad_meta, target),
        None,
        "application/x-tar",
        422,
        "expected",
    )
    return cases


def test_bad_uploads_are_refused_with_a_reason_and_write_nothing(learner, robot, tmp_path):
    store, ids, _, other_arm = robot
    cases = _bad_uploads(store, ids, other_arm, tmp_path)
    before = store_listing(learner.store)
    for name, (episode_id, body, sha, content_type, status, message) in cases.items():
        r = put_episode(learner, episode_id, body, sha, content_type)
        assert r.status_code == status, (name, r.status_code, r.text)
        detail = r.json()["detail"]
        assert message in str(detail), (name, detail)
        assert store_listing(learner.store) == before, name
    assert wait_until_clean(learner) == []
    # Refusals leave no trace that could block the real episode later.
    with LearnerClient(learner.url, TOKEN) as client:
        assert client.upload_episode(store.episode_path(ids[2]), ids[2]).status == "stored"


def test_oversized_upload_is_413_and_writes_nothing(learner, robot, client):
    store, _, big, _ = robot
    body = archive_bytes(store.episode_path(big), big)
    assert len(body) > MAX_EPISODE_BYTES
    before = store_listing(learner.store)
    # Declared too big (Content-Length): refused before a byte of the body is read.
    with pytest.raises(LearnerRejected) as refused:
        client.upload_episode(store.episode_path(big), big)
    assert refused.value.status_code == 413 and not refused.value.retryable
    # Streamed without a length (chunked): cut off once the limit is passed.
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    r = httpx.put(
        f"{learner.url}/v1/episodes/{big}",
        content=chunks,
        headers={
            **auth(),
            "Content-Type": "application/x-tar",
            "X-Content-SHA256": hashlib.sha256(body).hexdigest(),
        },
        timeout=30,
    )
    assert r.status_code == 413
    assert store_listing(learner.store) == before
    assert wait_until_clean(learner) == []


def test_client_disconnect_mid_upload_leaves_nothing(learner, robot, client):
    store, ids, *_ = robot
    before = store_listing(learner.store)
    sock = send_partial_upload(learner, ids[4], archive_bytes(store.episode_path(ids[4]), ids[4]))
    wait_for_spool_file(learner)
    sock.close()
    assert wait_until_clean(learner) == []
    assert store_listing(learner.store) == before
    assert client.upload_episode(store.episode_path(ids[4]), ids[4]).status == "stored"


def test_stalled_upload_is_dropped_at_its_deadline(learner, robot):
    store, ids, *_ = robot
    before = store_listing(learner.store)
    sock = send_partial_upload(
        learner, ids[4], archive_bytes(store.episode_path(ids[4]), ids[4]), fraction=0.3
    )
    try:
        sock.settimeout(30)
        status_line = sock.recv(4096).split(b"\r\n", 1)[
            0
        ]  # the robot went quiet; the service does not wait forever
    finally:
        sock.close()
    assert b" 408 " in status_line, status_line
    assert wait_until_clean(learner) == []
    assert store_listing(learner.store) == before


def test_label_an_uploaded_episode(learner, robot, client):
    store, ids, *_ = robot
    client.upload_episode(store.episode_path(ids[5]), ids[5])
    labeled = client.label_episode(ids[5], success=True, labeled_by="human")
    assert labeled.success is True and labeled.success_labeled_by == "human"
    with EpisodeStore.open(learner.store) as learned:
        assert learned.meta(ids[5]).success is True
    with pytest.raises(LearnerRejected) as missing:
        client.label_episode("ep_unknown", success=False, labeled_by="human")
    assert missing.value.status_code == 404
