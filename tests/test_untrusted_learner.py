"""Everything from the network is untrusted: a hostile learner cannot make the robot write or
delete outside its policy cache, and the service checks the token before it reads a body,
documents its 400 answer and refuses booleans where it takes numbers.

Real parts: a fake learner is a real HTTP server on 127.0.0.1 (the standard library's), the
robot side is the real LearnerClient and a real sync node over DDS; the service is a real
`wmpo serve` process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from ros_harness import Graph, wait_until
from service_harness import TOKEN, auth, start_learner
from wmpo_core.ids import ID_PATTERN, UnsafeNameError, check_id, child_path
from wmpo_ros.learner_client import LearnerClient, LearnerUnavailable
from wmpo_ros.policy_node import PolicyNode
from wmpo_ros.sync_node import SyncNode

TRAVERSALS = [
    "../victim_dir",
    "..",
    "a/../../victim_dir",
    "/tmp/victim_dir",
    "victim_dir\n",
    ".hidden",
    "-rf",
]


class FakeLearner(ThreadingHTTPServer):
    """Answers GET /v1/deployment with each of `versions` in turn; records every request path."""

    def __init__(self, versions: list[str], files: dict[str, dict] | None = None):
        self.versions = versions
        self.files = files or {}
        self.served: list[str] = []
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeLearner

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        path = self.path.split("?")[0]
        if path == "/v1/deployment":
            version = self.server.versions[len(self.server.served) % len(self.server.versions)]
            self.server.served.append(version)
            body = {
                "version": version,
                "generation": len(self.server.served),
                "deployed_at": time.time(),
                "rollback_to": None,
                "policy": None,
                "changed": True,
            }
            self._send(200, body)
        elif path.startswith("/v1/policies/") and path.removeprefix("/v1/policies/") in self.server.files:
            self._send(200, self.server.files[path.removeprefix("/v1/policies/")])
        else:
            self._send(404, {"detail": "not found"})

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(server: FakeLearner) -> Iterator[FakeLearner]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def victim(tmp_path) -> Path:
    """Robot files next to the policy cache, where '../victim_dir' from the cache points."""
    victim = tmp_path / "victim_dir"
    victim.mkdir()
    (victim / "precious.txt").write_text("robot data")
    return victim


def test_the_one_pattern_refuses_every_traversal_and_child_path_stays_inside(tmp_path):
    for name in TRAVERSALS:
        with pytest.raises(UnsafeNameError, match="must match"):
            check_id(name, "policy version")
    assert check_id("grpo-r2.v1+cpu", "policy version") == "grpo-r2.v1+cpu"
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "planted").symlink_to(outside)
    with pytest.raises(UnsafeNameError, match="outside"):
        child_path(tmp_path / "root", "planted", "policy version")
    assert child_path(tmp_path / "root", "v1", "policy version") == tmp_path / "root" / "v1"


def test_the_client_refuses_traversal_versions_before_asking_writing_or_deleting(tmp_path, victim):
    cache = tmp_path / "robot.zarr.policies"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    listing = {"version": "v1", "published_at": time.time(), "files": [], "total_bytes": 0, "manifest": None}
    with (
        serve(FakeLearner(TRAVERSALS, files={"v1": listing})) as fake,
        LearnerClient(fake.url, TOKEN) as client,
    ):
        # The deployment answer itself is refused, naming the field: nothing acts on it.
        for _ in TRAVERSALS:
            with pytest.raises(
                LearnerUnavailable, match=r"schema errors; first: version: String should match pattern"
            ):
                client.deployment()
        for name in TRAVERSALS:
            with pytest.raises(UnsafeNameError):
                client.download_version(name, cache)
        assert not any(p.startswith("/v1/policies") for p in fake.paths), fake.paths
        # A symlink planted in the cache under a valid name is not followed to delete its target.
        cache.mkdir(exist_ok=True)
        (cache / "v1").symlink_to(outside)
        with pytest.raises(UnsafeNameError, match="outside"):
            client.download_version("v1", cache)
    assert (victim / "precious.txt").read_text() == "robot data"
    assert (outside / "keep.txt").read_text() == "keep"


def test_a_sync_node_following_a_hostile_learner_leaves_the_robots_files_intact(tmp_path, victim):
    (tmp_path / "token").write_text(TOKEN)
    graph = Graph()
    try:
        with serve(FakeLearner(TRAVERSALS)) as fake:
            policy = graph.make(PolicyNode, robot="so101_sim", policy="hold:gripper=1.0", autostart=False)
            sync = graph.make(
                SyncNode,
                robot="so101_sim",
                learner_url=fake.url,
                token_file=str(tmp_path / "token"),
                store=str(tmp_path / "robot.zarr"),
                upload=False,
                long_poll_s=0.5,
                retry_max_s=0.2,
            )
            wait_until(
                lambda: len(fake.served) >= 3 * len(TRAVERSALS),
                timeout=60,
                what="every traversal deployed three times",
            )
            assert sync.status.state == "retrying" and "should match pattern" in sync.status.message, (
                sync.status
            )
            assert sync.status.last_rejection is None  # never got as far as a version to reject (and delete)
            assert not any(p.startswith("/v1/policies") for p in fake.paths), fake.paths  # nothing downloaded
            assert policy.holder.active.version == "hold:gripper=1" and policy.holder.staged is None
    finally:
        graph.close()
    assert (victim / "precious.txt").read_text() == "robot data"


# ------------------------------------------------------------------ the service


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    service = start_learner(tmp_path_factory.mktemp("learner"))
    yield service
    service.stop()


def test_the_token_is_checked_before_the_body_is_read(learner):
    for method, path in [
        ("POST", "/v1/runs"),
        ("PUT", "/v1/deployment"),
        ("PATCH", "/v1/runs/r1"),
        ("PUT", "/v1/episodes/ep1/label"),
    ]:
        for body in (b"{not json", b"\xff\xfe\xfa", b'{"kind": '):
            r = httpx.request(
                method,
                learner.url + path,
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (
                method,
                path,
                body,
                r.status_code,
                r.text,
            )
    # With the token, the same undecodable body is FastAPI's 400, which the schema now declares.
    r = httpx.post(
        f"{learner.url}/v1/runs",
        content=b"\xff\xfe\xfa",
        headers={**auth(), "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    schema = httpx.get(f"{learner.url}/openapi.json", timeout=10).json()
    secured = [
        (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if path != "/v1/health"
    ]
    assert len(secured) >= 15
    assert all("400" in op["responses"] for _, _, op in secured), [
        f"{m} {p}" for p, m, op in secured if "400" not in op["responses"]
    ]
    pattern = {
        p["schema"].get("pattern")
        for _, _, op in secured
        for p in op.get("parameters", [])
        if p["in"] == "path" and p["name"] != "path"
    }
    assert pattern == {ID_PATTERN}


def test_booleans_are_not_numbers_and_strings_are_not_booleans(learner):
    assert (
        httpx.post(
            f"{learner.url}/v1/runs",
            json={"run_id": "strict", "kind": "sft", "params": {"flag": False}},
            headers=auth(),
            timeout=10,
        ).status_code
        == 201
    )
    refused = [
        ("POST", "/v1/runs", {"kind": "sft", "progress": False}, "progress"),
        ("POST", "/v1/runs", {"kind": "sft", "metrics": {"loss": True}}, "metrics"),
        ("PATCH", "/v1/runs/strict", {"step": True}, "step"),
        ("PATCH", "/v1/runs/strict", {"progress": True}, "progress"),
        ("PATCH", "/v1/runs/strict", {"step": 2.0}, "step"),
        ("PUT", "/v1/episodes/ep1/label", {"success": "true", "labeled_by": "human"}, "success"),
        ("PUT", "/v1/episodes/ep1/label", {"success": 1, "labeled_by": "human"}, "success"),
        ("POST", "/v1/runs", {"run_id": "../escape", "kind": "sft"}, "run_id"),
    ]
    for method, path, body, field in refused:
        r = httpx.request(method, learner.url + path, json=body, headers=auth(), timeout=10)
        assert r.status_code == 422 and field in json.dumps(r.json()["detail"]), (
            path,
            body,
            r.status_code,
            r.text,
        )
    r = httpx.patch(
        f"{learner.url}/v1/runs/strict",
        json={"progress": 1, "step": 3, "metrics": {"loss": 0.5}},
        headers=auth(),
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["progress"] == 1.0
    assert (
        not (learner.root / "escape.json").exists() and not (learner.root / "runs" / "escape.json").exists()
    )
