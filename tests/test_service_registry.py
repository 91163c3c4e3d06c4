"""Policy registry over real HTTP: publish, list, download verified, tamper detection, deploy,
rollback, long-poll for the deployed version."""

from __future__ import annotations

import filecmp
import hashlib
import io
import json
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file
from service_harness import TOKEN, auth, start_learner
from wmpo_core.protocol.archive import write_dir_archive
from wmpo_core.protocol.models import FileEntry, PolicyVersion
from wmpo_ros.learner_client import IntegrityError, LearnerClient, LearnerRejected, verify_version_dir


def make_checkpoint(root: Path, version: str, parent: str | None = None, seed: int = 0) -> Path:
    """A directory shaped like a VLA checkpoint; the registry must not care what is inside."""
    path = root / f"ckpt-{version}"
    (path / "tokenizer").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tensors = {
        "head.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "head.bias": np.zeros(16, np.float32),
    }
    save_file(tensors, str(path / "model.safetensors"), metadata={"version": version, "parent": parent or ""})
    (path / "manifest.json").write_text(
        json.dumps({"format": "wmpo-vla", "version": version, "parent": parent})
    )
    (path / "normalization.json").write_text(json.dumps({"q01": [-1.0] * 4, "q99": [1.0] * 4}))
    (path / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": {"pick": 1}}))
    return path


def local_listing(path: Path) -> dict[str, tuple[int, str]]:
    return {
        p.relative_to(path).as_posix(): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in path.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    learner = start_learner(tmp_path_factory.mktemp("learner"), "--max-long-poll-s", "2")
    yield learner
    learner.stop()


@pytest.fixture(scope="module")
def published(learner, tmp_path_factory):
    """v1..v3 published through the client."""
    root = tmp_path_factory.mktemp("ckpts")
    checkpoints = {}
    with LearnerClient(learner.url, TOKEN) as client:
        for i, version in enumerate(["v1", "v2", "v3"]):
            checkpoints[version] = make_checkpoint(root, version, parent=f"v{i}" if i else None, seed=i)
            client.publish_version(checkpoints[version], version)
    return checkpoints


@pytest.fixture
def client(learner):
    with LearnerClient(learner.url, TOKEN) as c:
        yield c


def test_publish_records_every_file_with_its_sha256(learner, published, client):
    versions = client.list_versions()
    assert [v.version for v in versions] == ["v1", "v2", "v3"]
    for record in versions:
        expected = local_listing(published[record.version])
        assert {f.path: (f.size, f.sha256) for f in record.files} == expected
        assert record.total_bytes == sum(size for size, _ in expected.values())
        assert record.manifest == json.loads((published[record.version] / "manifest.json").read_text())
        on_disk = learner.registry / "versions" / record.version / "files"
        assert local_listing(on_disk) == expected
    assert client.get_version("v2") == versions[1]


def test_duplicate_and_bad_publishes_are_refused(learner, published, client, tmp_path):
    before = [v.version for v in client.list_versions()]
    with pytest.raises(LearnerRejected) as dup:
        client.publish_version(published["v1"], "v1")
    assert dup.value.status_code == 409
    # The server refuses too when a client skips the check.
    buf = io.BytesIO()
    info = write_dir_archive(published["v2"], "v1", buf)
    r = httpx.put(
        f"{learner.url}/v1/policies/v1",
        content=buf.getvalue(),
        headers={**auth(), "Content-Type": "application/x-tar", "X-Content-SHA256": info.sha256},
        timeout=30,
    )
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    bad_manifest = make_checkpoint(tmp_path, "vbad")
    (bad_manifest / "manifest.json").write_text("{not json")
    with pytest.raises(LearnerRejected) as invalid:
        client.publish_version(bad_manifest, "vbad")
    assert invalid.value.status_code == 422 and "manifest.json" in invalid.value.detail
    with pytest.raises(LearnerRejected) as bad_name:
        client.publish_version(published["v1"], "bad/name")
    assert bad_name.value.status_code in (404, 422)
    assert [v.version for v in client.list_versions()] == before
    assert not any((learner.registry / ".staging").iterdir())


def test_download_verifies_and_is_atomic(published, client, tmp_path):
    staging = tmp_path / "staging"
    path = client.download_version("v2", staging)
    assert path == staging / "v2"
    assert local_listing(path) == local_listing(published["v2"])
    assert not filecmp.dircmp(path, published["v2"]).diff_files
    assert sorted(p.name for p in staging.iterdir()) == ["v2"]  # no temporary directory left
    assert verify_version_dir(path, client.get_version("v2")) is None
    # A verified copy is reused; a damaged local copy is replaced.
    (path / "normalization.json").write_text("{}")
    assert "normalization.json" in verify_version_dir(path, client.get_version("v2"))
    assert client.download_version("v2", staging) == path
    assert local_listing(path) == local_listing(published["v2"])


def test_tampered_registry_file_is_refused_by_the_client_and_by_deploy(learner, published, client, tmp_path):
    weights = learner.registry / "versions" / "v3" / "files" / "model.safetensors"
    original = weights.read_bytes()
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF  # same size, one bit pattern changed
    weights.write_bytes(bytes(tampered))
    try:
        staging = tmp_path / "staging"
        with pytest.raises(IntegrityError, match=re.escape("model.safetensors")):
            client.download_version("v3", staging)
        assert list(staging.iterdir()) == []  # nothing half-downloaded, nothing unverified
        with pytest.raises(LearnerRejected) as refused:
            client.deploy("v3", reason="must not reach a robot")
        assert refused.value.status_code == 409 and "sha256" in refused.value.detail
        assert client.deployment().version != "v3"
    finally:
        weights.write_bytes(original)


def test_unsafe_paths_in_a_listing_are_refused(tmp_path):
    for bad in ("../escape", "/etc/passwd", "a/../../b", ""):
        record = PolicyVersion(
            version="vx",
            published_at=0.0,
            total_bytes=1,
            manifest=None,
            files=[FileEntry(path=bad, size=1, sha256="0" * 64)],
        )
        with pytest.raises(IntegrityError, match="unsafe"):
            verify_version_dir(tmp_path, record)


def test_deploy_rollback_and_history(published, client):
    with pytest.raises(LearnerRejected) as unknown:
        client.deploy("v9")
    assert unknown.value.status_code == 404
    start = client.deployment_history()
    client.deploy("v1", reason="first")
    client.deploy("v2")
    deployed = client.deploy("v3")
    assert deployed.version == "v3" and deployed.rollback_to == "v2"
    assert deployed.policy.version == "v3" and deployed.policy.files
    assert client.rollback(reason="v3 drops the cube").version == "v2"
    assert client.rollback().version == "v1"
    history = client.deployment_history()
    assert [(e.action, e.version) for e in history.events[len(start.events) :]] == [
        ("deploy", "v1"),
        ("deploy", "v2"),
        ("deploy", "v3"),
        ("rollback", "v2"),
        ("rollback", "v1"),
    ]
    assert history.events[-2].reason == "v3 drops the cube" and history.events[-2].previous == "v3"
    assert client.deployment().generation == len(history.events)
    while len(client.deployment_history().stack) > 1:
        client.rollback()
    with pytest.raises(LearnerRejected) as nothing:
        client.rollback()
    assert nothing.value.status_code == 409 and "nothing to roll back" in nothing.value.detail


def test_long_poll_times_out_unchanged_and_wakes_on_deploy(published, client):
    current = client.deploy("v1").version
    unchanged = client.wait_for_deployed(after=current, timeout_s=1.0)
    assert unchanged.changed is False and unchanged.version == "v1"
    # A longer wait than the service allows is cut to its --max-long-poll-s (2 s here), not refused.
    r = httpx.get(
        f"{client.base_url}/v1/deployment",
        params={"after": "v1", "timeout_s": 600},
        headers=auth(),
        timeout=20,
    )
    assert r.status_code == 200 and r.json()["changed"] is False
    # Something other than what the robot runs is deployed: answered at once.
    assert client.wait_for_deployed(after="v0", timeout_s=30).version == "v1"
    answers = []
    # 25 s is several of the service's 2-s long-polls: the client chains them until its own deadline.
    waiter = threading.Thread(
        target=lambda: answers.append(client.wait_for_deployed(after="v1", timeout_s=25))
    )
    waiter.start()
    time.sleep(3.0)  # let the robot's long-polls run (one times out and is renewed)
    # Deployed while the robot's long-poll waits: it returns the new version instead of timing out.
    with LearnerClient(client.base_url, TOKEN) as other:
        other.deploy("v2", reason="new weights")
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert answers[0].changed is True and answers[0].version == "v2"
    assert answers[0].policy.version == "v2"


def test_registry_survives_a_restart(learner, published, client):
    before = (client.list_versions(), client.deployment_history())
    learner.stop()
    learner.start()
    with LearnerClient(learner.url, TOKEN) as fresh:
        assert (fresh.list_versions(), fresh.deployment_history()) == before
